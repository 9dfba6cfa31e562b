"""FetchSubvolumes: Instance -> Subvolume (source crop and upsampled target labels, (z, y, x))."""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.geometry import Box, crop_box, padding, scale_box, upsample_nearest_zyx
from transforms.records import (
    FETCH_ERROR, MISSING_CHUNKS, DeadLetter, Instance, Subvolume, exception_text,
)
from transforms.volumes import (
    MissingChunks, VolumeSpec, chunk_names, chunk_voxels, open_volume, plan_reads,
    read_padded_zyx,
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
    source = read_padded_zyx(source_cv, source_box, config.source.bounds, config.pad_value,
                             "uint8", source_missing)
    labels = read_padded_zyx(target_cv, target_box, config.target.bounds, 0, config.target.dtype,
                             target_missing)
    return make_subvolume(instance, target_box, source_box, source, labels, config)


def make_subvolume(instance: Instance, target_box: Box, source_box: Box, source, labels,
                   config: FetchConfig) -> Subvolume:
    """A Subvolume from both padded crops, each given as (array (z, y, x), filled chunk names)."""
    (source_zyx, source_filled), (labels_zyx, target_filled) = source, labels
    return Subvolume(
        instance=instance, target_box=target_box, source_box=source_box,
        target_padding_xyz=padding(target_box, config.target.bounds),
        source_padding_xyz=padding(source_box, config.source.bounds),
        source_zyx=source_zyx,
        labels_zyx=upsample_nearest_zyx(labels_zyx, config.scale_xyz),
        filled_chunks={"source": len(source_filled), "target": len(target_filled)},
    )


class BlockReader:
    """Padded crops of one volume for the members of a work block, cut from few cutouts.

    The boxes are grouped into regions by ``plan_reads`` (no region reads a chunk that no member
    needs); each region is read once, when its first member asks, and dropped after its last. If a
    region's read fails, its members are read one by one, so an error (a missing or corrupt chunk)
    reaches exactly the members whose crops touch it.
    """

    def __init__(self, cv, spec: VolumeSpec, boxes: List[Box], fill_value, dtype: str,
                 missing_chunks: str, before_read=lambda box: None):
        self._cv, self._spec, self._boxes = cv, spec, boxes
        self._before_read = before_read  # called with each region just before it is read
        self._fill, self._dtype, self._missing = fill_value, dtype, missing_chunks
        self.regions, self._which = plan_reads(spec, boxes)
        self._left = collections.Counter(r for r in self._which if r is not None)
        self._read = {}  # region -> (array (z, y, x), filled names) or the read's exception

    def read(self, cv_box: Box) -> Tuple[np.ndarray, List[str]]:
        return read_padded_zyx(self._cv, cv_box, self._spec.bounds, self._fill, self._dtype,
                               self._missing)

    def crop(self, i: int) -> Tuple[np.ndarray, List[str]]:
        """Box ``i``'s crop (z, y, x) and the chunks in it read as zeros; raises like
        read_padded_zyx for that box alone."""
        box, r = self._boxes[i], self._which[i]
        if r is None:  # entirely outside the volume: nothing to read
            return self.read(box)
        try:
            if r not in self._read:
                self._before_read(self.regions[r])
                try:
                    self._read[r] = self.read(self.regions[r])
                except Exception as error:  # noqa: BLE001 - retried per member below
                    self._read[r] = error
            region = self._read[r]
            if isinstance(region, Exception):
                return self.read(box)
            return self._cut(box, self.regions[r], *region)
        finally:
            self._left[r] -= 1
            if not self._left[r]:
                self._read.pop(r, None)

    def _cut(self, box: Box, region: Box, region_zyx: np.ndarray, filled: List[str]):
        out = np.full(box.size_xyz[::-1], self._fill, dtype=self._dtype)
        inner = box.intersect(self._spec.bounds)
        src = [a - b for a, b in zip(inner.start_xyz, region.start_xyz)][::-1]
        dst = [a - b for a, b in zip(inner.start_xyz, box.start_xyz)][::-1]
        z, y, x = inner.size_xyz[::-1]
        out[dst[0]:dst[0] + z, dst[1]:dst[1] + y, dst[2]:dst[2] + x] = \
            region_zyx[src[0]:src[0] + z, src[1]:src[1] + y, src[2]:src[2] + x]
        if filled:
            touched = set(chunk_names(self._spec, box))
            filled = [n for n in filled if n in touched]
        return out, filled


CHUNKS = "chunks"  # tagged output: (volume, chunk name) touched, for the distinct count
READS = "reads"    # tagged output: {volume: [chunks decoded, decoded bytes]} per read
DEAD = "dead_letter"  # tagged output: DeadLetter (missing_chunks, fetch_error)


def uncached_chunks(cv, names: List[str]) -> List[str]:
    """The chunks a cutout will read and decode: those not in the reader's decoded-chunk LRU."""
    lru = cv.image.lru
    return [n for n in names if lru.size == 0 or n not in lru]


class _FetchFn(beam.DoFn):
    """Shared by both strategies: one CloudVolume per volume per worker, opened in setup(), and
    the read counters: Beam counters ``{source,target}_chunks_decoded`` and
    ``{source,target}_decoded_bytes``, and the CHUNKS and READS tagged outputs."""

    def __init__(self, config: FetchConfig):
        self._config = config
        self._source = self._target = None
        self._fetched = Metrics.counter("synanno", "instances_fetched")
        self._missing = Metrics.counter("synanno", "instances_missing_chunks")
        self._filled = Metrics.counter("synanno", "chunks_filled_with_zeros")
        self._errors = Metrics.counter("synanno", "instances_fetch_errors")

    def setup(self):
        grouped = self._config.strategy == "grouped"
        budget = self._config.memory_bytes if grouped else 0
        source_share = math.prod(self._config.scale_xyz)
        target_share = np.dtype(self._config.target.dtype).itemsize
        source_lru = budget * source_share // (source_share + target_share)
        self._source = open_volume(self._config.source.url, self._config.source.mip, source_lru)
        self._target = open_volume(self._config.target.url, self._config.target.mip,
                                   budget - source_lru)

    def _count_read(self, reads: dict, volume: str, box: Box) -> None:
        """Add to ``reads`` ({volume: [chunks, bytes]}) and the counters what reading ``box``
        of ``volume`` will decode (call just before reading it)."""
        cv, spec = (self._source, self._config.source) if volume == "source" else \
            (self._target, self._config.target)
        decoded = uncached_chunks(cv, chunk_names(spec, box))
        nbytes = sum(chunk_voxels(n) for n in decoded) * np.dtype(spec.dtype).itemsize
        Metrics.counter("synanno", f"{volume}_chunks_decoded").inc(len(decoded))
        Metrics.counter("synanno", f"{volume}_decoded_bytes").inc(nbytes)
        counted = reads.setdefault(volume, [0, 0])
        counted[0] += len(decoded)
        counted[1] += nbytes

    def _fetch_one(self, instance: Instance, make):
        """The output for one instance: ``make()``'s Subvolume, or a DeadLetter (tagged DEAD)
        when one of its crops cannot be read."""
        try:
            subvolume = make()
        except MissingChunks as missing:
            volume = "source" if missing.url == self._source.cloudpath else "target"
            self._missing.inc()
            return beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                instance, MISSING_CHUNKS, f"{volume}: {missing}", "FetchSubvolumes"))
        except Exception as error:  # noqa: BLE001 - a storage or decode error, after retries
            self._errors.inc()
            return beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                instance, FETCH_ERROR, exception_text(type(error), repr(error))[:2000],
                "FetchSubvolumes"))
        self._fetched.inc()
        filled = sum(subvolume.filled_chunks.values())
        if filled:
            self._filled.inc(filled)
        return subvolume

    @staticmethod
    def _touched(touched):
        """CHUNKS outputs for ``{volume: chunk names}``, in a fixed order."""
        for volume, names in sorted(touched.items()):
            for name in sorted(names):
                yield beam.pvalue.TaggedOutput(CHUNKS, (volume, name))


