"""build(p, config): assemble the pipeline, stage by stage. Nothing here runs it.

Every stage returns its outputs as a dict: ``ok`` (what the next stage takes) and, where rows or
instances can be rejected, ``dead_letter``; the comment after each step names the element type.
"""
from __future__ import annotations

import uuid
from typing import Tuple

import apache_beam as beam
from apache_beam.pvalue import AsList, AsSingleton

from synanno_datagen.layout import NPY
from synanno_datagen.pipeline.config import Config
from synanno_datagen.pipeline.lease import Heartbeat
from synanno_datagen.pipeline.manifest import (
    ClearEarlierRun, DeleteFolders, WriteManifestFn, fragments_folder,
)
from synanno_datagen.pipeline.finish import FinishRunFn
from synanno_datagen.transforms.clean import CleanTargets
from synanno_datagen.transforms.counts import count_run, npy_totals
from synanno_datagen.transforms.dead_letter_file import WriteDeadLetterFile
from synanno_datagen.transforms.fetch import FetchConfig, FetchSubvolumes
from synanno_datagen.transforms.keep_new import KeepNewInstances
from synanno_datagen.transforms.progress import CountDeadLettersFn, CountFn
from synanno_datagen.transforms.records import DEAD
from synanno_datagen.transforms.remembered import (
    REMEMBERED, RememberFailures, SkipRememberedFailures, read_memory,
)
from synanno_datagen.transforms.select import SelectInstances
from synanno_datagen.transforms.shards import PlanShards
from synanno_datagen.transforms.table import ReadTable
from synanno_datagen.transforms.variants import MakeVariants
from synanno_datagen.transforms.write import DeleteLeftoverNpyFn, FinalizeShards, WriteShards


def fetch_config(config: Config) -> FetchConfig:
    return FetchConfig(
        source=config.source, target=config.target, crop_size_xyz=config.crop_size_xyz,
        scale_xyz=config.scale_xyz, pad_value=config.pad_value, strategy=config.fetch_strategy,
        block_size_xyz=config.fetch_block_size(), memory_bytes=int(config.fetch_memory_mb) << 20,
        missing_chunks=config.missing_chunks, engine=config.volume_reader,
        run_token=uuid.uuid4().hex)


def read_columns(config: Config) -> Tuple[str, ...]:
    """The table columns a run reads: the id column (if any) and the point columns."""
    return ((config.id_column,) if config.id_column else ()) + config.points.columns()


def _extends(config: Config) -> bool:
    """A later run of an incremental root (one with earlier runs to extend)."""
    return bool(config.incremental and config.incremental.previous)


def _new_instances(p: beam.Pipeline, config: Config, table: dict):
    """ReadTable's outputs -> (instances: Instance, rejected: DeadLetter, vanished, remembered)
    that the run goes on with. A later run of a root keeps the ids not in the dataset
    (KeepNewInstances; ``vanished``: the count of earlier ids gone from the table, int) and skips
    the rows remembered as failed (``remembered``: the memory entry of each row skipped, dict);
    every run of a root then picks at most what --num-instances still allows (SelectInstances).
    Otherwise vanished and remembered are None and the table's outputs go on as they are."""
    extends = _extends(config)
    instances, rejected = table["ok"], table[DEAD]  # Instance (repeats if it extends); DeadLetter
    vanished = remembered = skip_entries = None
    skip_path = config.incremental.memory_to_skip() if extends else None
    if skip_path:   # the earlier failures not tried again: read once, used twice
        skip_entries = read_memory(p, skip_path, "Remembered")       # memory entries: dict
    if extends:
        table_out = {"instances": instances, "rejected": rejected}
        if skip_entries is not None:   # an id's row whose fetch failed is kept among repeats
            table_out["remembered"] = skip_entries
        kept = table_out | "KeepNewInstances" >> KeepNewInstances(
            config.incremental.previous_index_paths, read_columns(config))
        instances, vanished = kept["ok"], kept["vanished"]   # Instance; earlier ids gone: int
        rejected = (rejected, kept[DEAD]) | "AllRejections" >> beam.Flatten()  # + repeats, moved
    if skip_entries is not None:
        skipped = {"instances": instances, "rejected": rejected, "memory": skip_entries} | \
            "SkipRememberedFailures" >> SkipRememberedFailures(skip_path, read_columns(config))
        instances, rejected = skipped["ok"], skipped[DEAD]
        remembered = skipped[REMEMBERED]             # the memory entry of each row skipped
    if config.num_instances is not None and config.incremental:  # the dataset holds <= N
        instances = instances | "SelectInstances" >> SelectInstances(
            config.seed, config.incremental.allowed(config.num_instances))
    return instances, rejected, vanished, remembered


