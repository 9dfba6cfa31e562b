"""The manifest's counts and npy totals, combined from the stages' outputs (small values only)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from synanno_datagen.transforms.records import TABLE_REASONS


def _npy_files_and_bytes(written):
    """(npy files, their bytes) of one WrittenShard."""
    return written.counts["npy_files"], written.counts["npy_bytes"]


class SumByKey(beam.CombineFn):
    """(key, n) pairs -> {key: sum of n} (one dict, however many inputs)."""

    def create_accumulator(self):
        return {}

    def add_input(self, sums, pair):
        key, n = pair
        sums[key] = sums.get(key, 0) + n
        return sums

    def merge_accumulators(self, accumulators):
        merged = {}
        for sums in accumulators:
            for key, n in sums.items():
                merged[key] = merged.get(key, 0) + n
        return merged

    def extract_output(self, sums):
        return sums


FAILED = "failed:"  # key prefix of the failures by reason in the summed counts


def _written_pairs(written):
    """(key, n) pairs of one WrittenShard."""
    counts = written.counts
    return [("written", counts["instances"])] + [
        (key, counts[key])
        for key in ("variants", "filled_source", "filled_target", "centers_off_label")]


def counts_from_sums(sums: dict, memory: dict) -> dict:
    """The manifest's counts from the summed (key, n) pairs (``rows``, ``selected``,
    ``written``, ``variants``, ``vanished``, ``filled_*``, ``failed:<reason>``) and the
    remembered failures skipped (``memory["remembered"]``: {reason: n}). Rows not selected are
    what is left of the rows read: ``rows_read = rows_rejected + rows_not_selected +
    instances_selected + remembered``."""
    failures = {k[len(FAILED):]: n for k, n in sums.items() if k.startswith(FAILED)}
    rejected_rows = sum(n for reason, n in failures.items() if reason in TABLE_REASONS)
    remembered = memory["remembered"]
    rows_read, selected = sums.get("rows", 0), sums.get("selected", 0)
    return {
        "rows_read": rows_read, "rows_rejected": rejected_rows,
        "rows_not_selected": rows_read - rejected_rows - selected - sum(remembered.values()),
        "instances_selected": selected,
        "instances_written": sums.get("written", 0),
        "variants_written": sums.get("variants", 0),
        "failures": dict(sorted(failures.items())), "failed": sum(failures.values()),
        "vanished_instances": sums.get("vanished", 0),
        "remembered_failures": remembered,
        "filled_chunks": {"source": sums.get("filled_source", 0),
                          "target": sums.get("filled_target", 0)},
        "centers_off_label": sums.get("centers_off_label", 0),
    }


def count_run(rows, selected, written, dead, vanished=None, memory=None):
    """One dict of counts: rows read, instances selected/written, variants, failures by reason,
    vanished instances, remembered failures skipped, chunks read as zeros. ``rows``: (RowRef,
    row); ``selected``: Instance; ``written``: WrittenShard; ``dead``: DeadLetter; ``vanished``:
    ids; ``memory``: RememberFailures' one dict (incremental runs). Every count is summed by one
    combine, so the graph stays small (each Beam transform costs start-up)."""
    parts = [rows | "RowPairs" >> beam.Map(lambda _: ("rows", 1)),
             selected | "SelectedPairs" >> beam.Map(lambda _: ("selected", 1)),
             written | "WrittenPairs" >> beam.FlatMap(_written_pairs),
             dead | "FailedPairs" >> beam.Map(lambda d: (FAILED + d.reason, 1))]
    if vanished is not None:
        parts.append(vanished | "VanishedPairs" >> beam.Map(lambda _: ("vanished", 1)))
    sums = (parts | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(SumByKey()))
    memory = memory if memory is not None else (
        rows.pipeline | "NoMemory" >> beam.Create([{"remembered": {}}]))

    return sums | "Counts" >> beam.Map(counts_from_sums, AsSingleton(memory))


def npy_totals(written):
    """{"files", "bytes"} of every npy file written, from the WrittenShards."""
    return (written
            | "NpyFiles" >> beam.Map(_npy_files_and_bytes)
            | "NpyTotals" >> beam.CombineGlobally(beam.combiners.TupleCombineFn(sum, sum))
            | "NpyDict" >> beam.Map(lambda t: {"files": t[0], "bytes": t[1]}))