class FetchSubvolumeFn(_FetchFn):
    """Instance -> Subvolume: one cutout per volume per instance (``per-instance``)."""

    def process(self, instance: Instance):
        config = self._config
        target_box = crop_box(instance.center_xyz, config.crop_size_xyz)
        source_box = scale_box(target_box, config.scale_xyz)
        reads = {}
        self._count_read(reads, "source", source_box)
        self._count_read(reads, "target", target_box)
        yield beam.pvalue.TaggedOutput(READS, reads)
        yield self._fetch_one(
            instance, lambda: fetch_subvolume(instance, self._source, self._target, config))
        yield from self._touched({"source": chunk_names(config.source, source_box),
                                  "target": chunk_names(config.target, target_box)})


class FetchBlockFn(_FetchFn):
    """(block key, [Instance]) -> a Subvolume per member, in instance id order (``grouped``).

    Each volume is read in few cutouts covering the members' crops (see BlockReader), so a chunk
    that several members share is read and decoded once; chunks shared with other blocks are
    served by the decoded-chunk cache when this worker read them recently.
    """

    def process(self, element):
        _, members = element
        config = self._config
        members = sorted(members, key=lambda i: i.instance_id)
        target_boxes = [crop_box(i.center_xyz, config.crop_size_xyz) for i in members]
        source_boxes = [scale_box(b, config.scale_xyz) for b in target_boxes]
        source_missing, target_missing = config.missing_chunks
        reads = {"source": [0, 0], "target": [0, 0]}
        source = BlockReader(self._source, config.source, source_boxes, config.pad_value,
                             "uint8", source_missing,
                             lambda box: self._count_read(reads, "source", box))
        target = BlockReader(self._target, config.target, target_boxes, 0, config.target.dtype,
                             target_missing, lambda box: self._count_read(reads, "target", box))
        touched = {"source": set(), "target": set()}
        for k, instance in enumerate(members):
            touched["source"].update(chunk_names(config.source, source_boxes[k]))
            touched["target"].update(chunk_names(config.target, target_boxes[k]))
            yield self._fetch_one(instance, lambda: make_subvolume(
                instance, target_boxes[k], source_boxes[k], source.crop(k), target.crop(k),
                config))
        yield beam.pvalue.TaggedOutput(READS, reads)
        yield from self._touched(touched)


class FetchSubvolumes(beam.PTransform):
    """Instances -> outputs ``ok`` (Subvolumes), ``dead_letter`` (DeadLetters of instances whose
    crops could not be read), ``failed`` (Beam's (element, error) pairs) and ``io`` (figures)."""

    def __init__(self, config: FetchConfig):
        super().__init__()
        self._config = config

    def expand(self, instances):
        config = self._config
        if config.strategy == "grouped":
            # Only Instances cross the shuffle; the arrays are made after it, block by block.
            work = (instances
                    | "KeyByBlock" >> beam.Map(lambda i: (block_key(
                        i, config.target.voxel_offset_xyz, config.block_size_xyz), i))
                    | "GroupByBlock" >> beam.GroupByKey())
            fn = FetchBlockFn(config)
        else:
            work = instances | "Distribute" >> beam.Reshuffle()  # spread the fetch work
            fn = FetchSubvolumeFn(config)
        out = work | "Fetch" >> beam.ParDo(fn).with_exception_handling(use_subprocess=False)
        return {"ok": out.good, "failed": out.bad, DEAD: out[DEAD],
                "io": out[READS] | "IoFigures" >> IoFigures(out[CHUNKS])}


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
