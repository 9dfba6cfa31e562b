"""Benchmark: record layouts and fetch strategies, end to end, on the same data in one run.

    python benchmarks/fetch_strategies.py [--work DIR] [--variants K] [--storage file,http]
                                          [--layouts instance,variant] [--sparse-repeats N]
                                          [--big-table-rows N] [--volume-reader ENGINE]
                                          [--latency-ms MS] [--stage-split | --no-stage-split]

For every storage, layout and strategy it prints instances/s, CPU seconds, bytes per instance,
the write amplification (bytes the run passed to write(), over the dataset's bytes), the run's
time over the fetch floor, and the ratios of the layouts' bytes and of the strategies' speed.

Builds (once, cached under --work, in a child process) a dense H01-like volume pair with the demo
generator (sharded jpeg raw at 4x4x33 nm, compressed_segmentation labels at 8x8x33 nm without
all-zero chunks, both in 128x128x32 chunks, about 1,200 synapses whose crops overlap). For a dense
table (every synapse) and a sparse table (synapses whose crops share no chunk), read from local
files and through a loopback HTTP server (one request per chunk or byte range, like a bucket; ``--latency-ms`` delays every answer by a
bucket's round trip), it
runs the whole pipeline (fetch, clean, variants, encode, write TFRecords, manifest) with its
default reader (tensorstore) once per strategy, each in its own process on the DirectRunner, and
prints instances/s, CPU seconds, the ratios, chunk loads per distinct chunk (the manifest's
``run.io``) and each run's peak RSS; on the dense table also the start-up (a one-row run), the
ratio of the runs' time beyond it, and the ceiling no change to the grouped side can pass (the
per-instance run over start-up plus the fetch floor). Then a grouped run picking 1,000 instances out of a
1,000,000-row table (peak RSS), the fetch floor (every chunk of both volumes read and decoded
once by tensorstore, nothing else) and how one instance's time splits between fetching,
cleaning, variants, encoding and writing.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import make_data, run_pipeline  # noqa: E402 - needs ROOT on the path
from benchmarks.flags import (  # noqa: E402
    non_negative_float, non_negative_int, positive_int, work_dir,
)

DENSE_SIZE_XYZ = (768, 768, 48)   # target voxels; the demo generator scales synapses with size
CHUNK_XYZ = (128, 128, 32)        # H01-like storage chunks, both volumes
CROP = ("64", "64", "16")         # target voxels: 128x128x16 at the 4 nm source


def run_strategy(strategy, table, data, out, variants, extra=(), layout="instance",
                 reader="tensorstore"):
    """One pipeline run in a child process: (seconds, CPU seconds, peak RSS in MB, manifest)."""
    return run_pipeline(["--materialization", table, "--source-url", data.source_url,
                         "--target-url", data.target_url, "--crop-size", *CROP,
                         "--variants", variants, "--formats", "tfrecord",
                         "--fetch-strategy", strategy, "--record-layout", layout,
                         "--volume-reader", reader, *extra], out)


def make_dense_data(cache):
    """The dense volumes, made (or reused) in a child process, so that this process stays small
    for the runs' RSS figures to be theirs."""
    return make_data(cache, size_xyz=DENSE_SIZE_XYZ, source_chunk_xyz=CHUNK_XYZ,
                     target_chunk_xyz=CHUNK_XYZ)


def sparse_rows(rows, chunk_xyz=CHUNK_XYZ):
    """Rows whose crops (64x64x16 target voxels) share no chunk with an earlier pick's."""
    picked = []
    for row in rows:
        c = [int(float(row[k])) for k in "xyz"]
        if all(any(abs(a - b) >= ch + s for a, b, ch, s in
                   zip(c, p, chunk_xyz, (64, 64, 16))) for p in picked):
            picked.append(c)
            yield row


def numeric_row(row) -> bool:
    """Whether a table row's x, y and z are numbers (not the demo table's bad rows)."""
    try:
        return all(float(row[k]) == float(row[k]) for k in "xyz")
    except ValueError:
        return False


