"""Benchmark: ShardDataset readers that start inside a shard, seeking over the records before
their share versus reading through them, in one run.

    python benchmarks/shard_readers.py [DATASET_DIR] [--split train] [--readers 1,8,32]

DATASET_DIR defaults to ./synanno-demo-output (``./dev demo``; its splits are one shard each, the
worst case). For each reader count R the split is read as R ranks of one worker (the same
contiguous shares R DataLoader workers, or ranks x workers, take), one after another in this
process, and the summed seconds and the bytes the readers asked of their files are printed for
both ways of passing the records before a share, with their ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int_list  # noqa: E402 - needs ROOT on the path


def read_split(dataset_dir: str, split: str, readers: int):
    """(seconds, bytes read from the shards) for reading ``split`` as ``readers`` ranks."""
    from synanno_datagen import ShardDataset
    from synanno_datagen.reading import dataset as dataset_module

    opened = dataset_module.open_file
    counted = [0]

    class Counting:
        def __init__(self, stream):
            self._stream = stream

        def read(self, n=-1):
            out = self._stream.read(n)
            counted[0] += len(out)
            return out

        def __getattr__(self, name):
            return getattr(self._stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._stream.close()

    dataset_module.open_file = lambda path, gzip=False: Counting(opened(path, gzip))
    try:
        start = time.perf_counter()
        samples = sum(1 for rank in range(readers)
                      for _ in ShardDataset(dataset_dir, split, rank=rank, world_size=readers))
        return time.perf_counter() - start, counted[0], samples
    finally:
        dataset_module.open_file = opened


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset_dir", nargs="?", default="synanno-demo-output")
    parser.add_argument("--split", default="train")
    parser.add_argument("--readers", type=positive_int_list, default="1,8,32")
    args = parser.parse_args()
    from synanno_datagen import DatasetError, ShardDataset
    from synanno_datagen.reading import records

    try:   # torch, the dataset and split, before any work (`./dev demo` makes the default one)
        ShardDataset(args.dataset_dir, args.split)
    except (DatasetError, ImportError) as e:
        parser.error(str(e))

    seek = records.skip_serialized

    def read_through(stream, n):
        return sum(1 for _ in zip(range(n), records.iter_serialized(stream)))

    read_split(args.dataset_dir, args.split, 1)   # warm up: imports, the page cache
    for readers in args.readers:
        figures = {}
        for name, skip in (("seek", seek), ("read through", read_through)):
            records.skip_serialized = skip
            try:
                figures[name] = read_split(args.dataset_dir, args.split, readers)
            finally:
                records.skip_serialized = seek
        for name, (seconds, read, samples) in figures.items():
            print(f"{readers:3d} readers, {name:>12}: {samples} samples in {seconds:6.2f} s, "
                  f"{read / 2**20:8.1f} MiB read")
        (s_seek, b_seek, _), (s_through, b_through, _) = figures["seek"], figures["read through"]
        print(f"{readers:3d} readers: read through / seek = {s_through / s_seek:.2f}x time, "
              f"{b_through / max(b_seek, 1):.2f}x bytes")


if __name__ == "__main__":
    main()
