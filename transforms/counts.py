"""The manifest's counts and npy totals, combined from the stages' outputs (small values only)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from synanno_datagen.transforms.table import TABLE_REASONS


def _npy_files_and_bytes(keyed_written):
    files = keyed_written[1].index_entry.get("npy", {}).get("files", [])
    return len(files), sum(f["bytes"] for f in files)


def _records_and_filled(keyed_written):
    """(records, source chunks read as zeros, target chunks read as zeros) of one instance."""
    written = keyed_written[1]
    filled = written.index_entry.get("filled_chunks", {})
    return written.records, filled.get("source", 0), filled.get("target", 0)


def count_run(rows, selected, written, dead, vanished=None, memory=None):
    """One dict of counts: rows read, instances selected/written, variants, failures by reason,
    vanished instances, remembered failures skipped, chunks read as zeros. ``rows``: (RowRef,
    row); ``selected``: Instance; ``written``: (shard key, WrittenInstance); ``dead``:
    DeadLetter; ``vanished``: ids; ``memory``: RememberFailures' one dict (incremental runs)."""
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

    memory = memory if memory is not None else (
        rows.pipeline | "NoMemory" >> beam.Create([{"remembered": {}}]))

    def combine(_, rows_read, selected, written, totals, failures, vanished_count, memory):
        variants, filled_source, filled_target = totals
        rejected_rows = sum(n for reason, n in failures.items() if reason in TABLE_REASONS)
        remembered = memory["remembered"]
        return {
            "rows_read": rows_read, "rows_rejected": rejected_rows,
            "rows_not_selected": rows_read - rejected_rows - selected - sum(remembered.values()),
            "instances_selected": selected,
            "instances_written": written, "variants_written": variants,
            "failures": dict(sorted(failures.items())), "failed": sum(failures.values()),
            "vanished_instances": vanished_count,
            "remembered_failures": remembered,
            "filled_chunks": {"source": filled_source, "target": filled_target},
        }

    return (rows_read.pipeline | "CountsTrigger" >> beam.Create([None])
            | "Counts" >> beam.Map(combine, AsSingleton(rows_read), AsSingleton(n_selected),
                                   AsSingleton(n_written), AsSingleton(written_totals),
                                   AsSingleton(by_reason), AsSingleton(n_vanished),
                                   AsSingleton(memory)))


def npy_totals(written):
    """{"files", "bytes"} of every npy file written, from (shard key, WrittenInstance)."""
    return (written
            | "NpyFiles" >> beam.Map(_npy_files_and_bytes)
            | "NpyTotals" >> beam.CombineGlobally(beam.combiners.TupleCombineFn(sum, sum))
            | "NpyDict" >> beam.Map(lambda t: {"files": t[0], "bytes": t[1]}))
