"""Benchmark: cloud-volume vs tensorstore reading H01-like volumes; sharded vs unsharded end to end.

Each pair is measured in one run.

    python benchmarks/volume_readers.py [--work DIR] [--quick] [--crops N] [--cache-mb MB]
                                        [--repeats N]

Builds (once, cached under --work, in a child process) an H01-like volume pair with the demo
generator, in two layouts holding the same voxels: raw EM uint8 JPEG at 4x4x33 nm with a mip at
8x8x33 nm, synapse labels uint64 compressed_segmentation at 8x8x33 nm, all in 128x128x32 chunks,
written by tensorstore (no all-zero chunk stored, so label chunks without a synapse are absent),
either every scale sharded (neuroglancer_uint64_sharded_v1) or none. Then:

1. Reading: the same crops of 96x80x8 raw voxels (mip 0, spread through the volume, fixed seed),
   read one after another in this process as the pipeline reads a crop
   (transforms.blocks.padded_crop on a transforms.readers reader), by each engine with a fresh
   reader (no cache from an earlier measurement; by default no decoded-chunk cache at all, so
   every crop reads its chunks from storage, as ``--fetch-strategy per-instance`` does;
   ``--cache-mb 1024`` gives each reader the grouped default's cache instead), from the sharded
   raw on local files and, through a GCS emulator (fake-gcs-server on loopback), from the raw
   written to gs:// in both layouts. Prints seconds per engine and cloud-volume / tensorstore;
   both engines must read the same voxels.
2. End to end: the whole pipeline with its default flags plus ``--source-mip nearest``
   (tensorstore, grouped fetching, mip 1) on the sharded pair and on the unsharded pair, same
   table, each run in its own process. Prints wall and CPU seconds and sharded / unsharded, and
   checks that both datasets hold byte-identical files (records, index, npy, dead letters) and
   equal manifest counts (filled_chunks included).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import dataset_files, make_data, run_pipeline  # noqa: E402 - needs ROOT
from benchmarks.flags import non_negative_int, positive_int, work_dir  # noqa: E402

SIZE_XYZ = (384, 384, 64)        # target voxels (raw mip 0: 768x768x64); about 400 synapses
QUICK_SIZE_XYZ = (192, 192, 32)  # about 50 synapses
CHUNK_XYZ = (128, 128, 32)       # H01-like storage chunks, every scale of both volumes
CROP_XYZ = (96, 80, 8)           # raw voxels at mip 0
CROP_SEED = 0
LAYOUTS = ("sharded", "unsharded")


@contextlib.contextmanager
def silenced():
    """Send this process's stdout and stderr (file descriptors 1 and 2) to /dev/null: the
    engines' notes that they found no Google credentials, which the emulator does not need."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def crop_boxes(spec, n: int, seed: int = CROP_SEED):
    """``n`` boxes of CROP_XYZ voxels (x, y, z, at ``spec``'s mip) inside the volume, their
    corners drawn uniformly with a generator seeded by ``seed``."""
    import numpy as np

    from synanno_datagen.transforms.geometry import Box

    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        start = tuple(int(o + rng.integers(0, s - c + 1)) for o, s, c in
                      zip(spec.voxel_offset_xyz, spec.size_xyz, CROP_XYZ))
        boxes.append(Box(start, tuple(a + c for a, c in zip(start, CROP_XYZ))))
    return boxes


def read_crops(url: str, engine: str, boxes, cache_bytes: int):
    """(seconds, sha256 of the crops) for reading ``boxes`` (raw voxels, mip 0) one after
    another with a fresh ``engine`` reader of ``url``; opening the reader is not timed."""
    from synanno_datagen.transforms.blocks import padded_crop
    from synanno_datagen.transforms.readers import describe_volume, open_reader

    token = f"volume-readers-{engine}-{time.monotonic_ns()}"  # a cache of its own
    with silenced():
        spec = describe_volume(url, 0, engine)
        reader = open_reader(url, 0, engine, cache_bytes, token)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for box in boxes:
        crop_zyx, _ = padded_crop(reader, spec, box, 0, "error")
        digest.update(crop_zyx.tobytes())
    return time.perf_counter() - start, digest.hexdigest()


def upload_raw(local_url: str, bucket: str, layout: str) -> str:
    """Write the raw volume at ``local_url`` (both mips made again from its mip 0 voxels) to
    ``bucket`` in ``layout`` with tensorstore; return its gs:// URL."""
    from synanno_datagen.pipeline.demo_data import write_precomputed
    from synanno_datagen.transforms.blocks import read_region
    from synanno_datagen.transforms.readers import describe_volume, open_reader

    spec = describe_volume(local_url, 0)
    voxels_zyx = read_region(open_reader(local_url, 0, "tensorstore"), spec, spec.bounds).array_zyx
    return write_precomputed(f"{bucket}/{layout}/source", voxels_zyx.transpose(2, 1, 0),
                             resolution_nm_xyz=spec.resolution_nm_xyz,
                             voxel_offset_xyz=spec.voxel_offset_xyz, chunk_size_xyz=CHUNK_XYZ,
                             encoding="jpeg", downsample_mips=1, writer="tensorstore",
                             sharded=layout == "sharded")


