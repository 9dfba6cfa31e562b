"""Benchmark: NpyDataset items read in order and shuffled, keeping the last item's source and
target arrays for its instance's next item versus reading every item's three files, in one run.

    python benchmarks/npy_reads.py [DATASET_DIR] [--split train] [--repeats 3]

DATASET_DIR defaults to ./synanno-demo-output (``./dev demo``: 4 variants per instance, each
item's three files of 16x128x128 uint8). Each order (index order, as ``shuffle=False`` reads it,
and a seeded permutation, as ``shuffle=True`` does) is read once per repeat by both ways, in
turn, in this process; the median seconds, the files opened and the bytes read are printed for
both, with their ratio. Both ways must give the same tensors.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int  # noqa: E402 - needs ROOT on the path


def read_items(dataset, order, keep: bool):
    """(seconds, files opened, bytes read) for reading the items of ``order``; ``keep=False``:
    as before, every item reads its three files."""
    from synanno_datagen.reading import dataset as dataset_module

    opened = dataset_module.open_file
    counted = {"files": 0, "bytes": 0}

    class Counting:
        def __init__(self, stream):
            self._stream = stream
            counted["files"] += 1

        def read(self, n=-1):
            out = self._stream.read(n)
            counted["bytes"] += len(out)
            return out

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._stream.close()

    dataset_module.open_file = lambda path, gzip=False: Counting(opened(path, gzip))
    dataset._last_instance = None
    try:
        start = time.perf_counter()
        for i in order:
            if not keep:
                dataset._last_instance = None
            dataset[int(i)]
        return time.perf_counter() - start, counted["files"], counted["bytes"]
    finally:
        dataset_module.open_file = opened


def same_tensors(dataset, order) -> bool:
    """Whether both ways give the same tensors for the items of ``order`` (untimed)."""
    import torch

    dataset._last_instance = None
    kept = [dataset[int(i)] for i in order]
    for i, pair in zip(order, kept):
        dataset._last_instance = None
        if not all(torch.equal(a, b) for a, b in zip(pair, dataset[int(i)])):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset_dir", nargs="?", default="synanno-demo-output")
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    import numpy as np

    from synanno_datagen import DatasetError, NpyDataset

    try:   # torch, the dataset and split, before any work (`./dev demo` makes the default one)
        dataset = NpyDataset(args.dataset_dir, args.split)
    except (DatasetError, ImportError) as e:
        parser.error(str(e))
    orders = {"in order": np.arange(len(dataset)),
              "shuffled": np.random.default_rng(0).permutation(len(dataset))}
    read_items(dataset, orders["in order"][:50], keep=False)   # warm up: the page cache
    for name, order in orders.items():
        figures = {"keep": [], "read all": []}
        for _ in range(args.repeats):
            for way in figures:
                figures[way].append(read_items(dataset, order, keep=way == "keep"))
        (_, f_keep, b_keep), (_, f_all, b_all) = figures["keep"][0], figures["read all"][0]
        assert same_tensors(dataset, order[:200]), "both ways must give the same tensors"
        seconds = {way: statistics.median(f[0] for f in runs) for way, runs in figures.items()}
        for way, (files, read) in (("keep", (f_keep, b_keep)), ("read all", (f_all, b_all))):
            print(f"{name:>8}, {way:>8}: {len(order)} items in {seconds[way]:6.2f} s "
                  f"({seconds[way] / len(order) * 1e3:.2f} ms each), {files} files opened, "
                  f"{read / 2**20:7.1f} MiB read")
        print(f"{name:>8}: read all / keep = {seconds['read all'] / seconds['keep']:.2f}x time, "
              f"{f_all / max(f_keep, 1):.2f}x files, {b_all / max(b_keep, 1):.2f}x bytes")


if __name__ == "__main__":
    main()
