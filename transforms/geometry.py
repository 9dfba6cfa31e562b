"""Boxes, scale factors and padding: plain integer geometry, no Beam, no I/O.

Boxes are half-open ``[start, stop)`` in voxels, x, y, z order, in the absolute coordinate frame of
their volume (a volume's ``voxel_offset`` moves its bounds, not its frame).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

XYZ = Tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """Half-open voxel box ``[start_xyz, stop_xyz)``."""

    start_xyz: XYZ
    stop_xyz: XYZ

    @property
    def size_xyz(self) -> XYZ:
        return tuple(b - a for a, b in zip(self.start_xyz, self.stop_xyz))

    def contains(self, point_xyz) -> bool:
        return all(a <= p < b for a, p, b in zip(self.start_xyz, point_xyz, self.stop_xyz))

    def intersect(self, other: "Box") -> "Box | None":
        """The overlap of two boxes, or None when they do not overlap."""
        start = tuple(max(a, b) for a, b in zip(self.start_xyz, other.start_xyz))
        stop = tuple(min(a, b) for a, b in zip(self.stop_xyz, other.stop_xyz))
        if any(a >= b for a, b in zip(start, stop)):
            return None
        return Box(start, stop)

    def to_list(self) -> list:
        return [list(self.start_xyz), list(self.stop_xyz)]


def crop_box(center_xyz: XYZ, crop_size_xyz: XYZ) -> Box:
    """Box of exactly ``crop_size_xyz`` voxels around ``center_xyz``: ``[c - s//2, c - s//2 + s)``."""
    start = tuple(int(c) - int(s) // 2 for c, s in zip(center_xyz, crop_size_xyz))
    return Box(start, tuple(a + int(s) for a, s in zip(start, crop_size_xyz)))


def scale_factors(target_resolution_nm, source_resolution_nm) -> XYZ:
    """Integer factor per axis mapping target voxels to source voxels (target_res / source_res).

    Raises ValueError when a factor is not a positive integer (e.g. a source mip coarser than the
    target), since nearest-neighbour upsampling of labels needs whole factors.
    """
    factors = []
    for axis, t, s in zip("xyz", target_resolution_nm, source_resolution_nm):
        ratio = float(t) / float(s)
        whole = round(ratio)
        if whole < 1 or abs(ratio - whole) > 1e-6:
            raise ValueError(
                f"target/source resolution ratio on {axis} is {t:g}/{s:g} = {ratio:g}, not a positive "
                "integer; choose a --source-mip whose resolution divides the target's"
            )
        factors.append(int(whole))
    return tuple(factors)


def nearest_mip(target_resolution_nm, source_resolutions_nm) -> int:
    """The source mip whose resolution is nearest the target's among those that divide it (whole
    factors per axis, as ``scale_factors`` needs): the coarsest such mip, so the least data.

    ``source_resolutions_nm`` lists the source's resolution (x, y, z) per mip. Raises ValueError
    when no mip qualifies.
    """
    best = None
    for mip, resolution in enumerate(source_resolutions_nm):
        try:
            factors = scale_factors(target_resolution_nm, resolution)
        except ValueError:
            continue
        if best is None or math.prod(factors) < best[0]:
            best = (math.prod(factors), mip)
    if best is None:
        raise ValueError("no mip of the source has a resolution dividing the target's "
                         f"{'x'.join(f'{r:g}' for r in target_resolution_nm)} nm")
    return best[1]


def scale_box(box: Box, scale_xyz: XYZ) -> Box:
    """Map a box in target voxels to the box covering the same space in source voxels."""
    return Box(
        tuple(a * f for a, f in zip(box.start_xyz, scale_xyz)),
        tuple(b * f for b, f in zip(box.stop_xyz, scale_xyz)),
    )


def target_voxels_inside(source_box: Box, scale_xyz: XYZ) -> "Box | None":
    """The target voxels whose whole footprint (``scale_xyz`` source voxels per target voxel,
    as ``scale_box`` maps them) lies inside ``source_box``; None when there is none."""
    start = tuple(-(-a // f) for a, f in zip(source_box.start_xyz, scale_xyz))
    stop = tuple(b // f for b, f in zip(source_box.stop_xyz, scale_xyz))
    if any(a >= b for a, b in zip(start, stop)):
        return None
    return Box(start, stop)


def padding(box: Box, bounds: Box) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """Voxels of ``box`` lying outside ``bounds`` before and after, per axis x, y, z.

    Each pair is clipped to the box size, so a box entirely outside has one side equal to its size.
    """
    pads = []
    for a, b, lo, hi in zip(box.start_xyz, box.stop_xyz, bounds.start_xyz, bounds.stop_xyz):
        size = b - a
        before = min(max(lo - a, 0), size)
        after = min(max(b - hi, 0), size)
        pads.append((before, after))
    return tuple(pads)


def xyzc_to_zyx(cutout: np.ndarray) -> np.ndarray:
    """CloudVolume cutout (x, y, z, channel=1) -> C-contiguous array (z, y, x)."""
    if cutout.ndim == 4:
        if cutout.shape[3] != 1:
            raise ValueError(f"expected one channel, got shape {cutout.shape}")
        cutout = cutout[..., 0]
    return np.ascontiguousarray(np.transpose(cutout, (2, 1, 0)))


def upsample_nearest_zyx(array_zyx: np.ndarray, scale_xyz: XYZ) -> np.ndarray:
    """Nearest-neighbour upsampling of a (z, y, x) array by integer factors given in x, y, z order."""
    out = array_zyx
    for axis_zyx, factor in zip((2, 1, 0), scale_xyz):
        if factor != 1:
            out = np.repeat(out, factor, axis=axis_zyx)
    return np.ascontiguousarray(out)