def write_table(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def fetch_floor(data, repeats=3):
    """Seconds to read and decode every chunk of both volumes once (mip 0) with tensorstore,
    the pipeline's engine, nothing else (median of ``repeats``, each with new readers)."""
    from synanno_datagen.transforms.blocks import read_region
    from synanno_datagen.transforms.readers import TENSORSTORE, describe_volume, open_reader

    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for url in (data.source_url, data.target_url):
            spec = describe_volume(url, 0)
            read_region(open_reader(url, 0, TENSORSTORE), spec, spec.bounds)
        runs.append(time.perf_counter() - start)
    return sorted(runs)[len(runs) // 2]


def stage_split(data, rows, variants, n=150, layout="instance"):
    """Seconds per instance in each stage, in process, on the first n rows (no Beam); fetching
    reads both crops as per-instance fetching does (one read per volume, no chunk cache);
    encoding makes the records of ``layout`` as the writer does; writing appends them to one
    file, as a shard group's worker does."""
    from synanno_datagen.pipeline.config import parse
    from synanno_datagen.pipeline.build import fetch_config
    from synanno_datagen.transforms.blocks import padded_crop
    from synanno_datagen.transforms.clean import keep_center_component
    from synanno_datagen.transforms.fetch import make_fetched
    from synanno_datagen.transforms.geometry import crop_box, scale_box
    from synanno_datagen.transforms.readers import open_reader
    from synanno_datagen.transforms.records import Instance, RowRef, Varied
    from synanno_datagen.transforms.seeds import variant_seed_slices
    from synanno_datagen.transforms.write import tfrecord_bytes

    tmp = Path(tempfile.mkdtemp())
    config, _ = parse(["--materialization", str(data.table_path), "--source-url",
                       data.source_url, "--target-url", data.target_url, "--output-dir",
                       str(tmp / "x"), "--crop-size", *CROP, "--variants", str(variants)])
    fc = fetch_config(config)
    src = open_reader(fc.source.url, fc.source.mip, fc.engine)
    tgt = open_reader(fc.target.url, fc.target.mip, fc.engine)
    source_missing, target_missing = fc.missing_chunks
    times = dict.fromkeys(["fetch", "clean", "variants", "encode", "write"], 0.0)
    done = 0
    shard = open(tmp / "shard.tfrecord", "wb")
    for i, row in enumerate(rows[:n]):
        c = tuple(int(float(row[k])) for k in "xyz")
        inst = Instance(int(row["id"]), c, c, c, RowRef(0, i), split="train", group=0)
        target_box = crop_box(c, fc.crop_size_xyz)
        source_box = scale_box(target_box, fc.scale_xyz)
        t0 = time.perf_counter()
        fetched = make_fetched(
            inst, target_box, source_box,
            padded_crop(src, fc.source, source_box, fc.pad_value, source_missing),
            padded_crop(tgt, fc.target, target_box, 0, target_missing), fc)
        t1 = time.perf_counter()
        mask = keep_center_component(fetched.labels_zyx, (33, 4, 4), fc.scale_xyz[::-1])
        t2 = time.perf_counter()
        if mask is None:
            continue
        slices = variant_seed_slices(mask, run_seed=0, instance_id=inst.instance_id,
                                     n_variants=variants, model=config.seed_model)
        varied = Varied(**fetched.crop_fields(), target_zyx=mask, seed_slices=tuple(slices))
        t3 = time.perf_counter()
        data_bytes, _ = tfrecord_bytes(varied, layout)
        t4 = time.perf_counter()
        shard.write(data_bytes)
        t5 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key] += dt
        done += 1
    shard.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {k: v / max(done, 1) for k, v in times.items()}


def startup_seconds(table, urls, work, variants, reader, repeats=3):
    """Median seconds of a grouped run of a one-row table: what every run pays before and
    besides its instances (starting Python, importing Beam, building and translating the graph,
    probes, the manifest)."""
    out = work / "out-startup"
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run_strategy("grouped", table, urls, out, variants, reader=reader)[0])
    shutil.rmtree(out, ignore_errors=True)
    return sorted(runs)[len(runs) // 2]


def bounds(per_instance, grouped, startup, floor):
    """(ratio of the runs' time beyond start-up, the highest end-to-end ratio any change to the
    grouped side could reach): a grouped run cannot take less than start-up plus the fetch floor,
    and a change to the work both strategies share (cleaning, variants, encoding, writing) takes
    time off the per-instance run as well."""
    beyond = (per_instance - startup) / max(grouped - startup, 1e-9)
    return beyond, per_instance / (startup + floor)


def scenario(name, storage, table, urls, args, work, repeats, floor, layout, startup=None):
    """Both strategies on one table and layout; a line per strategy and the ratio (and, given
    the start-up seconds, the ratio beyond start-up and the ceiling); returns
    {strategy: (instances/s, manifest)}."""
    results = {}
    for strategy in ("per-instance", "grouped"):
        runs = []
        for _ in range(repeats):
            out = work / f"out-{name}-{strategy}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_strategy(strategy, table, urls, out, args.variants, layout=layout,
                                     reader=args.volume_reader))
            shutil.rmtree(out, ignore_errors=True)
        seconds, cpu, rss, manifest = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # median
        written = manifest["counts"]["instances_written"]
        io_figures, bench = manifest["run"]["io"], manifest["benchmark"]
        results[strategy] = (written / seconds, written / cpu, manifest, seconds)
        per_chunk = "decodes" if args.volume_reader == "cloudvolume" else "loads"
        print(f"{name:6s} {storage:4s} {layout:8s} {strategy:12s}: {written} instances in "
              f"{seconds:6.1f} s = {written / seconds:6.1f}/s ({cpu:.1f} CPU s); "
              f"{bench['dataset_bytes'] / max(written, 1) / 1e6:.2f} MB/instance, written "
              f"{bench['bytes_written'] / bench['dataset_bytes']:.2f}x the dataset, "
              f"{seconds / floor:.1f}x the fetch floor; {per_chunk} per distinct chunk: source "
              f"{io_figures['source'].get(per_chunk + '_per_distinct_chunk')}, target "
              f"{io_figures['target'].get(per_chunk + '_per_distinct_chunk')}; "
              f"peak RSS {rss:.0f} MB"
              + (f" (median of {repeats})" if repeats > 1 else ""))
    ratio = results["grouped"][0] / results["per-instance"][0]
    cpu_ratio = results["grouped"][1] / results["per-instance"][1]
    print(f"{name:6s} {storage:4s} {layout:8s} grouped / per-instance: {ratio:.2f}x instances/s "
          f"({cpu_ratio:.2f}x per CPU second)")
    if startup is not None:
        beyond, ceiling = bounds(results["per-instance"][3], results["grouped"][3], startup, floor)
        print(f"{name:6s} {storage:4s} {layout:8s} beyond the {startup:.1f} s start-up: "
              f"{beyond:.2f}x; ceiling for any grouped-side change (per-instance run / "
              f"(start-up + fetch floor)): {ceiling:.2f}x")
    return results


