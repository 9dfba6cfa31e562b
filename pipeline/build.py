"""build(p, config): assemble the pipeline. Nothing here runs it."""
from __future__ import annotations

import uuid
from typing import List

import apache_beam as beam
from apache_beam.pvalue import AsList, AsSingleton

from synanno_datagen.pipeline.config import Config
from synanno_datagen.pipeline.manifest import WriteManifestFn
from synanno_datagen.transforms.clean import CleanTargets
from synanno_datagen.transforms.keep_new import KeepNewInstances
from synanno_datagen.transforms.fetch import FetchConfig, FetchSubvolumes, default_block_size
from synanno_datagen.transforms.progress import CountDeadLettersFn, CountFn
from synanno_datagen.transforms.records import (
    FETCH_ERROR, UNEXPECTED_ERROR, DeadLetter, Subvolume, exception_text,
)
from synanno_datagen.transforms.select import AssignShards, SelectInstances
from synanno_datagen.transforms.table import DEAD, TABLE_REASONS, ReadTable
from synanno_datagen.transforms.variants import MakeVariants
from synanno_datagen.transforms.write import FinalizeShards, WriteDeadLetterFn, WriteExamples


def failure_to_dead_letters(failure, reason: str, stage: str) -> List[DeadLetter]:
    """Beam's (element, (type, repr, traceback)) -> a DeadLetter per instance in the element (an
    Instance, a Subvolume, or a work block (key, [Instance])), arrays dropped."""
    element, (exc_type, exc_repr, _) = failure
    if isinstance(element, Subvolume):
        instances = [element.instance]
    elif isinstance(element, tuple):
        instances = sorted(element[1], key=lambda i: i.instance_id)
    else:
        instances = [element]
    details = exception_text(exc_type, exc_repr)[:2000]
    return [DeadLetter.for_instance(i, reason, details, stage) for i in instances]


def fetch_config(config: Config) -> FetchConfig:
    memory = int(config.fetch_memory_mb) << 20
    block = config.block_size_xyz or default_block_size(
        config.target, config.source, config.scale_xyz, config.crop_size_xyz, memory)
    return FetchConfig(config.source, config.target, config.crop_size_xyz, config.scale_xyz,
                       config.pad_value, config.fetch_strategy, tuple(block), memory,
                       config.missing_chunks, config.volume_reader, uuid.uuid4().hex)


def build(p: beam.Pipeline, config: Config):
    """Add every stage to ``p``; returns the manifest PCollection (one dict)."""
    incremental = bool(config.incremental and config.incremental.previous)
    # Picking N while reading keeps memory independent of the table size; an incremental run
    # picks N among the instances not in earlier runs, so it picks after KeepNewInstances.
    select = (config.seed, config.num_instances) \
        if config.num_instances is not None and not incremental else None
    table = p | "ReadTable" >> ReadTable(config.table_shards, config.id_column,
                                         config.target.bounds, select, config.points)
    instances = table["instances"]  # Instance, unique ids
    vanished = None
    if incremental:
        kept = instances | "KeepNewInstances" >> KeepNewInstances(
            config.incremental.previous_index_paths())
        instances, vanished = kept["ok"], kept["vanished"]
    if config.num_instances is not None and incremental:
        instances = instances | "SelectInstances" >> SelectInstances(config.seed,
                                                                     config.num_instances)
    shard_bytes = int(config.shard_size_mb * (1 << 20))
    assigned = instances | "AssignShards" >> AssignShards(
        config.seed, config.splits, config.bytes_per_instance, shard_bytes)
    assigned["instances"] | "TallySelected" >> beam.ParDo(CountFn("instances_selected"))
    fetched = assigned["instances"] | "FetchSubvolumes" >> FetchSubvolumes(fetch_config(config))
    cleaned = fetched["ok"] | "CleanTargets" >> CleanTargets(config.source.resolution_nm)
    varied = cleaned["ok"] | "MakeVariants" >> MakeVariants(config.seed, config.variants,
                                                            config.seed_model)
    written = varied["ok"] | "WriteExamples" >> WriteExamples(config.output_dir, config.formats)
    # ((split, shard, n), WrittenInstance): arrays are on disk, only paths cross the shuffle.
    files = written["written"] | "FinalizeShards" >> FinalizeShards(
        config.output_dir, config.formats, assigned["shard_keys"])

    failures = [
        fetched["failed"] | "FetchFailures" >> beam.FlatMap(
            failure_to_dead_letters, FETCH_ERROR, "FetchSubvolumes"),
        cleaned["failed"] | "CleanFailures" >> beam.FlatMap(
            failure_to_dead_letters, UNEXPECTED_ERROR, "CleanTargets"),
        varied["failed"] | "VariantFailures" >> beam.FlatMap(
            failure_to_dead_letters, UNEXPECTED_ERROR, "MakeVariants"),
        written["failed"] | "WriteFailures" >> beam.FlatMap(
            failure_to_dead_letters, UNEXPECTED_ERROR, "WriteExamples"),
    ]
    dead = ([table[DEAD], fetched[DEAD], cleaned["dead_letter"]] + failures
            | "AllDeadLetters" >> beam.Flatten()
            | "TallyDeadLetters" >> beam.ParDo(CountDeadLettersFn()))
    dead_file = (dead | "CollectDeadLetters" >> beam.combiners.ToList()
                 | "WriteDeadLetter" >> beam.ParDo(WriteDeadLetterFn(config.output_dir)))

    counts = _counts(table["rows"], assigned["instances"], written["written"], dead, vanished)
    npy_totals = (written["written"]
                  | "NpyFiles" >> beam.Map(_npy_files_and_bytes)
                  | "NpyTotals" >> beam.CombineGlobally(beam.combiners.TupleCombineFn(sum, sum))
                  | "NpyDict" >> beam.Map(lambda t: {"files": t[0], "bytes": t[1]}))
    return (p
            | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest" >> beam.ParDo(
                WriteManifestFn(config), AsList(files), AsSingleton(dead_file),
                AsSingleton(counts), AsSingleton(npy_totals), AsSingleton(fetched["io"])))


