"""Benchmark: deleting a folder of objects on GCS one request after another (as a run's end
did before) against ``files.delete_tree`` (DELETE_THREADS requests at once), in one run.

    python benchmarks/gcs_deletes.py [--objects N] [--latency-ms MS]

Against the GCS emulator the tests use (fake-gcs-server on loopback), behind the delaying
proxy of ``finalize_shards.py`` that answers every request ``--latency-ms`` late, like a
bucket's round trip, it uploads N small objects under two prefixes, as a run's ``_tmp`` holds
an index fragment per shard group, deletes one prefix each way and prints both times and their
ratio. Both must leave nothing under their prefix. A run of a million instances leaves about
2,000 such objects, a whole-H01 run about 270,000, and ``--overwrite`` of a dataset deletes two
per shard.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.finalize_shards import DelayingProxy  # noqa: E402 - needs ROOT on the path
from benchmarks.flags import non_negative_float, positive_int  # noqa: E402


def one_after_another(prefix: str) -> None:
    """The deletion before: every object listed, then deleted one request at a time."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.gcp.gcsio import GcsIO

    gcs = GcsIO()
    for found in FileSystems.match([prefix, prefix + "/**"]):
        for meta in found.metadata_list:
            gcs.delete(meta.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=positive_int, default=500)
    parser.add_argument("--latency-ms", type=non_negative_float, default=30.0,
                        help="delay every request this long (a bucket's round trip)")
    args = parser.parse_args()

    from synanno_datagen.transforms.files import DELETE_THREADS, delete_tree
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    timings = {}
    try:
        bucket = emulator.client().bucket(emulator.create_bucket("bench").partition("://")[2])
        for name in ("before", "now"):
            for k in range(args.objects):
                bucket.blob(f"{name}/_tmp/train-group{k:06d}.jsonl").upload_from_string(b"{}\n")
        proxy = DelayingProxy(emulator.endpoint, args.latency_ms / 1000)
        try:
            for name, delete in (("before", one_after_another), ("now", delete_tree)):
                start = time.perf_counter()
                delete(f"gs://bench/{name}/_tmp")
                timings[name] = time.perf_counter() - start
        finally:
            proxy.close()
        for name in timings:
            assert not emulator.objects("bench", name), f"{name}: objects left"
    finally:
        emulator.close()
    print(f"{args.objects} objects on the GCS emulator, {args.latency_ms:g} ms per request: one "
          f"after another {timings['before']:.1f} s; {DELETE_THREADS} at once "
          f"{timings['now']:.1f} s; ratio {timings['before'] / timings['now']:.1f}x")


if __name__ == "__main__":
    main()
