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
failures, one JSON line each (a table rejection one per reason of its row's content), sorted by
(kind, fingerprint).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from synanno_datagen.layout import FRAGMENTS_DIR, REMEMBERED_FAILURES, json_line
from synanno_datagen.transforms.dead_letter_file import (
    MergeRunsFn, WriteSortedRunsFn, read_lines,
)
from synanno_datagen.transforms.records import (
    DEAD, EMPTY_TARGET, EXTRA_CELLS, MISSING_CHUNKS, TABLE_REASONS, DeadLetter,
)

log = logging.getLogger(__name__)

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


def memory_entries(path: str) -> Iterator[dict]:
    """The entries of the memory file at ``path``. A line that is not one (a hand-edited or cut
    file) can match no row: it is left out, with a warning, so that what it stood for is tried
    again."""
    bad, first = 0, None
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):   # (JSON nested past the stack)
            entry = None
        if _is_entry(entry):
            yield entry
        else:
            bad += 1
            first = first or number
    if bad:
        log.warning("%s: %d line%s not a memory entry (first: line %d), left out: the rows "
                    "it stood for are tried again", path, bad, "s are" if bad > 1 else " is",
                    first)


def _is_entry(entry) -> bool:
    """Whether a parsed memory line is an entry this tool writes (new_entry's shape)."""
    return (isinstance(entry, dict) and entry.get("kind") in (ROW, INSTANCE)
            and isinstance(entry.get("fingerprint"), str)
            and entry.get("reason") in PERMANENT_REASONS
            and type(entry.get("first_run")) is int)


def read_memory(pipeline, path: str, prefix: str):
    """The entries of the memory file at ``path``, read in the pipeline (steps named
    ``prefix``...)."""
    return (pipeline
            | f"{prefix}File" >> beam.Create([path])
            | f"{prefix}Entries" >> beam.FlatMap(memory_entries))


_ROWLESS = "rowless"   # elements without a row: nothing of them can be remembered


def _keyed(kind: str, columns: Optional[Sequence[str]]):
    """Instance or DeadLetter -> ((kind, fingerprint of its row), itself), or itself on the
    ``rowless`` output."""
    def keyed(element):
        if not element.row:
            yield beam.pvalue.TaggedOutput(_ROWLESS, element)
        else:
            yield (kind, fingerprint(element.row, columns)), element
    return keyed


def _skip_remembered(element):
    """(key, {"memory": [entry], "instances": [...], "rejected": [...]}) -> each element, or
    the memory entry of each on the ``remembered`` output when the key is remembered (for a
    rejection, under its reason)."""
    _, groups = element
    memory = list(groups["memory"])
    for tag in ("instances", "rejected"):
        for item in groups[tag]:
            # a row rejected now for another reason than remembered is news (a duplicate_id
            # row standing alone is changed_since_written once the table has moved it)
            entry = next((e for e in memory if tag == "instances" or e["reason"] == item.reason),
                         None)
            if entry is not None:
                yield beam.pvalue.TaggedOutput(REMEMBERED, entry)
            else:
                yield beam.pvalue.TaggedOutput(tag, item)


class SkipRememberedFailures(beam.PTransform):
    """{"instances": Instance, "rejected": DeadLetter of the table[, "memory": its entries,
    read_memory's, when read already]} -> dict ``ok`` (instances to go on with),
    ``dead_letter`` (rejections not remembered) and ``remembered`` (the memory entry of each
    skipped element). Elements and memory entries meet by key (kind, row fingerprint) in one
    CoGroupByKey: only rows and small entries cross it, and no worker holds the whole memory
    (as a side input each would)."""

    def __init__(self, memory_path: str, columns: Optional[Sequence[str]] = None):
        super().__init__()
        self._path = memory_path
        self._columns = columns

    def expand(self, inputs):
        p = inputs["instances"].pipeline
        keyed = {tag: inputs[tag] | f"Key{tag.title()}" >> beam.FlatMap(
                     _keyed(kind, self._columns)).with_outputs(_ROWLESS, main="keyed")
                 for tag, kind in (("instances", INSTANCE), ("rejected", ROW))}
        memory = inputs["memory"] if "memory" in inputs else read_memory(p, self._path, "Memory")
        groups = ({"memory": memory | "MemoryKeyed" >> beam.Map(lambda e: (key_of(e), e)),
                   **{tag: k.keyed for tag, k in keyed.items()}}
                  | "MeetMemory" >> beam.CoGroupByKey())
        out = groups | "SkipRemembered" >> beam.FlatMap(_skip_remembered).with_outputs(
            REMEMBERED, "instances", "rejected")
        kept = {tag: (out[tag], keyed[tag][_ROWLESS]) | f"All{tag.title()}" >> beam.Flatten()
                for tag in ("instances", "rejected")}
        return {"ok": kept["instances"], DEAD: kept["rejected"], REMEMBERED: out[REMEMBERED]}


# Priorities of a memory entry's line among those of its key (see merged_memory)
SKIPPED, NEW, EARLIER = 0, 1, 2
RUNS_DIR = f"{FRAGMENTS_DIR}/remembered"   # the sorted runs of entry lines, in the run's _tmp


