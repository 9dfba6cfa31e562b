"""Benchmark: a worker's threads reading at once, against reads taken one at a time per process,
and against the DirectRunner's default single thread.

    python benchmarks/concurrent_reads.py [--work DIR] [--latency-ms 0,20,100] [--workers 4]

The reader measures tensorstore's per-process storage counters around each read without holding a
lock across it (transforms.readers), so the threads of one worker read at once, as Dataflow's
harness threads do. The baseline is what an earlier reader did: one read at a time per process
(here a process-wide lock around every read, put in the child by the benchmark). Both run the
whole pipeline (grouped, tensorstore, instance layout) on the dense volumes of
benchmarks/fetch_strategies.py through the loopback HTTP server, whose answers wait
``--latency-ms`` (a bucket's round trip), on the DirectRunner with ``--workers`` threads
(``multi_threading``), each in its own process, and the script prints both times, the ratio and
whether the two datasets hold the same bytes. A third run per latency uses the DirectRunner's
default (``in_memory``: one thread), the choice a user makes for a local run.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import dataset_bytes, dataset_files, run_pipeline  # noqa: E402
from benchmarks.flags import non_negative_float_list, positive_int, work_dir  # noqa: E402
from benchmarks.fetch_strategies import CROP, make_dense_data, numeric_row, write_table  # noqa: E402

ONE_AT_A_TIME = """
import threading
from synanno_datagen.transforms import readers
_lock, _read = threading.Lock(), readers.TensorstoreReader.read_zyx
def _one_at_a_time(self, box):
    with _lock:
        return _read(self, box)
readers.TensorstoreReader.read_zyx = _one_at_a_time
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=work_dir, default=os.path.join(tempfile.gettempdir(),
                                                       "synanno-benchmark"))
    parser.add_argument("--latency-ms", type=non_negative_float_list, default="0,20,100",
                        help="comma-separated answer delays of the HTTP server")
    parser.add_argument("--workers", type=positive_int, default=4)
    args = parser.parse_args()
    work = args.work
    data = make_dense_data(work / "cache")
    rows = [r for r in csv.DictReader(open(data.table_path)) if numeric_row(r)]
    table = work / "dense.csv"
    write_table(table, list(rows[0]), rows)
    from tests.chunk_server import ChunkServer

    print(f"machine: {os.cpu_count()} cores; DirectRunner multi_threading, {args.workers} "
          f"workers; {len(rows)} table rows, crop {' x '.join(CROP)} target voxels, 4 variants")
    with ChunkServer(Path(data.source_url[len("file://"):]).parent) as server:
        for latency in args.latency_ms:
            server.latency_s = latency / 1000
            times, outputs = {}, {}
            for name, prelude, mode in (
                    ("one at a time", ONE_AT_A_TIME, ["--direct_running_mode", "multi_threading",
                                                      "--direct_num_workers", args.workers]),
                    ("at once", "", ["--direct_running_mode", "multi_threading",
                                     "--direct_num_workers", args.workers]),
                    ("one thread", "", [])):
                out = work / f"out-reads-{name.replace(' ', '-')}"
                shutil.rmtree(out, ignore_errors=True)
                seconds, cpu, _, manifest = run_pipeline(
                    ["--materialization", table, "--source-url", server.url("source"),
                     "--target-url", server.url("target"), "--crop-size", *CROP,
                     "--variants", 4, "--formats", "tfrecord", "--shard-size-mb", 16,
                     "--runner", "DirectRunner", *mode], out, prelude)
                times[name] = seconds
                outputs[name] = dataset_files(out)
                print(f"latency {latency:4g} ms, reads {name:13s}: "
                      f"{manifest['counts']['instances_written']} instances in {seconds:5.1f} s "
                      f"({cpu:.1f} CPU s), {dataset_bytes(out) / 1e6:.0f} MB")
                shutil.rmtree(out, ignore_errors=True)
            same = outputs["one at a time"] == outputs["at once"] == outputs["one thread"]
            print(f"latency {latency:4g} ms: at once / one at a time "
                  f"{times['one at a time'] / times['at once']:.2f}x faster; {args.workers} "
                  f"threads / one thread {times['one thread'] / times['at once']:.2f}x faster; "
                  f"same bytes: {same}")
            if not same:
                raise SystemExit("the three runs wrote different datasets")


if __name__ == "__main__":
    main()
