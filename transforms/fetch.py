"""FetchSubvolumes: Instance -> Subvolume (source crop and upsampled target labels, (z, y, x))."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.geometry import crop_box, padding, scale_box, upsample_nearest_zyx
from transforms.records import MISSING_CHUNKS, DeadLetter, Instance, Subvolume
from transforms.volumes import (
    MissingChunks, VolumeSpec, chunk_names, chunk_voxels, open_volume, read_padded_zyx,
)


@dataclass(frozen=True)
class FetchConfig:
    source: VolumeSpec
    target: VolumeSpec
    crop_size_xyz: Tuple[int, int, int]
    scale_xyz: Tuple[int, int, int]
    pad_value: int
    strategy: str = "grouped"                        # or "per-instance"
    block_size_xyz: Tuple[int, int, int] = (0, 0, 0)  # target voxels; grouped only
    memory_bytes: int = 1 << 30                      # decoded-chunk cache per worker; grouped only
    missing_chunks: Tuple[str, str] = ("error", "error")  # (source, target): "error" or "zero"


def default_block_size(target: VolumeSpec, source: VolumeSpec, scale_xyz, crop_size_xyz,
                       memory_bytes: int) -> Tuple[int, int, int]:
    """Work block (target voxels) for the grouped strategy: whole chunks of both volumes per
    axis, about twice the crop, shrunk (in x and y) until one block's source and target voxels
    fill at most a quarter of the memory budget."""
    block = []
    for t, s, f, c in zip(target.chunk_size_xyz, source.chunk_size_xyz, scale_xyz, crop_size_xyz):
        unit = math.lcm(t, s // f) if s % f == 0 else t
        block.append(unit * max(1, math.ceil(2 * c / unit)))
    voxel_bytes = math.prod(scale_xyz) + np.dtype(target.dtype).itemsize
    while math.prod(block) * voxel_bytes > memory_bytes // 4 and max(block[:2]) > 1:
        axis = 0 if block[0] >= block[1] else 1
        block[axis] = max(1, block[axis] // 2)
    return tuple(block)


def block_key(instance: Instance, target_offset_xyz, block_size_xyz) -> Tuple[int, int, int]:
    """Index of the work block holding the instance's centre (blocks start at the offset)."""
    return tuple((c - o) // b for c, o, b in
                 zip(instance.center_xyz, target_offset_xyz, block_size_xyz))


def fetch_subvolume(instance: Instance, source_cv, target_cv, config: FetchConfig) -> Subvolume:
    """Read and pad both crops of one instance; labels upsampled to the source grid.

    Raises MissingChunks when a crop touches a chunk missing from storage and that volume's
    ``missing_chunks`` mode is "error".
    """
    target_box = crop_box(instance.center_xyz, config.crop_size_xyz)
    source_box = scale_box(target_box, config.scale_xyz)
    source_missing, target_missing = config.missing_chunks
    source_zyx, source_filled = read_padded_zyx(source_cv, source_box, config.source.bounds,
                                                config.pad_value, "uint8", source_missing)
    labels_zyx, target_filled = read_padded_zyx(target_cv, target_box, config.target.bounds, 0,
                                                config.target.dtype, target_missing)
    return Subvolume(
        instance=instance, target_box=target_box, source_box=source_box,
        target_padding_xyz=padding(target_box, config.target.bounds),
        source_padding_xyz=padding(source_box, config.source.bounds),
        source_zyx=source_zyx,
        labels_zyx=upsample_nearest_zyx(labels_zyx, config.scale_xyz),
        filled_chunks={"source": len(source_filled), "target": len(target_filled)},
    )


CHUNKS = "chunks"  # tagged output: (volume, chunk name) touched, for the distinct count
READS = "reads"    # tagged output: {volume: [chunks decoded, decoded bytes]} per instance
DEAD = "dead_letter"  # tagged output: DeadLetter (missing_chunks)


def uncached_chunks(cv, names: List[str]) -> List[str]:
    """The chunks a cutout will read and decode: those not in the reader's decoded-chunk LRU."""
    lru = cv.image.lru
    return [n for n in names if lru.size == 0 or n not in lru]


