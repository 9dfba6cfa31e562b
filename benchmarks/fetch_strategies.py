"""Benchmark: grouped vs per-instance fetching, end to end, on the same data in one run.

    python benchmarks/fetch_strategies.py [--work DIR] [--variants K]

Builds (once, cached under --work) a dense H01-like volume pair with the demo generator (jpeg raw
at 4x4x33 nm, compressed_segmentation labels at 8x8x33 nm, about 1,200 synapses whose crops
overlap), then for a dense table (every synapse) and a sparse table (synapses whose crops share no
chunk) runs the whole pipeline (fetch, clean, variants, encode, write TFRecords, manifest) once
per strategy, each in its own process on the DirectRunner, and prints instances/s, the ratio,
decodes per distinct chunk and each run's peak RSS. It also prints the fetch floor (every chunk of
both volumes decoded once, nothing else) and how one instance's time splits between fetching,
cleaning, variants, encoding and writing.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DENSE_SIZE_XYZ = (768, 768, 48)   # target voxels; the demo generator scales synapses with size
CROP = ("64", "64", "16")


def run_strategy(strategy, table, data, out, variants):
    """One pipeline run in a child process: (seconds, peak RSS in MB, manifest)."""
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--materialization", str(table),
            "--source-url", data.source_url, "--target-url", data.target_url,
            "--output-dir", str(out), "--crop-size", *CROP, "--variants", str(variants),
            "--formats", "tfrecord", "--fetch-strategy", strategy]
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{strategy} run failed: {child.stderr.read().decode()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return seconds, usage.ru_maxrss / 1024, manifest


def sparse_rows(rows, chunk_xyz=(64, 64, 16)):
    """Rows whose crops (64x64x16 target voxels) share no chunk with an earlier pick's."""
    picked = []
    for row in rows:
        c = [int(float(row[k])) for k in "xyz"]
        if all(any(abs(a - b) >= ch + s for a, b, ch, s in
                   zip(c, p, chunk_xyz, (64, 64, 16))) for p in picked):
            picked.append(c)
            yield row


def _numeric(row) -> bool:
    try:
        return all(float(row[k]) == float(row[k]) for k in "xyz")
    except ValueError:
        return False


def write_table(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def fetch_floor(data):
    """Seconds to decode every chunk of both volumes once (mip 0), nothing else."""
    from cloudvolume import CloudVolume

    start = time.perf_counter()
    for url in (data.source_url, data.target_url):
        cv = CloudVolume(url, progress=False, parallel=1)
        cv[cv.bounds]
    return time.perf_counter() - start


def stage_split(data, rows, variants, n=150):
    """Seconds per instance in each stage, in process, on the first n rows (no Beam)."""
    import numpy as np
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from pipeline.config import parse
    from pipeline.build import fetch_config
    from transforms.clean import keep_center_component
    from transforms.examples import encode_example
    from transforms.fetch import fetch_subvolume
    from transforms.records import Instance, RowRef
    from transforms.seeds import seed_mask, variant_seed_slices
    from transforms.volumes import open_volume

    tmp = Path(tempfile.mkdtemp())
    config, _ = parse(["--materialization", str(data.table_path), "--source-url",
                       data.source_url, "--target-url", data.target_url, "--output-dir",
                       str(tmp / "x"), "--crop-size", *CROP, "--variants", str(variants)])
    fc = fetch_config(config)
    src, tgt = open_volume(data.source_url), open_volume(data.target_url)
    times = dict.fromkeys(["fetch", "clean", "variants", "encode", "write"], 0.0)
    done = 0
    for i, row in enumerate(rows[:n]):
        c = tuple(int(float(row[k])) for k in "xyz")
        inst = Instance(int(row["id"]), c, c, c, RowRef(0, i), split="train", shard=0)
        t0 = time.perf_counter()
        sub = fetch_subvolume(inst, src, tgt, fc)
        t1 = time.perf_counter()
        sub.target_zyx = keep_center_component(sub.labels_zyx, (33, 4, 4))
        t2 = time.perf_counter()
        if sub.target_zyx is None:
            continue
        sub.seed_slices = variant_seed_slices(sub.target_zyx, run_seed=0,
                                              instance_id=inst.instance_id,
                                              n_variants=variants, model=config.seed_model)
        seeds = [seed_mask(sub.target_zyx, s) for s in sub.seed_slices]
        t3 = time.perf_counter()
        buffer = io.BytesIO()
        for v, seed in enumerate(seeds):
            _TFRecordUtil.write_record(buffer, encode_example(sub, v, seed))
        t4 = time.perf_counter()
        (tmp / f"{i}.tfrecord").write_bytes(buffer.getvalue())
        t5 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key] += dt
        done += 1
    shutil.rmtree(tmp, ignore_errors=True)
    del np
    return {k: v / max(done, 1) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(),
                                                       "synanno-benchmark"))
    parser.add_argument("--variants", type=int, default=2)
    args = parser.parse_args()
    from pipeline.demo_data import make_demo_data

    work = Path(args.work)
    data = make_demo_data(str(work / "cache"), size_xyz=DENSE_SIZE_XYZ)
    rows = list(csv.DictReader(open(data.table_path)))
    header = list(rows[0])
    good = [r for r in rows if _numeric(r)]
    tables = {"dense": good, "sparse": list(sparse_rows(good))}
    print(f"machine: {os.cpu_count()} cores; DirectRunner; crop {' x '.join(CROP)} target voxels "
          f"(source arrays 128x128x16), {args.variants} variants, TFRecord only")
    for name, table_rows in tables.items():
        table = work / f"{name}.csv"
        write_table(table, header, table_rows)
        results = {}
        for strategy in ("per-instance", "grouped"):
            out = work / f"out-{name}-{strategy}"
            shutil.rmtree(out, ignore_errors=True)
            seconds, rss, manifest = run_strategy(strategy, table, data, out, args.variants)
            selected = manifest["counts"]["instances_selected"]
            src = manifest["run"]["io"]["source"]
            results[strategy] = selected / seconds
            print(f"{name:6s} {strategy:12s}: {selected} instances in {seconds:6.1f} s = "
                  f"{selected / seconds:6.1f} instances/s; source decodes per distinct chunk "
                  f"{src['decodes_per_distinct_chunk']}; peak RSS {rss:.0f} MB")
            shutil.rmtree(out, ignore_errors=True)
        print(f"{name:6s} grouped / per-instance: "
              f"{results['grouped'] / results['per-instance']:.2f}x")
    floor = fetch_floor(data)
    print(f"fetch floor: every chunk of both volumes decoded once in {floor:.2f} s "
          f"({len(good) / floor:.0f} instances/s if fetching were all there is)")
    split = stage_split(data, good, args.variants)
    total = sum(split.values())
    print("one instance, in process (per-instance fetch): " + ", ".join(
        f"{k} {1000 * v:.1f} ms ({100 * v / total:.0f}%)" for k, v in split.items()))


if __name__ == "__main__":
    main()