def big_table(data, urls, work, n_rows, n_instances, variants):
    """Peak RSS and seconds of a grouped run picking ``n_instances`` of an ``n_rows`` table."""
    import random

    rows = [r for r in csv.DictReader(open(data.table_path)) if numeric_row(r)]
    header = list(rows[0])
    table = work / f"table-{n_rows}.csv"
    if not table.exists():
        rng = random.Random(0)
        with open(str(table) + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            for i in range(n_rows):
                row = dict(rows[rng.randrange(len(rows))])
                row["id"] = str(10**7 + i)
                writer.writerow(row)
        os.rename(str(table) + ".tmp", table)
    out = work / "out-big-table"
    shutil.rmtree(out, ignore_errors=True)
    seconds, _, rss, manifest = run_strategy("grouped", table, urls, out, variants,
                                          ["--num-instances", str(n_instances)])
    shutil.rmtree(out, ignore_errors=True)
    print(f"table of {n_rows:,} rows, --num-instances {n_instances}: "
          f"{manifest['counts']['instances_written']} written in {seconds:.1f} s, "
          f"peak RSS {rss:.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=work_dir, default=os.path.join(tempfile.gettempdir(),
                                                       "synanno-benchmark"))
    parser.add_argument("--variants", type=positive_int, default=4)
    parser.add_argument("--layouts", default="instance,variant",
                        help="comma-separated record layouts to run (instance, variant)")
    parser.add_argument("--storage", default="file,http",
                        help="comma-separated: file (local files), http (a loopback server)")
    parser.add_argument("--sparse-repeats", type=positive_int, default=3)
    parser.add_argument("--volume-reader", default="tensorstore",
                        choices=("tensorstore", "cloudvolume"),
                        help="the runs' --volume-reader (the fetch floor is tensorstore's)")
    parser.add_argument("--latency-ms", type=non_negative_float, default=0.0,
                        help="delay every answer of the loopback HTTP server (a bucket's round "
                             "trip; local files are not delayed)")
    parser.add_argument("--stage-split", action=argparse.BooleanOptionalAction, default=True,
                        help="end with how one instance's time splits between stages")
    parser.add_argument("--big-table-rows", type=non_negative_int, default=1_000_000,
                        help="rows of the big-table scenario (0 skips it)")
    args = parser.parse_args()
    for flag, given, allowed in (("--layouts", args.layouts, ("instance", "variant")),
                                 ("--storage", args.storage, ("file", "http"))):
        unknown = [v for v in given.split(",") if v not in allowed]
        if unknown:   # (found by review: --storage gcs measured the HTTP server under 'gcs')
            parser.error(f"{flag} {given}: {', '.join(unknown)} is none of {', '.join(allowed)}")
    work = args.work
    data = make_dense_data(work / "cache")
    rows = list(csv.DictReader(open(data.table_path)))
    header = list(rows[0])
    good = [r for r in rows if numeric_row(r)]
    tables = {"dense": good, "sparse": list(sparse_rows(good))}
    tables_written = dict(tables, one=good[:1])
    for name, table_rows in tables_written.items():
        write_table(work / f"{name}.csv", header, table_rows)
    print(f"machine: {os.cpu_count()} cores; DirectRunner; reader {args.volume_reader}; crop {' x '.join(CROP)} target voxels "
          f"(source arrays 128x128x16), chunks {CHUNK_XYZ} in both volumes, "
          f"{args.variants} variants, TFRecord only")
    floor = fetch_floor(data)
    print(f"fetch floor: every chunk of both volumes read and decoded once in {floor:.2f} s "
          f"(median of 3) "
          f"({len(good) / floor:.0f} instances/s if fetching were all there is)")
    from tests.chunk_server import ChunkServer

    root = Path(data.source_url[len("file://"):]).parent
    layouts = args.layouts.split(",")
    with ChunkServer(root) as server:
        server.latency_s = args.latency_ms / 1000
        if args.latency_ms:
            print(f"HTTP server: every answer waits {args.latency_ms:g} ms")
        for storage in args.storage.split(","):
            urls = data if storage == "file" else dataclasses.replace(
                data, source_url=server.url("source"), target_url=server.url("target"))
            startup = startup_seconds(work / "one.csv", urls, work, args.variants,
                                      args.volume_reader)
            print(f"start-up {storage:4s}: a one-row run lasts {startup:.2f} s (median of 3)")
            for name in tables:
                dense_bytes = {}
                for layout in layouts:
                    results = scenario(name, storage, work / f"{name}.csv", urls, args, work,
                                       args.sparse_repeats if name == "sparse" else 1, floor,
                                       layout, startup if name == "dense" else None)
                    dense_bytes[layout] = results["grouped"][2]["benchmark"]["dataset_bytes"]
                if len(dense_bytes) == 2:
                    print(f"{name:6s} {storage:4s} dataset bytes, instance / variant layout: "
                          f"{dense_bytes['instance'] / dense_bytes['variant']:.2f}x")
        if args.big_table_rows:
            big_table(data, data, work, args.big_table_rows, 1000, args.variants)
    for layout in layouts if args.stage_split else ():
        split = stage_split(data, good, args.variants, layout=layout)
        total = sum(split.values())
        print(f"one instance, in process (per-instance fetch, {layout} layout): "
              f"{1000 * total:.1f} ms: " + ", ".join(
                  f"{k} {1000 * v:.2f} ms ({100 * v / total:.0f}%)" for k, v in split.items()))


if __name__ == "__main__":
    main()
