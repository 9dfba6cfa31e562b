"""The manifest's counts and npy totals, combined from the stages' outputs (small values only)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from synanno_datagen.transforms.table import TABLE_REASONS


def _npy_files_and_bytes(written):
    """(npy files, their bytes) of one WrittenShard."""
    files = [f for e in written.entries for f in e.get("npy", {}).get("files", [])]
    return len(files), sum(f["bytes"] for f in files)


def _written_totals(written):
    """(instances, variants, source chunks read as zeros, target chunks read as zeros) of one
    WrittenShard."""
    filled = [e.get("filled_chunks", {}) for e in written.entries]
    return (len(written.entries), sum(len(e["seed_slices"]) for e in written.entries),
            sum(f.get("source", 0) for f in filled), sum(f.get("target", 0) for f in filled))


def count_run(rows, selected, written, dead, vanished=None, memory=None):
    """One dict of counts: rows read, instances selected/written, variants, failures by reason,
    vanished instances, remembered failures skipped, chunks read as zeros. ``rows``: (RowRef,
    row); ``selected``: Instance; ``written``: WrittenShard; ``dead``: DeadLetter; ``vanished``:
    ids; ``memory``: RememberFailures' one dict (incremental runs)."""
    def count(pcoll, label):
        return pcoll | label >> beam.combiners.Count.Globally()

    rows_read = count(rows, "CountRows")
    n_selected = count(selected, "CountSelected")
    written_totals = (written | "WrittenPer" >> beam.Map(_written_totals)
                      | "SumWritten" >> beam.CombineGlobally(
                          beam.combiners.TupleCombineFn(sum, sum, sum, sum)))
    by_reason = (dead | "Reason" >> beam.Map(lambda d: d.reason)
                 | "CountReasons" >> beam.combiners.Count.PerElement()
                 | "ReasonDict" >> beam.combiners.ToDict())

    n_vanished = (vanished if vanished is not None else rows.pipeline | "NoneVanished" >>
                  beam.Create([])) | "CountVanished" >> beam.combiners.Count.Globally()

    memory = memory if memory is not None else (
        rows.pipeline | "NoMemory" >> beam.Create([{"remembered": {}}]))

    def combine(_, rows_read, selected, totals, failures, vanished_count, memory):
        written, variants, filled_source, filled_target = totals
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
                                   AsSingleton(written_totals),
                                   AsSingleton(by_reason), AsSingleton(n_vanished),
                                   AsSingleton(memory)))


def npy_totals(written):
    """{"files", "bytes"} of every npy file written, from the WrittenShards."""
    return (written
            | "NpyFiles" >> beam.Map(_npy_files_and_bytes)
            | "NpyTotals" >> beam.CombineGlobally(beam.combiners.TupleCombineFn(sum, sum))
            | "NpyDict" >> beam.Map(lambda t: {"files": t[0], "bytes": t[1]}))
