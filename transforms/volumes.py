"""Precomputed volumes: a plain-values description (VolumeSpec) and padded cutouts in (z, y, x)."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from transforms.geometry import Box, xyzc_to_zyx


@dataclass(frozen=True)
class VolumeSpec:
    """One scale (mip) of a precomputed volume, as plain values that pickle to workers."""

    url: str
    mip: int
    resolution_nm: Tuple[float, float, float]
    voxel_offset_xyz: Tuple[int, int, int]
    size_xyz: Tuple[int, int, int]
    chunk_size_xyz: Tuple[int, int, int]
    dtype: str
    encoding: str
    layer_type: str
    num_channels: int
    key: str = ""  # the scale's key: its chunks are named "{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"

    @property
    def bounds(self) -> Box:
        return Box(self.voxel_offset_xyz,
                   tuple(o + s for o, s in zip(self.voxel_offset_xyz, self.size_xyz)))

    def to_manifest(self) -> dict:
        return {
            "url": self.url, "mip": self.mip, "resolution_nm_xyz": list(self.resolution_nm),
            "voxel_offset_xyz": list(self.voxel_offset_xyz), "size_xyz": list(self.size_xyz),
            "chunk_size_xyz": list(self.chunk_size_xyz), "dtype": self.dtype,
            "encoding": self.encoding, "layer_type": self.layer_type,
        }


def open_volume(url: str, mip: int = 0, lru_bytes: int = 0):
    """A CloudVolume reader: bounded, missing chunks are errors (never silent zeros), no progress.

    ``lru_bytes`` > 0 keeps that many bytes of recently decoded chunks in memory (decoded, so a
    hit costs neither a read nor a decode).
    """
    from cloudvolume import CloudVolume

    return CloudVolume(url, mip=mip, bounded=True, fill_missing=False, progress=False,
                       parallel=1, cache=False, lru_bytes=int(lru_bytes), lru_encoding="raw")


def describe_volume(url: str, mip: int = 0) -> VolumeSpec:
    """Read a volume's ``info`` and describe scale ``mip``. Raises ValueError with the reason."""
    cv = open_volume(url, 0)
    n_mips = len(cv.meta.scales)
    if not 0 <= mip < n_mips:
        raise ValueError(f"mip {mip} is not in {url} (it has mips 0..{n_mips - 1})")
    return VolumeSpec(
        url=url, mip=mip,
        resolution_nm=tuple(float(r) for r in cv.meta.resolution(mip)),
        voxel_offset_xyz=tuple(int(v) for v in cv.meta.voxel_offset(mip)),
        size_xyz=tuple(int(v) for v in cv.meta.volume_size(mip)),
        chunk_size_xyz=tuple(int(v) for v in cv.meta.chunk_size(mip)),
        dtype=str(np.dtype(cv.meta.dtype)), encoding=str(cv.meta.encoding(mip)),
        layer_type=str(cv.meta.layer_type), num_channels=int(cv.meta.num_channels),
        key=str(cv.meta.key(mip)),
    )


def mip_resolutions(url: str) -> List[Tuple[float, float, float]]:
    """Resolution (nm, x, y, z) of every mip of a volume, from its ``info``."""
    cv = open_volume(url, 0)
    return [tuple(float(r) for r in cv.meta.resolution(m)) for m in range(len(cv.meta.scales))]


MISSING_CHUNK_MODES = ("error", "zero")


class MissingChunks(LookupError):
    """A cutout touched chunks that are not in storage (``names`` as cloud-volume names them)."""

    def __init__(self, url: str, names: List[str]):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        super().__init__(f"{len(names)} chunk(s) missing in {url}: {shown}")
        self.url = url
        self.names = names


def read_padded_zyx(cv, box: Box, bounds: Box, fill_value, dtype,
                    missing_chunks: str = "error") -> Tuple[np.ndarray, List[str]]:
    """Cutout of ``box`` (voxels at ``cv``'s mip) as (z, y, x); outside ``bounds`` = fill_value.

    Returns (array, names of chunks filled with zeros). A chunk missing from storage (a 404/403,
    never retried) raises MissingChunks, or with ``missing_chunks="zero"`` reads as zeros and is
    named in the list. Transient storage errors (5xx, throttling, resets) are retried with
    exponential backoff by cloudfiles (7 tries) before they surface as errors.
    """
    from cloudvolume import Bbox
    from cloudvolume.exceptions import EmptyVolumeException

    size_xyz = box.size_xyz
    out = np.full(size_xyz[::-1], fill_value, dtype=dtype)
    inner = box.intersect(bounds)
    if inner is None:
        return out, []
    bbox = Bbox(inner.start_xyz, inner.stop_xyz)
    filled: List[str] = []
    try:
        cutout = cv.download(bbox, mip=cv.mip)
    except EmptyVolumeException:
        filled = sorted(name for name, present in cv.exists(bbox).items() if not present)
        if missing_chunks != "zero" or not filled:
            raise MissingChunks(cv.cloudpath, filled) from None
        cv.fill_missing = True
        try:
            cutout = cv.download(bbox, mip=cv.mip)
        finally:
            cv.fill_missing = False
    cutout = xyzc_to_zyx(np.asarray(cutout))
    lo = [a - b for a, b in zip(inner.start_xyz, box.start_xyz)][::-1]
    out[lo[0]:lo[0] + cutout.shape[0], lo[1]:lo[1] + cutout.shape[1],
        lo[2]:lo[2] + cutout.shape[2]] = cutout
    return out, filled


