"""Embedded demo data: a small H01-like volume pair and synapse table, made deterministically.

Laid out as H01's volumes are, written by tensorstore: the raw in sharded precomputed format, and
no label chunk that is all background stored.

Target: synapse segmentation at 8x8x33 nm (uint64, compressed_segmentation) with E/I-style labels
(1 = excitatory, 2 = inhibitory, like H01's ``whole_ei_onlyvol``; neighbours may touch) and a few
unlisted distractor blobs (label 3). Source: raw EM-like texture at 4x4x33 nm (uint8, jpeg) with a
lower mip at 8x8x33 nm; membranes and synaptic clefts are dark. Both have non-zero voxel offsets.
Table: one row per synapse in absolute target voxels, plus four bad rows. Everything comes from one
seeded generator, so every machine makes the same bytes; the result is cached and reused.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import List, NamedTuple, Tuple

import numpy as np

from synanno_datagen.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_VERSION = "demo-v2"
DEMO_SEED = 20210601
TARGET_SIZE_XYZ = (384, 384, 48)
TARGET_OFFSET_XYZ = (1000, 2000, 100)
TARGET_RESOLUTION_NM = (8, 8, 33)
TARGET_CHUNK_XYZ = (64, 64, 16)
SOURCE_SCALE_XYZ = (2, 2, 1)         # source voxels per target voxel
SOURCE_RESOLUTION_NM = (4, 4, 33)
SOURCE_CHUNK_XYZ = (128, 128, 16)
N_SYNAPSES = 300                     # for TARGET_SIZE_XYZ; scaled with volume for other sizes
N_DISTRACTORS = 15
# How the volumes are stored, as (source sharded, target sharded); tensorstore writes both, so no
# all-zero chunk is stored. "demo" is H01's layout (sharded raw); the others keep the same voxels
# and table in one layout for both volumes (for benchmarks that compare layouts).
FILE_URL = "file://"   # + an absolute path as it is (readers take it as written, no escapes)
LAYOUTS = {"demo": (True, False), "sharded": (True, True), "unsharded": (False, False)}
TABLE_COLUMNS = ["id", "x", "y", "z", "pre_pt_x", "pre_pt_y", "pre_pt_z", "post_pt_x",
                 "post_pt_y", "post_pt_z", "type", "score"]


@dataclass(frozen=True)
class DemoData:
    source_url: str      # file:// URL, raw EM, uint8, jpeg, 4x4x33 nm, mips 0 and 1 (8x8x33 nm)
    target_url: str      # file:// URL, synapse labels, uint64, compressed_segmentation, 8x8x33 nm
    table_path: str      # local path of the CSV table (absolute target voxel coordinates)
    n_synapses: int      # synapses painted (= good table rows)


class _Blob(NamedTuple):
    center_xyz: np.ndarray   # int, volume-relative target voxels
    angle_rad: float         # long axis direction in the xy plane
    label: int


def default_cache_dir() -> str:
    """$SYNANNO_DATAGEN_CACHE if set, else $XDG_CACHE_HOME/synanno-datagen, else
    ~/.cache/synanno-datagen."""
    if os.environ.get("SYNANNO_DATAGEN_CACHE"):
        return os.environ["SYNANNO_DATAGEN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "synanno-datagen")


def write_precomputed(path: str, data_xyz: np.ndarray, *, resolution_nm_xyz,
                      voxel_offset_xyz=(0, 0, 0), chunk_size_xyz=(64, 64, 16), encoding="raw",
                      layer_type="image", downsample_mips: int = 0, writer: str = "cloudvolume",
                      sharded: bool = False, gzip: bool = False) -> str:
    """Write ``data_xyz`` (3D, x, y, z; uint8 image or uint32/uint64 segmentation) as a precomputed
    volume at ``path`` (a local directory, or a URL such as ``gs://...``); return its URL.

    ``resolution_nm_xyz`` and ``voxel_offset_xyz`` describe mip 0. Each of the ``downsample_mips``
    extra mips is (2, 2, 1) coarser than the one before (mean for images, mode of each 2x2 block
    for segmentations), with the offset halved (floor) and a size that covers the whole data.
    ``encoding`` and ``chunk_size_xyz`` apply to every mip.

    ``writer="cloudvolume"`` stores every chunk; with ``gzip`` raw and compressed_segmentation
    chunks are gzipped (on disk as ``name.gz``, which only cloud-volume reads; on a bucket under
    the plain name with Content-Encoding: gzip, as H01's are). ``writer="tensorstore"`` is Google's writer: like it (and igneous with
    ``delete_black_uploads``) it stores no chunk that is all zero; ``sharded`` packs the chunks
    into ``neuroglancer_uint64_sharded_v1`` shard files (gzip minishard indices), as H01's raw is.
    """
    url = path if "://" in path else "file://" + os.path.abspath(path)
    arrays = [(data_xyz, tuple(int(v) for v in voxel_offset_xyz))]
    for _ in range(downsample_mips):
        arrays.append(_downsample_xy(*arrays[-1], segmentation=layer_type == "segmentation"))
    if writer == "tensorstore":
        _write_tensorstore(url, arrays, resolution_nm_xyz, chunk_size_xyz, encoding, layer_type,
                           sharded)
    elif writer == "cloudvolume" and not sharded:
        _write_cloudvolume(url, arrays, resolution_nm_xyz, chunk_size_xyz, encoding, layer_type,
                           gzip)
    else:
        raise ValueError(f"writer {writer!r} (sharded={sharded}) is not supported")
    return url


def _write_cloudvolume(url, arrays, resolution_nm_xyz, chunk_size_xyz, encoding, layer_type,
                       gzip) -> None:
    from cloudvolume import CloudVolume

    data_xyz, offset_xyz = arrays[0]
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type=layer_type, data_type=str(data_xyz.dtype), encoding=encoding,
        resolution=list(resolution_nm_xyz), voxel_offset=list(offset_xyz),
        chunk_size=list(chunk_size_xyz), volume_size=list(data_xyz.shape))
    cv = CloudVolume(url, info=info, progress=False)
    for mip in range(1, len(arrays)):
        scale = cv.add_scale((2 ** mip, 2 ** mip, 1), encoding=encoding,
                             chunk_size=list(chunk_size_xyz))
        scale["voxel_offset"] = list(arrays[mip][1])   # cloud-volume's ceil(size / 2) can be
        scale["size"] = list(arrays[mip][0].shape)     # one short when the offset is odd
    cv.commit_info()
    for mip, (array_xyz, start_xyz) in enumerate(arrays):
        writer = CloudVolume(url, mip=mip, progress=False, compress=None if gzip else False)
        stop_xyz = [a + n for a, n in zip(start_xyz, array_xyz.shape)]
        writer[start_xyz[0]:stop_xyz[0], start_xyz[1]:stop_xyz[1],
               start_xyz[2]:stop_xyz[2]] = array_xyz


def sharding_spec(size_xyz, chunk_size_xyz) -> dict:
    """A ``neuroglancer_uint64_sharded_v1`` spec for a scale: 4 chunks per minishard, 2
    minishards per shard, so a small test volume spreads over several shard files."""
    bits = sum(max(0, math.ceil(math.log2(math.ceil(n / c))))
               for n, c in zip(size_xyz, chunk_size_xyz))
    return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 2,
            "minishard_bits": 1, "shard_bits": max(0, bits - 3),
            "minishard_index_encoding": "gzip", "data_encoding": "gzip"}


def _write_tensorstore(url, arrays, resolution_nm_xyz, chunk_size_xyz, encoding, layer_type,
                       sharded) -> None:
    import tensorstore as ts

    from synanno_datagen.transforms.readers import kvstore_url

    dtype = str(arrays[0][0].dtype)
    for mip, (array_xyz, offset_xyz) in enumerate(arrays):
        scale = {"resolution": [r * (2 ** mip if axis < 2 else 1)
                                for axis, r in enumerate(resolution_nm_xyz)],
                 "encoding": encoding, "chunk_size": list(chunk_size_xyz),
                 "size": list(array_xyz.shape), "voxel_offset": list(offset_xyz)}
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 8]
        if sharded:
            scale["sharding"] = sharding_spec(array_xyz.shape, chunk_size_xyz)
            if encoding == "jpeg":  # JPEG chunks are compressed already, as in H01
                scale["sharding"]["data_encoding"] = "raw"
        store = ts.open({
            "driver": "neuroglancer_precomputed", "kvstore": kvstore_url(url),
            "multiscale_metadata": {"type": layer_type, "data_type": dtype, "num_channels": 1},
            "scale_metadata": scale, "open": True, "create": True}).result()
        store[...] = array_xyz[..., None]


def _downsample_xy(array_xyz: np.ndarray, offset_xyz, *, segmentation: bool
                   ) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """(x, y, z) array and its voxel offset -> the (2, 2, 1) coarser array and offset.

    Blocks are aligned to even absolute coordinates; the data is edge-padded to whole blocks.
    """
    lo = [offset_xyz[0] % 2, offset_xyz[1] % 2]
    hi = [(lo[i] + array_xyz.shape[i]) % 2 for i in range(2)]
    a = np.pad(array_xyz, ((lo[0], hi[0]), (lo[1], hi[1]), (0, 0)), mode="edge")
    nx, ny, nz = a.shape[0] // 2, a.shape[1] // 2, a.shape[2]
    blocks = a.reshape(nx, 2, ny, 2, nz).transpose(0, 2, 4, 1, 3).reshape(nx, ny, nz, 4)
    if segmentation:   # mode of the 4 values; ties go to the first in (x, y) raster order
        votes = (blocks[..., :, None] == blocks[..., None, :]).sum(axis=-1)
        out = np.take_along_axis(blocks, votes.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    else:
        out = np.round(blocks.mean(axis=-1, dtype=np.float32)).astype(array_xyz.dtype)
    return out, (offset_xyz[0] // 2, offset_xyz[1] // 2, offset_xyz[2])


def make_demo_data(cache_dir: str, *, size_xyz=TARGET_SIZE_XYZ, source_chunk_xyz=SOURCE_CHUNK_XYZ,
                   target_chunk_xyz=TARGET_CHUNK_XYZ, layout: str = "demo") -> DemoData:
    """Make (deterministically) or reuse the demo volumes and table under ``cache_dir``.

    The default ``size_xyz`` (target voxels) is the demo; other sizes (for tests) go to their own
    directory and scale the synapse counts with the volume; so do other storage chunk sizes and
    other ``layout``s (see LAYOUTS; for benchmarks: the voxels and the table depend on neither).
    A copy is built in a temporary directory, marked COMPLETE last and renamed into place, so a
    killed run leaves no half cache.
    """
    size_xyz = tuple(int(n) for n in size_xyz)
    if min(size_xyz[:2]) < 96 or size_xyz[2] < 8:
        raise ValueError(f"demo size_xyz {size_xyz} is too small (at least 96 x 96 x 8)")
    if layout not in LAYOUTS:
        raise ValueError(f"demo layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    chunks = (tuple(int(n) for n in source_chunk_xyz), tuple(int(n) for n in target_chunk_xyz))
    name = DEMO_VERSION if size_xyz == TARGET_SIZE_XYZ else \
        f"{DEMO_VERSION}-{'x'.join(map(str, size_xyz))}"
    if chunks != (SOURCE_CHUNK_XYZ, TARGET_CHUNK_XYZ):
        name += "-chunks-" + "-".join("x".join(map(str, c)) for c in chunks)
    if layout != "demo":
        name += "-" + layout
    root = os.path.join(cache_dir, name)
    if not os.path.exists(os.path.join(root, "COMPLETE")):
        _build_atomically(cache_dir, root, size_xyz, chunks, LAYOUTS[layout])
    with open(os.path.join(root, "COMPLETE")) as f:
        n_synapses = json.load(f)["n_synapses"]
    return DemoData(FILE_URL + os.path.abspath(os.path.join(root, "source")),
                    FILE_URL + os.path.abspath(os.path.join(root, "target")),
                    os.path.join(root, "synapses.csv"), n_synapses)


def _build_atomically(cache_dir: str, root: str, size_xyz, chunks, sharded) -> None:
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="." + os.path.basename(root) + ".partial-", dir=cache_dir)
    except OSError as e:
        raise ConfigError(f"demo data cache {cache_dir}: cannot write it ({e.strerror or e}); "
                          "set SYNANNO_DATAGEN_CACHE to a writable folder") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # as a folder made for the cache (mkdtemp's is 0700)
    try:
        started = time.monotonic()
        n_synapses = _build(tmp, size_xyz, *chunks, sharded=sharded)
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            json.dump({"version": DEMO_VERSION, "seed": DEMO_SEED, "n_synapses": n_synapses}, f)
        if os.path.isdir(root) and not os.path.exists(os.path.join(root, "COMPLETE")):
            shutil.rmtree(root)   # not made by us: we only ever rename complete copies
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.exists(os.path.join(root, "COMPLETE")):
                raise
            log.info("another process finished the demo data first; using %s", root)
        log.info("made demo data (%d synapses) in %s in %.1f s", n_synapses, root,
                 time.monotonic() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(root: str, size_xyz, source_chunk_xyz=SOURCE_CHUNK_XYZ,
           target_chunk_xyz=TARGET_CHUNK_XYZ, sharded=LAYOUTS["demo"]) -> int:
    """Write target, source and table under ``root``; return the number of synapses.
    ``sharded`` is (source sharded, target sharded)."""
    source_sharded, target_sharded = sharded
    rng = np.random.default_rng(DEMO_SEED)
    volume_ratio = np.prod(size_xyz) / np.prod(TARGET_SIZE_XYZ)
    n_synapses = max(8, int(round(N_SYNAPSES * volume_ratio)))
    n_distractors = max(2, int(round(N_DISTRACTORS * volume_ratio)))
    empty_lo_xy, empty_hi_xy = _empty_region_xy(size_xyz)
    labels_xyz, synapses = _paint_blobs(rng, size_xyz, n_synapses, n_distractors,
                                        empty_lo_xy, empty_hi_xy)
    write_precomputed(os.path.join(root, "target"), labels_xyz,
                      resolution_nm_xyz=TARGET_RESOLUTION_NM, voxel_offset_xyz=TARGET_OFFSET_XYZ,
                      chunk_size_xyz=target_chunk_xyz, encoding="compressed_segmentation",
                      layer_type="segmentation", writer="tensorstore", sharded=target_sharded)
    write_precomputed(os.path.join(root, "source"), _em_texture(rng, labels_xyz),
                      resolution_nm_xyz=SOURCE_RESOLUTION_NM,
                      voxel_offset_xyz=[o * f for o, f in zip(TARGET_OFFSET_XYZ, SOURCE_SCALE_XYZ)],
                      chunk_size_xyz=source_chunk_xyz, encoding="jpeg", layer_type="image",
                      downsample_mips=1, writer="tensorstore", sharded=source_sharded)
    empty_center_xyz = [(lo + hi) // 2 for lo, hi in zip(empty_lo_xy, empty_hi_xy)]
    empty_center_xyz.append(size_xyz[2] // 2)
    _write_table(os.path.join(root, "synapses.csv"), rng, synapses, empty_center_xyz, size_xyz)
    return len(synapses)


def _empty_region_xy(size_xyz) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Volume-relative [lo, hi) xy corner kept free of labels at every z: a third of x and y
    (128 x 128 voxels in the demo, one default crop), at low x and high y."""
    side_x, side_y = size_xyz[0] // 3, size_xyz[1] // 3
    return (0, size_xyz[1] - side_y), (side_x, size_xyz[1])


def _paint_blobs(rng, size_xyz, n_synapses, n_distractors, empty_lo_xy, empty_hi_xy
                 ) -> Tuple[np.ndarray, List[_Blob]]:
    """uint64 (x, y, z) labels with ellipsoid synapses (1/2) then distractors (3); returns them
    and the synapses. A blob paints only background and is centred on a background voxel, so
    every synapse owns its centre voxel; neighbours may touch."""
    labels = np.zeros(size_xyz, np.uint64)
    blobs: List[_Blob] = []
    n_blobs, attempts = n_synapses + n_distractors, 0
    while len(blobs) < n_blobs:
        attempts += 1
        if attempts > 100 * n_blobs:
            raise RuntimeError(f"could not place {n_blobs} blobs in {size_xyz}")
        distractor = len(blobs) >= n_synapses
        center = np.array([rng.integers(0, n) for n in size_xyz])
        if distractor:   # semi-axes: long, short (xy) and z, in target voxels
            radii = np.array([rng.uniform(1.5, 3.5), rng.uniform(1.5, 3), rng.uniform(0.6, 1.5)])
        else:            # diameters 15-40 x 8-20 voxels (120-320 x 64-160 nm) x 3-8 slices
            radii = np.array([rng.uniform(7.5, 20), rng.uniform(4, 10), rng.uniform(1.5, 4)])
        angle = float(rng.uniform(0, np.pi))
        label = 3 if distractor else int(rng.integers(1, 3))
        reach = int(np.ceil(radii[0]))
        near_empty = all(c + reach >= lo and c - reach < hi
                         for c, lo, hi in zip(center[:2], empty_lo_xy, empty_hi_xy))
        if near_empty or labels[tuple(center)] != 0:
            continue
        _paint_ellipsoid(labels, center, radii, angle, label)
        blobs.append(_Blob(center, angle, label))
    return labels, blobs[:n_synapses]


def _paint_ellipsoid(labels_xyz, center_xyz, radii_xyz, angle_rad, label) -> None:
    """Set background voxels of a (rotated in xy) ellipsoid to ``label``, clipped to the volume."""
    r = np.ceil(radii_xyz.max()).astype(int)
    lo = np.maximum(center_xyz - [r, r, int(np.ceil(radii_xyz[2]))], 0)
    hi = np.minimum(center_xyz + [r + 1, r + 1, int(np.ceil(radii_xyz[2])) + 1], labels_xyz.shape)
    dx, dy, dz = np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, center_xyz)],
                             indexing="ij", sparse=True)
    u = dx * np.cos(angle_rad) + dy * np.sin(angle_rad)
    v = -dx * np.sin(angle_rad) + dy * np.cos(angle_rad)
    inside = (u / radii_xyz[0]) ** 2 + (v / radii_xyz[1]) ** 2 + (dz / radii_xyz[2]) ** 2 <= 1
    box = labels_xyz[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    box[inside & (box == 0)] = label


def _noise_grid(rng, shape_xyz, cell_xyz) -> np.ndarray:
    """float32 (x, y, z) random nodes in [-1, 1], one every ``cell_xyz`` voxels (and one past
    the end), for ``_smooth_noise``."""
    grid = rng.uniform(-1, 1, size=[n // c + 2 for n, c in zip(shape_xyz, cell_xyz)])
    return grid.astype(np.float32)


def _smooth_noise(grid, shape_xyz, cell_xyz, x_range) -> np.ndarray:
    """float32 (x, y, z) noise in [-1, 1] of the volume ``shape_xyz`` at x in ``x_range`` (a
    slab): ``grid`` linearly interpolated one axis at a time (each voxel the same whatever the
    slab)."""
    ranges = [range(*x_range), range(shape_xyz[1]), range(shape_xyz[2])]
    for axis, (voxels, cell) in enumerate(zip(ranges, cell_xyz)):
        position = np.arange(voxels.start, voxels.stop, dtype=np.float32) / cell
        index = position.astype(int)
        weight = (position - index).reshape([-1 if a == axis else 1 for a in range(3)])
        grid = (np.take(grid, index, axis=axis) * (1 - weight)
                + np.take(grid, index + 1, axis=axis) * weight)
    return grid


TEXTURE_SLAB_X = 64   # source x planes made at once (a multiple of SOURCE_SCALE_XYZ[0])


def _em_texture(rng, labels_xyz: np.ndarray) -> np.ndarray:
    """uint8 (x, y, z) EM-like raw on the source grid (2x finer in x, y): smooth grey around 150,
    dark membrane sheets that continue across slices, and dark clefts over every label.

    Made in slabs of ``TEXTURE_SLAB_X`` x planes (memory: the output and a few float32 slabs),
    drawing from ``rng`` what one whole-volume pass would, in the same order."""
    shape = tuple(n * f for n, f in zip(labels_xyz.shape, SOURCE_SCALE_XYZ))
    cells = {"coarse": (64, 64, 8), "fine": (12, 12, 2), "membrane": (48, 48, 6)}
    grids = {name: _noise_grid(rng, shape, cells[name]) for name in ("coarse", "fine")}
    voxel_noise = np.random.Generator(type(rng.bit_generator)())
    voxel_noise.bit_generator.state = rng.bit_generator.state
    slabs = [(lo, min(lo + TEXTURE_SLAB_X, shape[0])) for lo in range(0, shape[0], TEXTURE_SLAB_X)]
    for lo, hi in slabs:   # rng past the voxel noise, drawn again below slab by slab
        rng.standard_normal((hi - lo, *shape[1:]), dtype=np.float32)
    grids["membrane"] = _noise_grid(rng, shape, cells["membrane"])
    raw_xyz = np.empty(shape, np.uint8)
    fx, fy, _ = SOURCE_SCALE_XYZ
    for lo, hi in slabs:
        noise = {name: _smooth_noise(grids[name], shape, cells[name], (lo, hi)) for name in cells}
        raw = 150 + 22 * noise["coarse"]
        raw += 10 * noise["fine"]
        raw += 6 * voxel_noise.standard_normal((hi - lo, *shape[1:]), dtype=np.float32)
        raw -= 60 * np.clip(1 - np.abs(noise["membrane"]) / 0.05, 0, None)
        cleft = np.repeat(np.repeat(labels_xyz[lo // fx:hi // fx] != 0, fx, axis=0), fy, axis=1)
        raw[cleft] -= 75
        raw_xyz[lo:hi] = np.clip(raw, 0, 255).astype(np.uint8)
    return raw_xyz


def _write_table(path: str, rng, synapses: List[_Blob], empty_center_xyz, size_xyz) -> None:
    """CSV in absolute target voxels: one row per synapse, four bad rows, shuffled."""
    offset = np.array(TARGET_OFFSET_XYZ)
    ids = 10 ** 12 + rng.choice(9 * 10 ** 12, size=len(synapses) + 4, replace=False)
    rows = []
    for sid, blob in zip(ids, synapses):
        center = blob.center_xyz + offset
        across = np.array([-np.sin(blob.angle_rad), np.cos(blob.angle_rad), 0.0])
        step = np.round(across * rng.uniform(3, 6) * rng.choice([-1, 1])).astype(int)
        rows.append(_row(rng, sid, center, center - step, center + step,
                         "E" if blob.label == 1 else "I", as_float=rng.random() < 0.3))
    inside = offset + np.array(size_xyz) // 2
    bad = [(inside, "z", ""), (inside, "x", "n/a"),
           (offset + 10 * np.array(size_xyz), None, None),          # far outside the volume
           (offset + np.array(empty_center_xyz), None, None)]      # inside, no label near
    for sid, (center, column, value) in zip(ids[len(synapses):], bad):
        row = _row(rng, sid, center, center - (3, 0, 0), center + (3, 0, 0),
                   str(rng.choice(["E", "I"])), as_float=False)
        if column:
            row[TABLE_COLUMNS.index(column)] = value
        rows.append(row)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(rows[i] for i in rng.permutation(len(rows)))


def _row(rng, sid, center_xyz, pre_xyz, post_xyz, kind: str, *, as_float: bool) -> List[str]:
    """One table row; ``as_float`` writes coordinates like ``46.0``, as many exports do."""
    fmt = (lambda v: f"{int(v)}.0") if as_float else (lambda v: str(int(v)))
    points = [fmt(v) for point in (center_xyz, pre_xyz, post_xyz) for v in point]
    return [str(int(sid)), *points, kind, f"{rng.uniform(0.5, 1.0):.4f}"]
