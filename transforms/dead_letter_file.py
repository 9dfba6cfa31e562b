"""``dead_letter.jsonl``, sorted by table position, written in bounded memory.

Each worker writes the dead letters it makes in sorted runs of at most ``RUN_LINES`` lines
under the run's temporary folder; one step merges the runs, streaming, into the file. Only the
runs' names cross a shuffle, so no worker holds every dead letter, however many rows a table
rejects. Each line is kept behind a prefix that sorts as the DeadLetter's sort key, so that the
runs sort and merge as plain bytes; the prefix is dropped in the file. The runs go with the
temporary folder, which the manifest step removes (a retried merge finds them still there).
"""
from __future__ import annotations

import heapq
import uuid
from typing import Iterable, Iterator, List, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from synanno_datagen.layout import DEAD_LETTER, FRAGMENTS_DIR, join, json_line
from synanno_datagen.transforms.files import before_commit, open_streamed, write_atomic, write_bytes

RUN_LINES = 50_000          # lines a worker holds before it writes them as one sorted run
MERGE_FAN_IN = 128          # runs read at once; more are merged in passes
MERGE_READ_BUFFER = 1 << 20  # bytes of a gs:// run read ahead while it is merged
RUNS_DIR = f"{FRAGMENTS_DIR}/dead_letters"
_ID_OFFSET = 1 << 63        # instance ids (and the "no id" key, -2**63) as non-negative numbers


def sortable_line(letter) -> bytes:
    """A DeadLetter -> its line behind a prefix (up to a tab) whose bytes sort as its sort key:
    table shard, row, instance id (zero-padded to 20 digits) and reason. Lines with the same key
    sort by the line itself, as the file always did."""
    (shard, row), instance_id, reason = letter.sort_key()
    return (b"%020d %020d %020d %s\t" % (shard, row, instance_id + _ID_OFFSET, reason.encode())
            + json_line(letter.to_json()))


def _unprefixed(lines: Iterable[bytes]) -> Iterator[bytes]:
    for line in lines:
        yield line.split(b"\t", 1)[1]


def read_lines(path: str) -> Iterator[bytes]:
    """The lines of the file at ``path`` (local or gs://), as bytes, streaming: a merge reads
    MERGE_FAN_IN of them at once, so a gs:// object is read ahead MERGE_READ_BUFFER at a time
    (Beam's default, 16 MB, made 128 open runs hold 2 GB)."""
    with open_streamed(path, MERGE_READ_BUFFER) as f:
        yield from iter(f.readline, b"")


class WriteSortedRunsFn(beam.DoFn):
    """Sortable lines -> the names of the sorted runs they were written in (at most
    ``run_lines`` lines each, per bundle, under ``runs_dir`` of the temporary folder).
    ``after``: a side input to wait for (the step that clears an earlier run's temporary
    folder). ``keepalive``: the run's lease heartbeat, which looks before each run is written
    (at most every few minutes)."""

    def __init__(self, output_dir: str, run_lines: int = RUN_LINES, keepalive=None,
                 runs_dir: str = RUNS_DIR):
        self._output_dir, self._run_lines = output_dir, run_lines
        self._keepalive = keepalive
        self._runs_dir = runs_dir
        self._held: List[bytes] = []

    def start_bundle(self):
        self._held = []

    def process(self, line: bytes, after=None):
        self._held.append(line)
        if len(self._held) >= self._run_lines:
            yield self._write_run()

    def finish_bundle(self):
        if self._held:
            yield WindowedValue(self._write_run(), MIN_TIMESTAMP, [GlobalWindow()])

    def _write_run(self) -> str:
        if self._keepalive is not None:
            self._keepalive.beat()
        self._held.sort()
        path = join(self._output_dir, self._runs_dir, f"{uuid.uuid4().hex}.run")
        write_bytes(path, b"".join(self._held), digest=False)
        self._held = []
        return path


class MergeRunsFn(beam.DoFn):
    """[run names] -> file info of ``PATH``: the runs' lines merged in order, streaming, and
    made the file's by ``file_lines`` (runs of more than ``fan_in`` files are merged in passes,
    under ``runs_dir``)."""

    PATH = DEAD_LETTER

    def __init__(self, output_dir: str, fan_in: int = MERGE_FAN_IN, keepalive=None,
                 runs_dir: str = RUNS_DIR):
        self._output_dir, self._fan_in = output_dir, fan_in
        self._keepalive = keepalive   # see files.before_commit
        self._runs_dir = runs_dir

    def file_lines(self, merged: Iterable[bytes]) -> Iterable[bytes]:
        return _unprefixed(merged)

    def merge(self, runs: Optional[List[str]]) -> dict:
        runs = sorted(runs or [])
        while len(runs) > self._fan_in:   # merge in passes: few files open at once
            runs = [self._merged_run(runs[i:i + self._fan_in])
                    for i in range(0, len(runs), self._fan_in)]
        count = [0]

        def counted(lines):
            for line in lines:
                count[0] += 1
                yield line

        merged = heapq.merge(*(read_lines(p) for p in runs))
        before_commit(self._keepalive)
        size, sha = write_atomic(join(self._output_dir, self.PATH),
                                 counted(self.file_lines(merged)))
        return {"path": self.PATH, "records": count[0], "bytes": size, "sha256": sha}

    def process(self, runs: Optional[List[str]]):
        yield self.merge(runs)

    def _merged_run(self, runs: List[str]) -> str:
        path = join(self._output_dir, self._runs_dir, f"{uuid.uuid4().hex}.run")
        write_atomic(path, heapq.merge(*(read_lines(p) for p in runs)))
        return path


class MergeDeadLettersFn(MergeRunsFn):
    """[run names] -> file info of ``dead_letter.jsonl``: the runs merged, prefixes dropped."""

    def process(self, runs: Optional[List[str]]):
        yield {"kind": "dead_letter", **self.merge(runs)}


class WriteDeadLetterFile(beam.PTransform):
    """DeadLetters -> one file info dict (``dead_letter.jsonl``), after ``after`` (a side input)."""

    def __init__(self, output_dir: str, after=None, run_lines: int = RUN_LINES,
                 fan_in: int = MERGE_FAN_IN, keepalive=None):
        super().__init__()
        self._runs = WriteSortedRunsFn(output_dir, run_lines, keepalive)
        self._merge = MergeDeadLettersFn(output_dir, fan_in, keepalive)
        self._after = [after] if after is not None else []

    def expand(self, dead):
        return (dead
                | "SortableLines" >> beam.Map(sortable_line)
                | "SortedRuns" >> beam.ParDo(self._runs, *self._after)
                | "AllRuns" >> beam.combiners.ToList()
                | "Merge" >> beam.ParDo(self._merge))
