"""FetchSubvolumes: Instance -> Fetched (source crop and target labels, (z, y, x))."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from synanno_datagen.transforms.blocks import BlockReader
from synanno_datagen.transforms.counts import SumByKey
from synanno_datagen.transforms.geometry import Box, crop_box, padding, scale_box
from synanno_datagen.transforms.readers import CLOUDVOLUME, GROUPED, TENSORSTORE, open_reader
from synanno_datagen.transforms.records import (
    DEAD, FETCH_ERROR, MISSING_CHUNKS, DeadLetter, Fetched, Instance, exception_text,
)
from synanno_datagen.transforms.shards import group_members
from synanno_datagen.transforms.volumes import (
    DEFAULT_MISSING_CHUNKS, MissingChunks, VolumeSpec, chunk_names,
)


@dataclass(frozen=True)
class FetchConfig:
    source: VolumeSpec
    target: VolumeSpec
    crop_size_xyz: Tuple[int, int, int]
    scale_xyz: Tuple[int, int, int]
    pad_value: int
    strategy: str                                    # readers.FETCH_STRATEGIES
    block_size_xyz: Tuple[int, int, int] = (0, 0, 0)  # target voxels: what shard groups hold
    memory_bytes: int = 1 << 30                      # decoded-chunk cache per worker; grouped only
    missing_chunks: Tuple[str, str] = DEFAULT_MISSING_CHUNKS  # (source, target): error or zero
    engine: str = TENSORSTORE                        # or "cloudvolume"
    run_token: str = ""  # readers of one run (and process) share a chunk cache (tensorstore)


def make_fetched(instance: Instance, target_box: Box, source_box: Box, source, labels,
                 config: FetchConfig) -> Fetched:
    """A Fetched from both padded crops, each given as (array (z, y, x), filled chunk names)."""
    (source_zyx, source_filled), (labels_zyx, target_filled) = source, labels
    return Fetched(
        instance=instance, target_box=target_box, source_box=source_box,
        target_padding_xyz=padding(target_box, config.target.bounds),
        source_padding_xyz=padding(source_box, config.source.bounds),
        source_zyx=source_zyx,
        labels_zyx=labels_zyx,
        filled_chunks={"source": len(source_filled), "target": len(target_filled)},
    )


CHUNKS = "chunks"  # tagged output: (volume, chunk name) touched, for the distinct count
READS = "reads"    # tagged output: {volume: {figure: n}} per element (transforms.readers)


class _FetchFn(beam.DoFn):
    """Shared by both strategies: one reader per volume per worker, opened in setup(), and the
    read counters: Beam counters ``{source,target}_<figure>`` and the CHUNKS and READS tagged
    outputs (figures as in transforms.readers: measured by tensorstore, or cloud-volume's
    decodes)."""

    def __init__(self, config: FetchConfig):
        self._config = config
        self._source = self._target = None
        self._fetched = Metrics.counter("synanno", "instances_fetched")
        self._missing = Metrics.counter("synanno", "instances_missing_chunks")
        self._filled = Metrics.counter("synanno", "chunks_filled_with_zeros")
        self._errors = Metrics.counter("synanno", "instances_fetch_errors")

    def setup(self):
        config = self._config
        budget = config.memory_bytes if config.strategy == GROUPED else 0
        source_budget = target_budget = budget  # tensorstore: one cache per process, shared
        if config.engine == CLOUDVOLUME:        # cloud-volume: one LRU per volume, split
            source_share = math.prod(config.scale_xyz)
            target_share = np.dtype(config.target.dtype).itemsize
            source_budget = budget * source_share // (source_share + target_share)
            target_budget = budget - source_budget
        self._source = open_reader(config.source.url, config.source.mip, config.engine,
                                   source_budget, config.run_token)
        self._target = open_reader(config.target.url, config.target.mip, config.engine,
                                   target_budget, config.run_token)

    def _fetch_members(self, members: List[Instance], done: set):
        """A Fetched (or a DeadLetter, tagged DEAD) per member, in the given order (each
        member's id then added to ``done``), then the READS and CHUNKS outputs. Each volume is
        read in few regions covering the members' crops (see transforms.blocks.BlockReader)."""
        config = self._config
        target_boxes = [crop_box(i.center_xyz, config.crop_size_xyz) for i in members]
        source_boxes = [scale_box(b, config.scale_xyz) for b in target_boxes]
        source_missing, target_missing = config.missing_chunks
        source = BlockReader(self._source, config.source, source_boxes, config.pad_value,
                             source_missing)
        target = BlockReader(self._target, config.target, target_boxes, 0, target_missing)
        touched = {"source": set(), "target": set()}
        for k, instance in enumerate(members):
            touched["source"].update(chunk_names(config.source, source_boxes[k]))
            touched["target"].update(chunk_names(config.target, target_boxes[k]))
            yield self._fetch_one(instance, lambda: make_fetched(
                instance, target_boxes[k], source_boxes[k], source.crop(k), target.crop(k),
                config))
            done.add(instance.instance_id)
        yield self._take_reads()
        for volume, names in sorted(touched.items()):
            for name in sorted(names):
                yield beam.pvalue.TaggedOutput(CHUNKS, (volume, name))

    def _fetch_one(self, instance: Instance, make):
        """The output for one instance: ``make()``'s Fetched, or a DeadLetter (tagged DEAD)
        when one of its crops cannot be read."""
        try:
            subvolume = make()
        except MissingChunks as missing:
            volume = "source" if missing.url == self._config.source.url else "target"
            self._missing.inc()
            return beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                instance, MISSING_CHUNKS, f"{volume}: {missing}", "FetchSubvolumes"))
        except Exception as error:  # noqa: BLE001 - a storage or decode error, after retries
            return self._fetch_error(instance, error)
        self._fetched.inc()
        filled = sum(subvolume.filled_chunks.values())
        if filled:
            self._filled.inc(filled)
        return subvolume

    def _fetch_error(self, instance: Instance, error: Exception):
        """The ``fetch_error`` DeadLetter of ``instance`` (tagged DEAD), counted."""
        self._errors.inc()
        return beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
            instance, FETCH_ERROR, exception_text(type(error), repr(error)),
            "FetchSubvolumes"))

    def _take_reads(self):
        """READS output with what both readers counted since the last call (and the counters)."""
        reads = {}
        for volume, reader in (("source", self._source), ("target", self._target)):
            reads[volume] = dict(reader.io)
            reader.io.clear()
            for figure, n in reads[volume].items():
                Metrics.counter("synanno", f"{volume}_{figure}").inc(n)
        return beam.pvalue.TaggedOutput(READS, reads)


