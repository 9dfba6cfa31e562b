"""Embedded demo data: a small H01-like volume pair and synapse table, made deterministically.

Raw EM-like texture at 4x4x33 nm (jpeg, with a lower mip at 8x8x33 nm) and a synapse segmentation
at 8x8x33 nm (compressed_segmentation, uint64) with E/I-style labels (1 and 2, like H01's
``whole_ei_onlyvol``), a few unlisted distractor blobs (label 3), non-zero voxel offsets, and a
table with pre/post points, extra columns and a few bad rows. Everything comes from one seeded
generator, so every machine makes the same bytes; it is cached and reused.
"""
from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

log = logging.getLogger(__name__)

DEMO_VERSION = "demo-v1"
DEMO_SEED = 20210601
TARGET_SIZE_XYZ = (384, 384, 48)
TARGET_OFFSET_XYZ = (1000, 2000, 100)
TARGET_RESOLUTION_NM = (8, 8, 33)
SOURCE_RESOLUTION_NM = (4, 4, 33)
N_SYNAPSES = 300
N_DISTRACTORS = 15
EMPTY_REGION_XY = ((0, 48), (336, 384))  # volume-relative x range and y range kept label-free
TABLE_COLUMNS = ["id", "x", "y", "z", "pre_pt_x", "pre_pt_y", "pre_pt_z", "post_pt_x",
                 "post_pt_y", "post_pt_z", "type", "score"]


@dataclass(frozen=True)
class DemoData:
    source_url: str
    target_url: str
    table_path: str
    n_synapses: int


def default_cache_dir() -> str:
    """$SYNANNO_DATAGEN_CACHE, else $XDG_CACHE_HOME/synanno-datagen, else ~/.cache/..."""
    if os.environ.get("SYNANNO_DATAGEN_CACHE"):
        return os.environ["SYNANNO_DATAGEN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "synanno-datagen")


def write_precomputed(path: str, data_xyz: np.ndarray, *, resolution_nm,
                      voxel_offset_xyz=(0, 0, 0), chunk_size_xyz=(64, 64, 16), encoding="raw",
                      layer_type="image", downsample_mips: int = 0) -> str:
    """Write ``data_xyz`` (x, y, z) as a precomputed volume at local ``path``; return its URL.

    ``downsample_mips`` extra scales are added, each (2, 2, 1) coarser: mean for images,
    striding for segmentations.
    """
    from cloudvolume import CloudVolume

    url = "file://" + os.path.abspath(path)
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type=layer_type, data_type=str(data_xyz.dtype), encoding=encoding,
        resolution=list(resolution_nm), voxel_offset=list(voxel_offset_xyz),
        chunk_size=list(chunk_size_xyz), volume_size=list(data_xyz.shape))
    cv = CloudVolume(url, info=info, progress=False)
    for _ in range(downsample_mips):
        cv.add_scale((2, 2, 1), encoding=encoding, chunk_size=list(chunk_size_xyz))
    cv.commit_info()
    array = data_xyz
    for mip in range(downsample_mips + 1):
        if mip:
            array = _downsample_xy(array, layer_type)
        writer = CloudVolume(url, mip=mip, progress=False)
        start = [int(v) for v in writer.meta.voxel_offset(mip)]
        stop = [a + n for a, n in zip(start, array.shape)]
        writer[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = array
    return url


def _downsample_xy(array_xyz: np.ndarray, layer_type: str) -> np.ndarray:
    x, y = array_xyz.shape[0] // 2 * 2, array_xyz.shape[1] // 2 * 2
    a = array_xyz[:x, :y]
    if layer_type == "segmentation":
        return np.ascontiguousarray(a[::2, ::2])
    blocks = a.reshape(x // 2, 2, y // 2, 2, a.shape[2]).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(array_xyz.dtype)


def make_demo_data(cache_dir: str) -> DemoData:
    """Make (or reuse) the demo volumes and table under ``cache_dir/demo-v1``."""
    root = os.path.join(cache_dir, DEMO_VERSION)
    if not os.path.exists(os.path.join(root, "COMPLETE")):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=DEMO_VERSION + ".", dir=cache_dir)
        try:
            _build(tmp)
            with open(os.path.join(tmp, "COMPLETE"), "w") as f:
                f.write(DEMO_VERSION + "\n")
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(root, "synapses.csv")) as f:
        n_good = sum(1 for row in csv.DictReader(f) if row["type"] in ("E", "I"))
    return DemoData("file://" + os.path.join(root, "source"),
                    "file://" + os.path.join(root, "target"),
                    os.path.join(root, "synapses.csv"), n_good)