def sortable_entry(entry: dict, priority: int) -> bytes:
    """A memory entry -> its line behind a prefix (up to a tab) that sorts by its key (kind,
    fingerprint, and for a table rejection its reason), then by ``priority``. Rows alike in the
    columns read share a fingerprint but may be rejected for other reasons (an id repeated on
    such rows and moved since it was written: changed_since_written, then duplicate_id), and
    a rejection is skipped only under its own reason: each reason keeps its entry."""
    reason = str(entry["reason"]) if entry["kind"] == ROW else ""
    return (b"%s %s %s %d\t" % (str(entry["kind"]).encode(), str(entry["fingerprint"]).encode(),
                                reason.encode(), priority) + json_line(entry))


def new_entry_lines(letter: DeadLetter, run: int,
                    columns: Optional[Sequence[str]] = None) -> Iterator[bytes]:
    """The sortable line of a dead letter's new memory entry, if it is a permanent failure."""
    entry = new_entry(letter, run, columns)
    if entry is not None:
        yield sortable_entry(entry, NEW)


def _split(line: bytes) -> Tuple[bytes, int, bytes]:
    prefix, _, body = line.partition(b"\t")
    key, _, priority = prefix.rpartition(b" ")
    return key, int(priority), body


def merged_memory(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Sortable entry lines, sorted -> the memory file's lines, one per key (see
    sortable_entry): the entry of a skipped element, else the smallest new entry (keeping the
    run its key first failed in, when an earlier memory given for it has the key: a run with
    --retry-failed); keys only an earlier memory has are dropped."""
    for _, group in itertools.groupby(lines, key=lambda line: _split(line)[0]):
        _, priority, body = _split(next(group))
        if priority == EARLIER:
            continue
        if priority == NEW:
            earlier = next((b for _, p, b in map(_split, group) if p == EARLIER), None)
            if earlier is not None:
                entry = json.loads(body)
                entry["first_run"] = json.loads(earlier)["first_run"]
                body = json_line(entry)
        yield body


class MergeMemoryFn(MergeRunsFn):
    """[run names], {reason: elements skipped} -> the file info of ``remembered_failures.jsonl``
    (merged_memory of the runs) with ``remembered``, the skipped elements by reason."""

    PATH = REMEMBERED_FAILURES

    def __init__(self, output_dir: str, keepalive=None):
        super().__init__(output_dir, keepalive=keepalive, runs_dir=RUNS_DIR)

    def file_lines(self, merged: Iterable[bytes]) -> Iterable[bytes]:
        return merged_memory(merged)

    def process(self, runs: Optional[List[str]], skipped: Optional[Dict[str, int]] = None):
        yield {**self.merge(runs), "remembered": dict(sorted((skipped or {}).items()))}


class RememberFailures(beam.PTransform):
    """This run's DeadLetters (after skipping) + the skipped entries (or None) -> one dict:
    the memory file written and ``remembered`` ({reason: elements skipped}). Entry lines go
    through sorted runs under the run's temporary folder, merged in one step, so no step holds
    every failure (``after``: a side input to wait for, the clearing of an earlier attempt's
    temporary folder)."""

    def __init__(self, output_dir: str, run: int, remembered=None,
                 columns: Optional[Sequence[str]] = None, keepalive=None,
                 earlier: Optional[str] = None, after=None):
        super().__init__()
        self._output_dir, self._run, self._columns = output_dir, run, columns
        self._keepalive = keepalive
        self._remembered = remembered
        self._earlier = earlier   # an earlier memory file: its entries' first runs are kept
        self._after = [after] if after is not None else []

    def expand(self, dead):
        p = dead.pipeline
        streams = [dead | "NewEntries" >> beam.FlatMap(new_entry_lines, self._run, self._columns)]
        if self._remembered is not None:
            streams.append(self._remembered
                           | "SkippedEntries" >> beam.Map(sortable_entry, SKIPPED))
            skipped = (self._remembered
                       | "SkippedReasons" >> beam.Map(lambda entry: entry["reason"])
                       | "SkippedByReason" >> beam.combiners.Count.PerElement()
                       | "SkippedCounts" >> beam.combiners.ToDict())
        else:
            skipped = p | "NoneSkipped" >> beam.Create([{}])
        if self._earlier:
            streams.append(p
                           | "EarlierFile" >> beam.Create([self._earlier])
                           | "EarlierEntries" >> beam.FlatMap(memory_entries)
                           | "EarlierLines" >> beam.Map(sortable_entry, EARLIER))
        runs = WriteSortedRunsFn(self._output_dir, keepalive=self._keepalive, runs_dir=RUNS_DIR)
        return (streams
                | "AllEntries" >> beam.Flatten()
                | "SortedRuns" >> beam.ParDo(runs, *self._after)
                | "AllRuns" >> beam.combiners.ToList()
                | "WriteMemory" >> beam.ParDo(MergeMemoryFn(self._output_dir, self._keepalive),
                                              AsSingleton(skipped)))
