"""Benchmark: turning a sample's uint8 arrays into the loaders' float32 tensors, with
temporaries and ``np.stack`` (before) versus written straight into the outputs (now), in one run.

    python benchmarks/sample_conversion.py [--shape Z Y X] [--samples 400]

Both ways are checked to give the same bits; the seconds of each and their ratio are printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int  # noqa: E402 - needs ROOT on the path


def stacked(source, seed, target):
    """The conversion as it was: float32 copies, then a stacked copy."""
    inputs = np.stack([source.astype(np.float32) / np.float32(255), seed.astype(np.float32)])
    return inputs, target.astype(np.float32)[None]


def seconds(convert, samples) -> float:
    start = time.perf_counter()
    for source, seed, target in samples:
        convert(source, seed, target)
    return time.perf_counter() - start


def main() -> None:
    from synanno_datagen.reading.loaders import input_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=positive_int, nargs=3, default=(16, 128, 128),
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--samples", type=positive_int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, args.shape, np.uint8),
                rng.integers(0, 2, args.shape, np.uint8),
                rng.integers(0, 2, args.shape, np.uint8)) for _ in range(8)]
    for a, b in zip(stacked(*samples[0]), input_target(*samples[0])):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    work = [samples[i % len(samples)] for i in range(args.samples)]
    seconds(input_target, work[:20])   # warm up
    before, now = seconds(stacked, work), seconds(input_target, work)
    per = 1e3 / args.samples
    print(f"{args.samples} samples of {tuple(args.shape)}: np.stack of copies {before * per:.2f} "
          f"ms/sample, into the outputs {now * per:.2f} ms/sample: {before / now:.2f}x")


if __name__ == "__main__":
    main()