def _build(root: str) -> None:
    log.info("making demo data in %s", root)
    rng = np.random.default_rng(DEMO_SEED)
    labels, synapses = _paint_synapses(rng)
    write_precomputed(os.path.join(root, "target"), labels, resolution_nm=TARGET_RESOLUTION_NM,
                      voxel_offset_xyz=TARGET_OFFSET_XYZ, chunk_size_xyz=(64, 64, 16),
                      encoding="compressed_segmentation", layer_type="segmentation")
    raw = _em_texture(rng, labels)
    write_precomputed(os.path.join(root, "source"), raw, resolution_nm=SOURCE_RESOLUTION_NM,
                      voxel_offset_xyz=(2 * TARGET_OFFSET_XYZ[0], 2 * TARGET_OFFSET_XYZ[1],
                                        TARGET_OFFSET_XYZ[2]),
                      chunk_size_xyz=(128, 128, 16), encoding="jpeg", layer_type="image",
                      downsample_mips=1)
    _write_table(os.path.join(root, "synapses.csv"), rng, synapses)


def _paint_synapses(rng) -> Tuple[np.ndarray, List[dict]]:
    """uint64 (x, y, z) labels with ellipsoid synapses; returns them and their table facts."""
    sx, sy, sz = TARGET_SIZE_XYZ
    labels = np.zeros(TARGET_SIZE_XYZ, np.uint64)
    synapses = []
    total = N_SYNAPSES + N_DISTRACTORS
    while len(synapses) < total:
        center = np.array([rng.integers(0, sx), rng.integers(0, sy), rng.integers(0, sz)])
        (ex0, ex1), (ey0, ey1) = EMPTY_REGION_XY
        if ex0 - 24 <= center[0] < ex1 + 24 and ey0 - 24 <= center[1] < ey1 + 24:
            continue  # keep the empty_target demo region free of labels
        distractor = len(synapses) >= N_SYNAPSES
        radii = (np.array([rng.uniform(2, 4), rng.uniform(2, 4), rng.uniform(0.8, 1.5)])
                 if distractor else
                 np.array([rng.uniform(8, 20), rng.uniform(4, 8), rng.uniform(1.5, 4)]))
        angle = rng.uniform(0, np.pi)
        label = 3 if distractor else int(rng.integers(1, 3))
        _paint_ellipsoid(labels, center, radii, angle, label)
        direction = np.array([-np.sin(angle), np.cos(angle)])  # across the cleft
        synapses.append({"center": center, "label": label, "direction": direction,
                         "distractor": distractor})
    for syn in synapses:  # a later ellipsoid may cover an earlier centre: give it back its core
        cx, cy, cz = syn["center"]
        if labels[cx, cy, cz] != syn["label"]:
            _paint_ellipsoid(labels, syn["center"], np.array([2.0, 2.0, 1.0]), 0.0, syn["label"])
    return labels, [s for s in synapses if not s["distractor"]]


def _paint_ellipsoid(labels, center, radii, angle, label) -> None:
    r = int(np.ceil(radii.max())) + 1
    lo = np.maximum(center - r, 0)
    hi = np.minimum(center + r + 1, labels.shape)
    x, y, z = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    inside = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (dz / radii[2]) ** 2 <= 1.0
    labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = label