def _npy_files_and_bytes(keyed_written):
    files = keyed_written[1].index_entry.get("npy", {}).get("files", [])
    return len(files), sum(f["bytes"] for f in files)


def _records_and_filled(keyed_written):
    """(records, source chunks read as zeros, target chunks read as zeros) of one instance."""
    written = keyed_written[1]
    filled = written.index_entry.get("filled_chunks", {})
    return written.records, filled.get("source", 0), filled.get("target", 0)


def _counts(rows, selected, written, dead, vanished=None):
    """One dict of counts: rows read, instances selected/written, variants, failures by reason."""
    def count(pcoll, label):
        return pcoll | label >> beam.combiners.Count.Globally()

    rows_read = count(rows, "CountRows")
    n_selected = count(selected, "CountSelected")
    n_written = count(written, "CountWritten")
    written_totals = (written | "VariantsPer" >> beam.Map(_records_and_filled)
                      | "SumWritten" >> beam.CombineGlobally(
                          beam.combiners.TupleCombineFn(sum, sum, sum)))
    by_reason = (dead | "Reason" >> beam.Map(lambda d: d.reason)
                 | "CountReasons" >> beam.combiners.Count.PerElement()
                 | "ReasonDict" >> beam.combiners.ToDict())

    n_vanished = (vanished if vanished is not None else rows.pipeline | "NoneVanished" >>
                  beam.Create([])) | "CountVanished" >> beam.combiners.Count.Globally()

    def combine(_, rows_read, selected, written, totals, failures, vanished_count):
        variants, filled_source, filled_target = totals
        rejected_rows = sum(n for reason, n in failures.items() if reason in TABLE_REASONS)
        return {
            "rows_read": rows_read, "rows_rejected": rejected_rows,
            "rows_not_selected": rows_read - rejected_rows - selected,
            "instances_selected": selected,
            "instances_written": written, "variants_written": variants,
            "failures": dict(sorted(failures.items())), "failed": sum(failures.values()),
            "vanished_instances": vanished_count,
            "filled_chunks": {"source": filled_source, "target": filled_target},
        }

    return (rows_read.pipeline | "CountsTrigger" >> beam.Create([None])
            | "Counts" >> beam.Map(combine, AsSingleton(rows_read), AsSingleton(n_selected),
                                   AsSingleton(n_written), AsSingleton(written_totals),
                                   AsSingleton(by_reason), AsSingleton(n_vanished)))
