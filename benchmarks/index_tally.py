"""Benchmark: ``inspect``'s tally of the index lines, the expected seed curves summed per line
(before) versus once per distinct foreground (now), in one run.

    python benchmarks/index_tally.py [DATASET_DIR] [--lines 200000] [--repeats 3]

DATASET_DIR defaults to ./synanno-demo-output (``./dev demo``). Its index lines are repeated up
to ``--lines`` lines of JSON text, which both ways parse and tally, in turn, in this process
(the median of ``--repeats``); the seconds per line and their ratio are printed. Both must
observe the same counts and expect the same curves (to 1e-9, relative: the sums are added in
another order).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int  # noqa: E402 - needs ROOT on the path


def per_line_tally(stats):
    """The tally as it was: the expected curves added up for every variant of every line."""
    from synanno_datagen.transforms.seeds import seed_inclusion_probabilities

    class PerLine(stats.IndexTally):
        def __init__(self, model, depth):
            super().__init__(model, depth)
            self.count_expected = np.zeros(self.m, np.float64)
            self.z_array = np.zeros(depth, np.int64)
            self.z_expected = np.zeros(depth, np.float64)
            self._inclusion = {}

        def add(self, entry):
            fg = tuple(stats._foreground_z(entry, self.depth))
            counts = self.model.count_probabilities(len(fg))
            if fg not in self._inclusion:
                self._inclusion[fg] = seed_inclusion_probabilities(self.model, self.depth, fg)
            for slices in entry["seed_slices"]:
                self.count_observed[len(slices) - 1] += 1
                self.count_expected[: counts.size] += counts
                self.z_array[list(slices)] += 1
                self.z_expected += self._inclusion[fg]
            self.foreground.append(int(entry["foreground_voxels"]))
            repeats = len(entry["seed_slices"]) - len({tuple(s) for s in entry["seed_slices"]})
            if repeats:
                self.repeats["variants"] += repeats
                self.repeats["instances"] += 1
            self.instances += 1
            self.variants += len(entry["seed_slices"])
            self.by_split[entry["split"]] = self.by_split.get(entry["split"], 0) + 1

        def seed_count(self):
            return {"observed": self.count_observed,
                    "expected": [float(v) for v in self.count_expected]}

        def seed_z(self):
            return {"observed": [int(v) for v in self.z_array],
                    "expected": [float(v) for v in self.z_expected]}

    return PerLine


def tally(kind, lines, model, depth):
    """(seconds, seed_count, seed_z) of parsing and tallying ``lines``."""
    start = time.perf_counter()
    counted = kind(model, depth)
    for line in lines:
        counted.add(json.loads(line))
    count, z = counted.seed_count(), counted.seed_z()
    return time.perf_counter() - start, count, z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", nargs="?", default="synanno-demo-output")
    parser.add_argument("--lines", type=positive_int, default=200_000)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    from synanno_datagen import DatasetError, open_dataset
    from synanno_datagen.reading import stats
    from synanno_datagen.transforms.seeds import SeedModel

    try:
        dataset = open_dataset(args.dataset_dir)
        index = [json.dumps(line) for line in dataset.iter_index()]
    except DatasetError as e:
        parser.error(str(e))
    if not index:
        parser.error(f"{args.dataset_dir}: its index has no lines to tally")
    lines = [index[i % len(index)] for i in range(args.lines)]
    model = SeedModel.from_manifest(dataset.manifest["seed_model"])
    depth = stats.depth_of(dataset.manifest)
    ways = {"per line": per_line_tally(stats), "per foreground": stats.IndexTally}
    seconds = {name: [] for name in ways}
    results = {}
    for _ in range(args.repeats):
        for name, kind in ways.items():
            took, count, z = tally(kind, lines, model, depth)
            seconds[name].append(took)
            results[name] = (count, z)
    (count_a, z_a), (count_b, z_b) = results.values()
    if count_a["observed"] != count_b["observed"] or z_a["observed"] != z_b["observed"] or \
            not (np.allclose(count_a["expected"], count_b["expected"], rtol=1e-9, atol=0)
                 and np.allclose(z_a["expected"], z_b["expected"], rtol=1e-9, atol=0)):
        raise SystemExit("the two tallies disagree")
    median = {name: statistics.median(s) for name, s in seconds.items()}
    for name, took in median.items():
        print(f"{name}: {took / len(lines) * 1e6:.1f} us per line ({len(lines):,} lines "
              f"parsed and tallied in {took:.2f} s)")
    print(f"per line / per foreground: {median['per line'] / median['per foreground']:.2f}x")


if __name__ == "__main__":
    main()