def build(p: beam.Pipeline, config: Config):
    """Add every stage to ``p``; returns the manifest PCollection (one dict)."""
    # Picking N while reading keeps memory independent of the table size. A root's runs pick
    # after reading every row (a later run picks among the instances not in earlier runs,
    # after KeepNewInstances), its first run too, so that a repeated id counts as a
    # duplicate_id on every night alike.
    select = (config.seed, config.num_instances) \
        if config.num_instances is not None and not config.incremental else None
    # A later run of a root chooses among an id's rows in KeepNewInstances (the row the dataset
    # holds, else the one whose fetch is remembered as failed, else the first), in the join
    # with the earlier ids: ReadTable keeps every row.
    table = p | "ReadTable" >> ReadTable(config.table_shards, config.id_column,
                                         config.target.bounds, select, config.points,
                                         config.source_bounds_in_target(),
                                         dedup=not _extends(config))
    instances, rejected, vanished, remembered = _new_instances(p, config, table)
    fetch = fetch_config(config)
    planned = instances | "PlanShards" >> PlanShards(
        config.seed, config.splits, config.split_by, config.target.voxel_offset_xyz,
        fetch.block_size_xyz, config.bytes_per_instance, int(config.shard_size_mb * (1 << 20)),
        config.split_blocks())
    selected = planned["ok"]                         # Instance with split and shard group
    selected | "TallySelected" >> beam.ParDo(CountFn("instances_selected"))
    fetched = selected | "FetchSubvolumes" >> FetchSubvolumes(fetch)
    # Instance -> Fetched (and the read figures, "io")
    cleaned = fetched["ok"] | "CleanTargets" >> CleanTargets(config.source.resolution_nm_xyz,
                                                             config.scale_xyz)
    # Fetched -> Cleaned
    varied = cleaned["ok"] | "MakeVariants" >> MakeVariants(config.seed, config.variants,
                                                            config.seed_model)
    # Cleaned -> Varied
    keepalive = Heartbeat(config.lease, config.lease_hours) if config.lease else None
    cleared = (p | "ClearEarlierRun"   # an earlier run's files, if any
               >> ClearEarlierRun(config.output_dir, keepalive))
    written = varied["ok"] | "WriteShards" >> WriteShards(
        config.output_dir, config.formats, config.record_layout, config.compression, keepalive,
        after=AsSingleton(cleared))
    # WrittenShard per group and split: records are on disk, written once; only names, sizes
    # and index lines cross the shuffle that numbers the shards.
    files = written["ok"] | "FinalizeShards" >> FinalizeShards(config.output_dir,
                                                               config.compression, keepalive)
    # file info dicts of the TFRecord and index shards

    selected_dead = [stage[DEAD] for stage in (fetched, cleaned, varied, written)]
    dead = ([rejected] + selected_dead
            | "AllDeadLetters" >> beam.Flatten()
            | "TallyDeadLetters" >> beam.ParDo(CountDeadLettersFn()))   # DeadLetter
    dead_file = dead | "WriteDeadLetter" >> WriteDeadLetterFile(   # file info: sorted runs,
        config.output_dir, after=AsSingleton(cleared), keepalive=keepalive)  # merged in one step
    memory = None
    if config.incremental:  # the failures later runs skip: {"remembered": ..., file info}
        memory = dead | "RememberFailures" >> RememberFailures(
            config.output_dir, config.incremental.run, remembered, read_columns(config),
            keepalive, earlier=config.incremental.retried_memory(), after=AsSingleton(cleared))
    counts = count_run(table["rows"], selected, written["ok"], dead, vanished, memory)  # dict
    npy_written = npy_totals(written["ok"])   # one tuple, made after the last write
    after = []   # steps the manifest waits for besides those whose results it takes
    if NPY in config.formats:   # npy files a failed attempt wrote for an instance its retry
        after.append(AsSingleton(   # dead-lettered (after every write: waits for the totals,
            selected_dead           # one element, not a list of every shard, on every worker)
            | "SelectedDeadLetters" >> beam.Flatten()
            | "DeleteLeftoverNpy" >> beam.ParDo(
                DeleteLeftoverNpyFn(config.output_dir, config.variants, keepalive),
                AsSingleton(npy_written))
            | "CountLeftoverNpy" >> beam.combiners.Count.Globally()))
    if config.output_dir.startswith("gs://"):   # _tmp's objects, once every step that reads
        after.append(AsSingleton(                  # them is done, spread over the workers (the
            p                                      # manifest step deletes what is left)
            | "FragmentsTrigger" >> beam.Create([None])
            | "Fragments" >> beam.FlatMap(
                fragments_folder, config.output_dir, keepalive,
                AsSingleton(files | "CountFiles" >> beam.combiners.Count.Globally()),
                AsSingleton(dead_file), AsSingleton(counts))
            | "DeleteFragments" >> DeleteFolders()))
    manifest = (p
                | "ManifestTrigger" >> beam.Create([None])
                | "WriteManifest" >> beam.ParDo(
                    WriteManifestFn(config), AsList(files), AsSingleton(dead_file),
                    AsSingleton(counts), AsSingleton(npy_written),
                    AsSingleton(fetched["io"]), *after))
    if config.lease is not None:  # last: the lease goes, the output is free for the next run
        root = config.incremental.root if config.incremental else config.output_dir
        manifest = manifest | "FinishRun" >> beam.ParDo(FinishRunFn(config.lease, root))
    return manifest
