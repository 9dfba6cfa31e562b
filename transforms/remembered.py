"""Remembered failures: an incremental run does not try again what failed for good before.

Permanent failures are the table's rejections (``missing_coordinate``, ``not_a_number``,
``outside_volume``, ``invalid_id``, ``duplicate_id``, ``changed_since_written``),
``empty_target`` and ``missing_chunks``; ``fetch_error`` and ``unexpected_error`` may pass next
time and are not remembered, nor is ``extra_cells`` (the columns read may be the same once the
export quotes a later cell, so the fingerprint would keep the fixed row skipped). Each is
remembered by a fingerprint of the original row's content in the columns the run reads (the id
column and the point columns, as read: other columns, such as a CAVE export's root ids that
proofreading changes every night, do not make a row new), keyed by what it suppresses: a table
rejection (``row``) or an instance (``instance``), so an exact copy of a row that was kept is
never taken for its rejected duplicate. A later run that reads the same row unchanged skips it:
the rejection is not dead-lettered again, the instance is not fetched again; both are counted as
``remembered_failures`` by reason. A row changed in those columns has another fingerprint and is
tried again, and ``--retry-failed`` tries every row again.

Each incremental run writes the memory it leaves, ``runs/NNNNN/remembered_failures.jsonl``: the
previous run's entries that matched a row of this run's table, plus this run's new permanent
failures, one JSON line each, sorted by (kind, fingerprint).
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsDict, AsList

from synanno_datagen.layout import REMEMBERED_FAILURES, join, json_line
from synanno_datagen.transforms.files import before_commit, read_jsonl, write_atomic
from synanno_datagen.transforms.records import (
    DEAD, EMPTY_TARGET, EXTRA_CELLS, MISSING_CHUNKS, TABLE_REASONS, DeadLetter,
)

PERMANENT_REASONS = tuple(r for r in TABLE_REASONS if r != EXTRA_CELLS) + (EMPTY_TARGET,
                                                                          MISSING_CHUNKS)
ROW, INSTANCE = "row", "instance"   # what an entry suppresses: a table rejection, an instance
REMEMBERED = "remembered"


def fingerprint(row: Iterable[Tuple[str, str]], columns: Optional[Sequence[str]] = None) -> str:
    """128-bit blake2b of a row's (column, text) cells in ``columns`` (all when None), sorted by
    column name: the same for the same content in any process, whichever shard or position the
    row is at, whatever the order of the table's columns."""
    cells = list(row)
    if columns is not None:
        wanted = set(columns)
        cells = [(k, v) for k, v in cells if k in wanted]
    text = json.dumps(sorted(cells), separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def key_of(entry: dict) -> Tuple[str, str]:
    return entry["kind"], entry["fingerprint"]


def new_entry(letter: DeadLetter, run: int,
              columns: Optional[Sequence[str]] = None) -> Optional[dict]:
    """The memory entry of a dead letter, or None when it is not permanent (or has no row)."""
    if letter.reason not in PERMANENT_REASONS or not letter.row:
        return None
    return {"kind": ROW if letter.reason in TABLE_REASONS else INSTANCE,
            "fingerprint": fingerprint(letter.row, columns), "reason": letter.reason,
            "instance_id": letter.instance_id, "first_run": run}


def keyed_memory(pipeline, path: str, prefix: str, value=lambda entry: entry):
    """The entries of the memory file at ``path`` as (key, ``value(entry)``) pairs, read in the
    pipeline (steps named ``prefix``...), for a side input."""
    return (pipeline
            | f"{prefix}File" >> beam.Create([path])
            | f"{prefix}Entries" >> beam.FlatMap(read_jsonl)
            | f"{prefix}Keyed" >> beam.Map(lambda e: (key_of(e), value(e))))


def _first_run(entry: dict) -> int:
    return entry["first_run"]


class SkipRememberedFn(beam.DoFn):
    """Instance or DeadLetter -> itself, or, when its row is remembered for this ``kind``, the
    memory entry on the ``remembered`` output."""

    def __init__(self, kind: str, columns: Optional[Sequence[str]] = None):
        self._kind = kind
        self._columns = columns

    def process(self, element, memory: Dict[Tuple[str, str], dict]):
        entry = memory.get((self._kind, fingerprint(element.row, self._columns))) \
            if element.row else None
        if entry is None:
            yield element
        else:
            yield beam.pvalue.TaggedOutput(REMEMBERED, entry)


class SkipRememberedFailures(beam.PTransform):
    """{"instances": Instance, "rejected": DeadLetter of the table} -> dict ``ok`` (instances
    to go on with), ``dead_letter`` (rejections not remembered) and ``remembered`` (the memory
    entry of each skipped element). The memory is a side input: it holds failures only."""

    def __init__(self, memory_path: str, columns: Optional[Sequence[str]] = None):
        super().__init__()
        self._path = memory_path
        self._columns = columns

    def expand(self, inputs):
        memory = AsDict(keyed_memory(inputs["instances"].pipeline, self._path, "Memory"))
        instances = inputs["instances"] | "SkipInstances" >> beam.ParDo(
            SkipRememberedFn(INSTANCE, self._columns), memory).with_outputs(REMEMBERED, main="ok")
        rejected = inputs["rejected"] | "SkipRejections" >> beam.ParDo(
            SkipRememberedFn(ROW, self._columns), memory).with_outputs(REMEMBERED, main="ok")
        remembered = ((instances[REMEMBERED], rejected[REMEMBERED])
                      | "AllRemembered" >> beam.Flatten())
        return {"ok": instances.ok, DEAD: rejected.ok, REMEMBERED: remembered}


def memory_lines(remembered: List[dict], letters: List[DeadLetter], run: int,
                 columns: Optional[Sequence[str]] = None,
                 first_runs: Optional[Dict[Tuple[str, str], int]] = None) -> List[dict]:
    """The entries a run leaves: those it skipped (each once) and its new permanent failures,
    sorted by key. ``first_runs``: the run each entry of an earlier memory first failed in (a
    run with --retry-failed, whose rows that fail again keep it)."""
    entries = {key_of(e): e for e in remembered}
    for letter in letters:
        entry = new_entry(letter, run, columns)
        if entry is not None:
            entry["first_run"] = (first_runs or {}).get(key_of(entry), run)
            entries.setdefault(key_of(entry), entry)
    return [entries[k] for k in sorted(entries)]


def count_by_reason(remembered: List[dict]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for entry in remembered:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    return dict(sorted(counts.items()))


class WriteMemoryFn(beam.DoFn):
    """[DeadLetter] + [skipped entries] -> writes ``remembered_failures.jsonl`` in the run's
    directory; yields its file info and the skipped elements by reason (``keepalive``: see
    files.before_commit)."""

    def __init__(self, output_dir: str, run: int, columns: Optional[Sequence[str]] = None,
                 keepalive=None):
        self._output_dir = output_dir
        self._run = run
        self._columns = columns
        self._keepalive = keepalive

    def process(self, letters, remembered, first_runs=None):
        lines = memory_lines(list(remembered), list(letters or []), self._run, self._columns,
                             first_runs)
        before_commit(self._keepalive)
        size, sha = write_atomic(join(self._output_dir, REMEMBERED_FAILURES),
                                 (json_line(e) for e in lines))
        yield {"path": REMEMBERED_FAILURES, "records": len(lines), "bytes": size, "sha256": sha,
               "remembered": count_by_reason(list(remembered))}


class RememberFailures(beam.PTransform):
    """This run's DeadLetters (after skipping) + the skipped entries (or None) -> one dict:
    the memory file written and ``remembered`` ({reason: elements skipped})."""

    def __init__(self, output_dir: str, run: int, remembered=None,
                 columns: Optional[Sequence[str]] = None, keepalive=None,
                 earlier: Optional[str] = None):
        super().__init__()
        self._fn = WriteMemoryFn(output_dir, run, columns, keepalive)
        self._remembered = remembered
        self._earlier = earlier   # an earlier memory file: its entries' first runs are kept

    def expand(self, dead):
        remembered = self._remembered if self._remembered is not None else (
            dead.pipeline | "NoneRemembered" >> beam.Create([]))
        return (dead
                | "CollectFailures" >> beam.combiners.ToList()
                | "WriteMemory" >> beam.ParDo(self._fn, AsList(remembered), *(
                    [AsDict(keyed_memory(dead.pipeline, self._earlier, "Earlier", _first_run))]
                    if self._earlier else [])))