class FetchShardFn(_FetchFn):
    """(shard group, [Instance]) -> a Fetched (or a DeadLetter) per member, block by block in block
    order, each block's members by id: the order their records are written in.

    ``grouped``: each block's members are read through one BlockReader (few region reads; a chunk
    members share is read and decoded once; chunks shared with other blocks are served by the
    decoded-chunk cache). ``per-instance``: each member is read on its own (the baseline).

    Outputs flow on as each is made, so a worker holds about one instance's arrays, not its
    group's. An error outside one instance's fetch dead-letters (``fetch_error``) the members
    not given out yet; those given out have gone on.
    """

    def process(self, element):
        _, members = element
        config = self._config
        done = set()
        try:
            for _, block in group_members(members, config.target.voxel_offset_xyz,
                                          config.block_size_xyz):
                if config.strategy == GROUPED:
                    yield from self._fetch_members(block, done)
                else:
                    for instance in block:
                        yield from self._fetch_members([instance], done)
        except Exception as error:  # noqa: BLE001 - the rest of the group, not the run
            for instance in sorted(members, key=lambda i: i.instance_id):
                if instance.instance_id not in done:
                    yield self._fetch_error(instance, error)


class FetchSubvolumes(beam.PTransform):
    """Instances (with their shard group) -> outputs ``ok`` (Fetched), ``dead_letter``
    (DeadLetters of instances whose crops could not be read, or whose fetch failed unexpectedly)
    and ``io`` (read figures). Only Instances cross the shuffle that gathers a group; the arrays
    are made after it."""

    def __init__(self, config: FetchConfig):
        super().__init__()
        self._config = config

    def expand(self, instances):
        work = (instances
                | "KeyByGroup" >> beam.Map(lambda i: (i.group, i))
                | "GroupByShard" >> beam.GroupByKey())        # (group, [Instance])
        out = work | "Fetch" >> beam.ParDo(FetchShardFn(self._config)).with_outputs(
            DEAD, READS, CHUNKS, main="ok")
        return {"ok": out.ok, DEAD: out[DEAD],
                "io": out[READS] | "IoFigures" >> IoFigures(out[CHUNKS])}


DISTINCT = "distinct_chunks"  # the figure under which IoFigures sums the distinct chunks


class IoFigures(beam.PTransform):
    """Per-element read figures + touched chunk names -> one dict per volume: the summed figures,
    the distinct chunks touched, and the loads (tensorstore) or decodes (cloud-volume) per
    distinct chunk. One combine sums both (few transforms: each costs start-up)."""

    def __init__(self, chunks):
        super().__init__()
        self._chunks = chunks

    def expand(self, reads):
        figures = reads | "PerFigure" >> beam.FlatMap(
            lambda r: [((v, k), n) for v, figures in r.items() for k, n in figures.items()])
        distinct = (self._chunks
                    | "DistinctChunks" >> beam.Distinct()
                    | "PerVolume" >> beam.Map(lambda vn: ((vn[0], DISTINCT), 1)))
        return ((figures, distinct) | "AllFigures" >> beam.Flatten()
                | "SumFigures" >> beam.CombineGlobally(SumByKey())
                | "Io" >> beam.Map(_io_figures))
RATIOS = {"chunks_loaded": "loads_per_distinct_chunk",
          "chunks_decoded": "decodes_per_distinct_chunk"}


def _io_figures(summed: dict) -> dict:
    """{(volume, figure): n} (the distinct chunks under DISTINCT) -> the figures per volume."""
    figures = {}
    for volume in ("source", "target"):
        mine = {k: n for (v, k), n in sorted(summed.items()) if v == volume and k != DISTINCT}
        d = summed.get((volume, DISTINCT), 0)
        mine["distinct_chunks"] = d
        for figure, ratio in RATIOS.items():
            if figure in mine:
                mine[ratio] = round(mine[figure] / d, 4) if d else None
        figures[volume] = mine
    return figures
