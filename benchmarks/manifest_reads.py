"""Benchmark: what a ShardDataset costs its DataLoader workers on a whole-H01-sized manifest,
the way before (the whole manifest pickled for each worker; each worker parsing it again at each
epoch's start to compare) and now (the manifest without its file lists pickled; its bytes
hashed a MiB at a time to compare), in one run.

    python benchmarks/manifest_reads.py [--work DIR] [--shards 270000] [--repeats 3]

Builds (once, cached under ``--work``) a dataset whose manifest lists ``--shards`` TFRecord and
as many index shards over three splits, from the demo's manifest (``synanno-datagen demo``,
run once into ``--work``); the shards themselves are not written (the ShardDataset is made
without checking their sizes). About 270,000 shards of each kind is a whole-H01 run (4
variants at mip 1). For both ways it prints the median seconds of the epoch-start check and
the peak memory it allocates (tracemalloc), and the bytes a spawn-started worker unpickles and
the memory they hold, with the ratios. Both checks must pass on the unchanged manifest and
fail on one with a count changed.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import demo_dataset  # noqa: E402 - needs ROOT on the path
from benchmarks.flags import positive_int, work_dir  # noqa: E402

SPLITS = ("train", "val", "test")


def build(work: Path, shards: int) -> Path:
    """A dataset directory listing ``shards`` TFRecord and index shards (cached)."""
    out = work / f"listed-{shards}"
    if (out / "manifest.json").exists():
        return out
    demo = demo_dataset(work)
    manifest = json.loads((demo / "manifest.json").read_text())
    tfrecord, index = manifest["files"]["tfrecord"][0], manifest["files"]["index"][0]
    per_split = -(-shards // len(SPLITS))
    files = {"tfrecord": [], "index": []}
    for split in SPLITS:
        for shard in range(per_split):
            name = f"{split}-{shard:05d}-of-{per_split:05d}"
            for kind, proto, suffix in (("tfrecord", tfrecord, "tfrecord"),
                                        ("index", index, "jsonl")):
                files[kind].append(dict(proto, path=f"{kind}/{name}.{suffix}", split=split,
                                        shard=shard, num_shards=per_split,
                                        sha256=f"{hash((kind, name)) & (1 << 64) - 1:064x}"))
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        records = sum(f["records"] for f in files["tfrecord"] if f["split"] == split)
        manifest["splits"][split] = dict(manifest["splits"].get(split, {}), records=records,
                                         instances=records)
    manifest["files"].update(files)
    (out / "manifest.json.part").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(out / "manifest.json.part", out / "manifest.json")
    return out


def parse_and_compare(dataset) -> bool:
    """The check before: the manifest parsed again and compared with the one held."""
    with open(dataset.manifest_path, "rb") as f:
        return json.load(f) == dataset.manifest


def digest_and_compare(dataset) -> bool:
    """The check now (``Dataset.check_unchanged``, without its error)."""
    from synanno_datagen.reading.dataset import _sha256_of

    return _sha256_of(dataset.manifest_path) == dataset.manifest_sha256


def timed(check, dataset, repeats: int):
    """(median seconds, peak bytes allocated, result) of ``check(dataset)``; the peak from one
    more call under tracemalloc, which slows allocation-heavy code several times."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = check(dataset)
        seconds.append(time.perf_counter() - start)
    tracemalloc.start()
    check(dataset)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(seconds), peak, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=work_dir, default=os.path.join(tempfile.gettempdir(),
                                                                      "synanno-bench-manifest"))
    parser.add_argument("--shards", type=positive_int, default=270_000,
                        help="TFRecord shards listed (as many index shards)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args(argv)
    try:
        from synanno_datagen import ShardDataset
    except ImportError as e:
        parser.error(str(e))
    from synanno_datagen.reading.dataset import Dataset

    out = build(args.work, args.shards)
    size = (out / "manifest.json").stat().st_size
    Dataset.checked_files = lambda self, entries: entries   # (no shards written to check)
    start = time.perf_counter()
    data = ShardDataset(str(out), "train")
    print(f"manifest: {size / 1e6:.1f} MB listing {args.shards:,} TFRecord and index shards; "
          f"ShardDataset made in {time.perf_counter() - start:.2f} s")
    before = timed(parse_and_compare, data.dataset, args.repeats)
    now = timed(digest_and_compare, data.dataset, args.repeats)
    if not (before[2] and now[2]):
        raise SystemExit("a check failed on the unchanged manifest")
    print(f"epoch-start check, parse and compare: {before[0]:.2f} s, {before[1] / 1e6:.0f} MB "
          f"allocated at peak")
    print(f"epoch-start check, digest and compare: {now[0]:.2f} s, {now[1] / 1e6:.1f} MB")
    print(f"ratio (before / now): {before[0] / now[0]:.1f}x time, "
          f"{before[1] / max(now[1], 1):.0f}x memory")
    sent, held = [], []
    for name, state in (("whole manifest", data.__dict__), ("without listings", data)):
        blob = pickle.dumps(state)
        start = time.perf_counter()
        pickle.loads(blob)
        seconds = time.perf_counter() - start
        tracemalloc.start()
        copy = pickle.loads(blob)
        held.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        del copy
        sent.append(len(blob))
        print(f"pickled for a worker, {name}: {len(blob) / 1e6:.1f} MB, unpickled in "
              f"{seconds:.2f} s, held: {held[-1] / 1e6:.0f} MB")
    print(f"ratio (before / now): {sent[0] / sent[1]:.1f}x bytes, {held[0] / held[1]:.1f}x held")
    original = (out / "manifest.json").read_bytes()
    count = b'"records": %d' % data.shards[0]["records"]   # one shard's records, one more
    (out / "manifest.json").write_bytes(original.replace(
        count, b'"records": %d' % (data.shards[0]["records"] + 1), 1))
    try:
        if parse_and_compare(data.dataset) or digest_and_compare(data.dataset):
            raise SystemExit("a check passed on a changed manifest")
    finally:
        (out / "manifest.json").write_bytes(original)
    return 0


if __name__ == "__main__":
    sys.exit(main())
