"""Benchmark: drawing every variant's seed slices, the law computed once per instance and each
index drawn by seeds.pick, against the earlier draw (the law recomputed for every draw, each
index drawn by ``rng.choice``, which checks ``p`` every time).

    python benchmarks/seed_draws.py [--instances 300] [--variants 4,16,64]

On masks like the demo's (16 slices, foreground on 4 to 16 of them), for each ``--variants`` it
prints the milliseconds per instance of both, their ratio, and whether every draw is the same
(it must be: the records may not change).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int, positive_int_list  # noqa: E402 - needs ROOT
from synanno_datagen.transforms import seeds  # noqa: E402 - needs ROOT on the path
from synanno_datagen.transforms.seeds import SeedModel, variant_seed_slices  # noqa: E402


def earlier_draw(foreground_z, depth, model, rng, law=None):
    """draw_seed_slices as it was: the law for every draw, ``rng.choice`` for every index."""
    candidates = np.asarray(foreground_z, dtype=np.int64)
    probs = model.count_probabilities(candidates.size)
    count = int(rng.choice(np.arange(1, probs.size + 1), p=probs))
    weights = model.position_weights(depth, candidates)
    chosen = []
    for _ in range(count):
        k = int(rng.choice(candidates.size, p=weights / weights.sum()))
        chosen.append(int(candidates[k]))
        weights = weights.copy()
        weights[k] = 0.0
    return tuple(sorted(chosen))


def masks(n: int, depth: int = 16):
    rng = np.random.default_rng(0)
    for _ in range(n):
        target = np.zeros((depth, 8, 8), np.uint8)
        first = int(rng.integers(0, depth // 2))
        target[first:first + int(rng.integers(4, depth - first + 1)), 2:5, 2:5] = 1
        yield target


def timed(targets, variants: int):
    """(seconds per instance, every instance's draws)."""
    start = time.perf_counter()
    draws = [variant_seed_slices(t, run_seed=0, instance_id=i, n_variants=variants,
                                 model=SeedModel()) for i, t in enumerate(targets)]
    return (time.perf_counter() - start) / len(targets), draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=positive_int, default=300)
    parser.add_argument("--variants", type=positive_int_list, default="4,16,64")
    args = parser.parse_args()
    targets = list(masks(args.instances))
    current = seeds.draw_seed_slices
    for variants in args.variants:
        now, drawn = timed(targets, variants)
        seeds.draw_seed_slices = earlier_draw
        try:
            before, drawn_before = timed(targets, variants)
        finally:
            seeds.draw_seed_slices = current
        print(f"{variants:3d} variants: {before * 1e3:6.2f} ms per instance before, "
              f"{now * 1e3:6.2f} ms now: {before / now:4.1f}x; same draws: "
              f"{drawn == drawn_before}")
        if drawn != drawn_before:
            raise SystemExit("the two ways drew different seed slices")


if __name__ == "__main__":
    main()