def reading(data, n_crops: int, cache_bytes: int) -> None:
    """Part 1: print both engines' seconds and the ratio on each storage and layout."""
    from tests.gcs_emulator import GcsEmulator
    from synanno_datagen.transforms.readers import describe_volume

    boxes = crop_boxes(describe_volume(data["sharded"].source_url, 0), n_crops)
    print(f"reading {n_crops} crops of {'x'.join(map(str, CROP_XYZ))} raw voxels (mip 0), "
          "one process, a fresh reader per measurement, "
          + (f"{cache_bytes >> 20} MB decoded-chunk cache:" if cache_bytes else "no cache:"))
    print(f"  {'storage, raw layout':30s} {'cloud-volume':>12s} {'tensorstore':>12s} "
          f"{'ratio':>7s}")
    emulator = GcsEmulator()
    try:
        bucket = emulator.create_bucket("volume-readers")
        cases = [("local files, sharded", data["sharded"].source_url)]
        with silenced():
            cases += [(f"GCS emulator, {layout}",
                       upload_raw(data[layout].source_url, bucket, layout)) for layout in LAYOUTS]
        for name, url in cases:
            cv_seconds, cv_digest = read_crops(url, "cloudvolume", boxes, cache_bytes)
            ts_seconds, ts_digest = read_crops(url, "tensorstore", boxes, cache_bytes)
            if cv_digest != ts_digest:
                raise SystemExit(f"{name}: the engines read different voxels")
            print(f"  {name:30s} {cv_seconds:10.2f} s {ts_seconds:10.2f} s "
                  f"{cv_seconds / ts_seconds:6.1f}x")
    finally:
        emulator.close()


def run_nearest(data, table: str, out: Path):
    """One pipeline run with the default flags and ``--source-mip nearest``, in a child process:
    (wall seconds, CPU seconds, manifest)."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, cpu, _, manifest = run_pipeline(
        ["--materialization", table, "--source-url", data.source_url,
         "--target-url", data.target_url, "--source-mip", "nearest"], out)
    return seconds, cpu, manifest


def end_to_end(data, work: Path, repeats: int) -> None:
    """Part 2: print wall and CPU seconds per layout (median of ``repeats``, runs alternating),
    the ratios, and whether the two datasets are the same."""
    table = data["sharded"].table_path
    runs = {layout: [] for layout in LAYOUTS}
    for _ in range(repeats):
        for layout in LAYOUTS:
            runs[layout].append(run_nearest(data[layout], table, work / f"out-{layout}"))
    median = {layout: sorted(r, key=lambda run: run[0])[len(r) // 2] for layout, r in runs.items()}
    counts = {layout: m["counts"] for layout, (_, _, m) in median.items()}
    print(f"end to end: default flags + --source-mip nearest (mip "
          f"{median['sharded'][2]['volumes']['source']['mip']}), "
          f"{counts['sharded']['instances_written']} instances, one process per run"
          + (f", median of {repeats}" if repeats > 1 else "") + ":")
    for layout, (seconds, cpu, _) in median.items():
        print(f"  {layout:10s} {seconds:6.1f} s wall {cpu:6.1f} CPU s")
    (s_wall, s_cpu, _), (u_wall, u_cpu, _) = median["sharded"], median["unsharded"]
    print(f"  sharded / unsharded: {s_wall / u_wall:.2f}x wall, {s_cpu / u_cpu:.2f}x CPU")
    files = {layout: dataset_files(work / f"out-{layout}") for layout in LAYOUTS}
    same_files = files["sharded"] == files["unsharded"]
    same_counts = counts["sharded"] == counts["unsharded"]
    filled = counts["sharded"]["filled_chunks"]
    print(f"  datasets: {len(files['sharded'])} files "
          f"{'byte-identical' if same_files else 'DIFFERENT'}; manifest counts "
          f"{'equal' if same_counts else 'DIFFERENT'} (filled_chunks source {filled['source']}, "
          f"target {filled['target']})")
    if not (same_files and same_counts):
        raise SystemExit("the sharded and unsharded volumes gave different datasets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=work_dir, default=os.path.join(tempfile.gettempdir(),
                                                       "synanno-benchmark-readers"),
                        help="cached volumes and the runs' datasets")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke test: volume {'x'.join(map(str, QUICK_SIZE_XYZ))} "
                        "target voxels, 5 crops")
    parser.add_argument("--crops", type=positive_int,
                        help="crops read per measurement (default 30)")
    parser.add_argument("--cache-mb", type=non_negative_int, default=0,
                        help="decoded-chunk cache of each reader in the reading measurements "
                        "(default 0: every crop reads its chunks from storage)")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="end-to-end runs per layout, the median is shown (default 1)")
    args = parser.parse_args()
    work = args.work
    size_xyz = QUICK_SIZE_XYZ if args.quick else SIZE_XYZ
    n_crops = args.crops or (5 if args.quick else 30)
    data = {layout: make_data(work / "cache", size_xyz=size_xyz, source_chunk_xyz=CHUNK_XYZ,
                              target_chunk_xyz=CHUNK_XYZ, layout=layout) for layout in LAYOUTS}
    print(f"machine: {os.cpu_count()} cores; volumes: labels {'x'.join(map(str, size_xyz))} "
          f"voxels at 8x8x33 nm, raw JPEG at 4x4x33 and 8x8x33 nm, chunks "
          f"{'x'.join(map(str, CHUNK_XYZ))}, sharded and unsharded; {data['sharded'].n_synapses} "
          "synapses")
    reading(data, n_crops, args.cache_mb << 20)
    end_to_end(data, work, args.repeats)


if __name__ == "__main__":
    main()