class FetchSubvolumeFn(beam.DoFn):
    """Instance -> Subvolume. One CloudVolume per volume per worker, opened in setup().

    Also counts reads: Beam counters ``{source,target}_chunks_decoded`` and
    ``{source,target}_decoded_bytes``, and the CHUNKS and READS tagged outputs.
    """

    def __init__(self, config: FetchConfig):
        self._config = config
        self._source = self._target = None
        self._fetched = Metrics.counter("synanno", "instances_fetched")
        self._missing = Metrics.counter("synanno", "instances_missing_chunks")
        self._filled = Metrics.counter("synanno", "chunks_filled_with_zeros")

    def setup(self):
        grouped = self._config.strategy == "grouped"
        budget = self._config.memory_bytes if grouped else 0
        source_share = math.prod(self._config.scale_xyz)
        target_share = np.dtype(self._config.target.dtype).itemsize
        source_lru = budget * source_share // (source_share + target_share)
        self._source = open_volume(self._config.source.url, self._config.source.mip, source_lru)
        self._target = open_volume(self._config.target.url, self._config.target.mip,
                                   budget - source_lru)

    def process(self, instance: Instance):
        target_box = crop_box(instance.center_xyz, self._config.crop_size_xyz)
        touched = {
            "source": chunk_names(self._config.source, scale_box(target_box,
                                                                 self._config.scale_xyz)),
            "target": chunk_names(self._config.target, target_box),
        }
        reads = {}
        for volume, cv, spec in (("source", self._source, self._config.source),
                                 ("target", self._target, self._config.target)):
            decoded = uncached_chunks(cv, touched[volume])
            nbytes = sum(chunk_voxels(n) for n in decoded) * np.dtype(spec.dtype).itemsize
            Metrics.counter("synanno", f"{volume}_chunks_decoded").inc(len(decoded))
            Metrics.counter("synanno", f"{volume}_decoded_bytes").inc(nbytes)
            reads[volume] = [len(decoded), nbytes]
        try:
            subvolume = fetch_subvolume(instance, self._source, self._target, self._config)
        except MissingChunks as missing:
            volume = "source" if missing.url == self._source.cloudpath else "target"
            self._missing.inc()
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                instance, MISSING_CHUNKS, f"{volume}: {missing}", "FetchSubvolumes"))
            return
        self._fetched.inc()
        filled = sum(subvolume.filled_chunks.values())
        if filled:
            self._filled.inc(filled)
        for volume, names in touched.items():
            for name in names:
                yield beam.pvalue.TaggedOutput(CHUNKS, (volume, name))
        yield beam.pvalue.TaggedOutput(READS, reads)
        yield subvolume


class FetchSubvolumes(beam.PTransform):
    """Instances -> outputs ``ok`` (Subvolumes) and ``failed`` (Beam's (element, error) pairs)."""

    def __init__(self, config: FetchConfig):
        super().__init__()
        self._config = config

    def expand(self, instances):
        config = self._config
        if config.strategy == "grouped":
            # Members of a block are fetched one after another by one worker, so chunks they share
            # are read and decoded once (the decoded-chunk cache); only Instances are shuffled.
            instances = (instances
                         | "KeyByBlock" >> beam.Map(lambda i: (block_key(
                             i, config.target.voxel_offset_xyz, config.block_size_xyz), i))
                         | "GroupByBlock" >> beam.GroupByKey()
                         | "BlockMembers" >> beam.FlatMap(
                             lambda kv: sorted(kv[1], key=lambda i: i.instance_id)
                         ).with_output_types(Instance))
        else:
            instances = instances | "Distribute" >> beam.Reshuffle()  # spread the fetch work
        out = instances | "Fetch" >> beam.ParDo(FetchSubvolumeFn(config)) \
            .with_exception_handling(use_subprocess=False)
        return {"ok": out.good, "failed": out.bad, DEAD: out[DEAD], "io": out[READS] | "IoFigures" >> IoFigures(
            out[CHUNKS])}


class IoFigures(beam.PTransform):
    """Per-instance reads + touched chunk names -> one dict per volume: chunks decoded, decoded
    bytes, distinct chunks touched and decodes per distinct chunk."""

    def __init__(self, chunks):
        super().__init__()
        self._chunks = chunks

    def expand(self, reads):
        decoded = (reads
                   | "PerVolume" >> beam.FlatMap(lambda r: [(v, tuple(n)) for v, n in r.items()])
                   | "SumPerVolume" >> beam.CombinePerKey(
                       beam.combiners.TupleCombineFn(sum, sum))
                   | "DecodedDict" >> beam.combiners.ToDict())
        distinct = (self._chunks
                    | "DistinctChunks" >> beam.Distinct()
                    | "VolumeOf" >> beam.Map(lambda vn: vn[0])
                    | "CountDistinct" >> beam.combiners.Count.PerElement()
                    | "DistinctDict" >> beam.combiners.ToDict())
        return (reads.pipeline | "IoTrigger" >> beam.Create([None])
                | "Io" >> beam.Map(_io_figures, beam.pvalue.AsSingleton(decoded),
                                   beam.pvalue.AsSingleton(distinct)))


def _io_figures(_, decoded: dict, distinct: dict) -> dict:
    figures = {}
    for volume in ("source", "target"):
        n, nbytes = decoded.get(volume, (0, 0))
        d = distinct.get(volume, 0)
        figures[volume] = {"chunks_decoded": n, "decoded_bytes": nbytes, "distinct_chunks": d,
                           "decodes_per_distinct_chunk": round(n / d, 4) if d else None}
    return figures