def _smooth_noise(rng, shape_xyz, cell_xy: int) -> np.ndarray:
    """float32 noise in [-1, 1], smooth over ``cell_xy`` voxels in x and y (bilinear)."""
    nx, ny = shape_xyz[0] // cell_xy + 2, shape_xyz[1] // cell_xy + 2
    grid = rng.uniform(-1, 1, size=(nx, ny, shape_xyz[2])).astype(np.float32)
    fx = np.arange(shape_xyz[0], dtype=np.float32) / cell_xy
    fy = np.arange(shape_xyz[1], dtype=np.float32) / cell_xy
    ix, iy = fx.astype(int), fy.astype(int)
    wx, wy = (fx - ix)[:, None, None], (fy - iy)[None, :, None]
    g00, g10 = grid[ix][:, iy], grid[ix + 1][:, iy]
    g01, g11 = grid[ix][:, iy + 1], grid[ix + 1][:, iy + 1]
    return (g00 * (1 - wx) * (1 - wy) + g10 * wx * (1 - wy) + g01 * (1 - wx) * wy
            + g11 * wx * wy)


def _em_texture(rng, labels_xyz: np.ndarray) -> np.ndarray:
    """uint8 (x, y, z) EM-like raw on the 2x finer grid: smooth grey, dark membranes, dark clefts."""
    shape = (2 * labels_xyz.shape[0], 2 * labels_xyz.shape[1], labels_xyz.shape[2])
    raw = 150 + 25 * _smooth_noise(rng, shape, 48) + 12 * _smooth_noise(rng, shape, 12)
    raw += rng.normal(0, 6, size=shape).astype(np.float32)
    membranes = np.abs(_smooth_noise(rng, shape, 40)) < 0.06
    raw[membranes] -= 55
    synapse = np.repeat(np.repeat(labels_xyz > 0, 2, axis=0), 2, axis=1)
    raw[synapse] -= 70
    return np.clip(raw, 0, 255).astype(np.uint8)


def _write_table(path: str, rng, synapses: List[dict]) -> None:
    ox, oy, oz = TARGET_OFFSET_XYZ
    ids = rng.choice(np.arange(10**12, 10**12 + 10**7), size=len(synapses) + 4, replace=False)
    rows = []
    for sid, syn in zip(ids, synapses):
        c = syn["center"] + (ox, oy, oz)
        d = np.round(syn["direction"] * 5).astype(int)
        pre = (c[0] - d[0], c[1] - d[1], c[2])
        post = (c[0] + d[0], c[1] + d[1], c[2])
        as_float = rng.random() < 0.3   # exports often write integers as 46.0
        fmt = (lambda v: f"{int(v)}.0") if as_float else (lambda v: str(int(v)))
        rows.append([str(sid), *map(fmt, c), *map(fmt, pre), *map(fmt, post),
                     "E" if syn["label"] == 1 else "I", f"{rng.uniform(0.5, 1):.3f}"])
    (ex0, ex1), (ey0, ey1) = EMPTY_REGION_XY
    empty_center = (ox + (ex0 + ex1) // 2, oy + (ey0 + ey1) // 2, oz + 20)
    bad = [
        [str(ids[-4]), "1200", "2100", "", "1198", "2100", "", "1202", "2100", "", "bad", "0.1"],
        [str(ids[-3]), "n/a", "2100", "120", "1198", "2100", "120", "1202", "2100", "120", "bad",
         "0.1"],
        [str(ids[-2]), "90000", "2100", "120", "89998", "2100", "120", "90002", "2100", "120",
         "bad", "0.1"],
        [str(ids[-1]), *map(str, empty_center), *map(str, empty_center),
         *map(str, empty_center), "bad", "0.1"],
    ]
    rows += bad
    order = rng.permutation(len(rows))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(rows[i] for i in order)
