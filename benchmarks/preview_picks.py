"""Benchmark: how ``preview`` picks its records, every index line read and the picks drawn
over them sorted by id (before) versus places among the instances the manifest counts, only
the chosen lines' shards read (now), in one run.

    python benchmarks/preview_picks.py [--work DIR] [--shards 400] [--lines 500] [--n 8]

Builds (once, cached under ``--work``) a dataset whose manifest lists ``--shards`` index shards
of ``--lines`` lines each (the demo's lines under new ids; ``synanno-datagen demo`` is run
once into ``--work``; no records), then picks ``--n`` records both ways, in this process, and
prints the seconds, the peak memory allocated (tracemalloc, in a second pick) and the index
shards read. Both must pick ``--n`` distinct instances of the dataset.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import demo_dataset  # noqa: E402 - needs ROOT on the path
from benchmarks.flags import positive_int, work_dir  # noqa: E402


def build(work: Path, shards: int, lines: int) -> Path:
    """A dataset directory of ``shards`` index shards of ``lines`` lines (cached)."""
    out = work / f"index-{shards}x{lines}"
    if (out / "manifest.json").exists():
        return out
    demo = demo_dataset(work)
    manifest = json.loads((demo / "manifest.json").read_text())
    demo_lines = [json.loads(line) for f in manifest["files"]["index"]
                  for line in (demo / f["path"]).read_text().splitlines()]
    (out / "index").mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in range(shards):
        path = f"index/train-{shard:05d}-of-{shards:05d}.jsonl"
        data = "".join(json.dumps(dict(demo_lines[(shard * lines + k) % len(demo_lines)],
                                       instance_id=shard * lines + k, split="train",
                                       shard=shard)) + "\n" for k in range(lines)).encode()
        (out / path).write_bytes(data)
        entries.append({"path": path, "split": "train", "shard": shard, "num_shards": shards,
                        "records": lines, "instances": lines, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    manifest["files"]["index"] = entries
    manifest["files"]["tfrecord"] = [dict(e, path=e["path"].replace("index/", "tfrecord/")
                                          .replace(".jsonl", ".tfrecord")) for e in entries]
    manifest["splits"] = {"train": {**manifest["splits"]["train"], "records": shards * lines,
                                    "instances": shards * lines, "shards": shards}}
    (out / "manifest.json.part").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(out / "manifest.json.part", out / "manifest.json")
    return out


def picks_over_every_line(dataset, n: int, seed: int, lines_of):
    """The picks as they were: every index line read, a few numbers held per line, the
    places drawn over the lines sorted by instance id."""
    files = dataset.files("index")
    candidates = []   # (instance id, shard number, line, variants)
    for number, f in enumerate(files):
        for line, entry in enumerate(lines_of(f)):
            candidates.append((entry["instance_id"], number, line, len(entry["seed_slices"])))
    candidates.sort(key=lambda c: c[0])
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False))
    return [(candidates[k][0], int(rng.integers(candidates[k][3]))) for k in picks]


def measured(pick):
    """(seconds, peak bytes allocated, shards read, picks) of ``pick(lines_of)``; the peak from
    a second call under tracemalloc, which slows allocation-heavy code several times."""
    read = []
    start = time.perf_counter()
    picks = pick(lambda f: read.append(f) or pick.dataset.index_lines(f))
    seconds = time.perf_counter() - start
    tracemalloc.start()
    pick(pick.dataset.index_lines)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, len(read), picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=work_dir, default=os.path.join(tempfile.gettempdir(),
                                                                      "synanno-bench-preview"))
    parser.add_argument("--shards", type=positive_int, default=400)
    parser.add_argument("--lines", type=positive_int, default=500)
    parser.add_argument("--n", type=positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from synanno_datagen import open_dataset
    from synanno_datagen.reading.preview import select_records

    dataset = open_dataset(str(build(args.work, args.shards, args.lines)))

    def before(lines_of):
        return picks_over_every_line(dataset, args.n, args.seed, lines_of)

    def now(lines_of):
        return [(c["instance_id"], c["variant"]) for c in select_records(
            dataset.files("index"), args.n, args.seed, lines_of=lines_of)]

    before.dataset = now.dataset = dataset
    instances = args.shards * args.lines
    figures = {}
    for name, pick in (("every line, sorted by id", before), ("counted places", now)):
        seconds, peak, read, picks = figures[name] = measured(pick)
        if len({i for i, _ in picks}) != min(args.n, instances) or \
                not all(0 <= i < instances for i, _ in picks):
            raise SystemExit(f"{name}: picked {picks}, not {args.n} instances of the dataset")
        print(f"{name}: {seconds:.2f} s, {peak / 1e6:.1f} MB allocated at peak, "
              f"{read} of {args.shards} index shards read")
    (a, b) = figures.values()
    print(f"{instances:,} instances: before / now {a[0] / b[0]:.0f}x time, "
          f"{a[1] / b[1]:.0f}x memory")


if __name__ == "__main__":
    main()