def chunk_names(spec: VolumeSpec, box: Box) -> List[str]:
    """Names of the storage chunks of ``spec`` that ``box`` (voxels at its mip) touches, as
    cloud-volume names them (and keys its in-memory cache)."""
    inner = box.intersect(spec.bounds)
    if inner is None:
        return []
    ranges = []
    for a, b, o, c, n in zip(inner.start_xyz, inner.stop_xyz, spec.voxel_offset_xyz,
                             spec.chunk_size_xyz, spec.size_xyz):
        first, last = (a - o) // c, (b - 1 - o) // c
        ranges.append([(o + i * c, min(o + (i + 1) * c, o + n)) for i in range(first, last + 1)])
    return [f"{spec.key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
            for (x0, x1), (y0, y1), (z0, z1) in itertools.product(*ranges)]


def chunk_voxels(name: str) -> int:
    """Voxel count of a chunk from its name."""
    spans = name.rsplit("/", 1)[-1].split("_")
    return math.prod(int(b) - int(a) for a, b in (s.split("-") for s in spans))


def plan_reads(spec: VolumeSpec, boxes: List[Box]) -> Tuple[List[Box], List[Optional[int]]]:
    """Group crop boxes (voxels at ``spec``'s mip) into few cutouts that read no needless chunk.

    Returns (regions, region index per box). Each region is the bounding box of the in-bounds
    parts of the boxes assigned to it; a box entirely outside the bounds gets None. Two regions merge only when their bounding box touches no chunk
    that neither touched, so a region never reads a chunk no member needs. Chunks shared by
    regions that do not merge are read by each (an in-memory chunk cache can serve the second).
    """
    by_cells = {}  # (lo, hi) in chunk-grid units -> [lo, hi, cells, box indices, voxel union]
    which: List[Optional[int]] = [None] * len(boxes)
    for i, box in enumerate(boxes):
        inner = box.intersect(spec.bounds)
        if inner is None:
            continue
        lo = tuple((a - o) // c for a, o, c in
                   zip(inner.start_xyz, spec.voxel_offset_xyz, spec.chunk_size_xyz))
        hi = tuple((b - 1 - o) // c + 1 for b, o, c in
                   zip(inner.stop_xyz, spec.voxel_offset_xyz, spec.chunk_size_xyz))
        entry = by_cells.get((lo, hi))
        if entry is None:  # boxes on the same chunks share an entry from the start
            by_cells[(lo, hi)] = [lo, hi, set(itertools.product(*map(range, lo, hi))), [i], inner]
        else:
            entry[3].append(i)
            entry[4] = Box(tuple(map(min, entry[4].start_xyz, inner.start_xyz)),
                           tuple(map(max, entry[4].stop_xyz, inner.stop_xyz)))
    grid = list(by_cells.values())
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(grid)), 2):
            lo = tuple(map(min, grid[a][0], grid[b][0]))
            hi = tuple(map(max, grid[a][1], grid[b][1]))
            n_cells = math.prod(h - l for l, h in zip(lo, hi))
            if n_cells > len(grid[a][2]) + len(grid[b][2]):
                continue  # cheap test first: the bounding box has more cells than both hold
            cells = grid[a][2] | grid[b][2]
            if n_cells == len(cells):
                union = Box(tuple(map(min, grid[a][4].start_xyz, grid[b][4].start_xyz)),
                            tuple(map(max, grid[a][4].stop_xyz, grid[b][4].stop_xyz)))
                grid[a] = [lo, hi, cells, grid[a][3] + grid[b][3], union]
                del grid[b]
                merged = True
                break
    regions = []
    for r, (_, _, _, members, union) in enumerate(grid):
        regions.append(union)
        for i in members:
            which[i] = r
    return regions, which
