"""Target cleaning: keep the one synapse component that the crop is centred on, as a 0/1 mask."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from synanno_datagen.transforms.dead_letters import guarded_pardo
from synanno_datagen.transforms.records import (
    DEAD, EMPTY_TARGET, UNEXPECTED_ERROR, Cleaned, DeadLetter, Fetched,
)


def keep_center_component(labels_zyx: np.ndarray, resolution_nm_zyx,
                          scale_zyx=(1, 1, 1),
                          source_padding_zyx=((0, 0), (0, 0), (0, 0))) -> Optional[np.ndarray]:
    """The mask of ``center_component`` alone (None when there is no foreground)."""
    kept = center_component(labels_zyx, resolution_nm_zyx, scale_zyx, source_padding_zyx)
    return None if kept is None else kept[0]


def center_component(labels_zyx: np.ndarray, resolution_nm_zyx, scale_zyx=(1, 1, 1),
                     source_padding_zyx=((0, 0), (0, 0), (0, 0))
                     ) -> Optional[Tuple[np.ndarray, float]]:
    """(mask, distance_nm): the binary mask (uint8 0/1, (z, y, x)) of the component the crop is
    centred on, on the grid ``scale_zyx`` times finer than ``labels_zyx`` (the source grid;
    ``resolution_nm_zyx`` is its resolution).

    Labels count only where the source has data: ``source_padding_zyx`` gives, per axis, the
    fine voxels (before, after) of the crop outside the source volume. A label voxel whose every
    fine voxel lies there is background, and the kept mask is 0 on them (a mask over padding
    has no raw under it, and a seed slice there would show a flat image).

    Components are 26-connected and computed per label value, so touching synapses with different
    ids stay apart. The kept component is the one containing the centre voxel ``shape // 2`` of
    the fine grid; if the centre is background, the one owning the fine voxel nearest the centre
    in physical distance (nm); ties go to the larger component, then to the smaller component
    number (raster order). ``distance_nm``: 0.0 when the centre voxel is on the mask, else the
    distance from it to the mask's nearest voxel. Returns None when there is no foreground.

    Components are found on the labels as given and only the kept mask is upsampled: nearest
    upsampling neither joins nor splits 26-connected components, keeps their raster order and
    scales every size alike, so the result equals the same rule applied to upsampled labels.
    """
    import cc3d  # heavy native import, only where it is needed

    from synanno_datagen.transforms.geometry import upsample_nearest_zyx

    scale = tuple(int(f) for f in scale_zyx)
    labels_zyx = _over_source(labels_zyx, source_padding_zyx, scale)
    if labels_zyx.dtype == np.uint64 and labels_zyx.size and labels_zyx.max() >= 2**63:
        # cc3d fails on such labels (OverflowError when the foreground is one x-row);
        # components depend only on which voxels share a label: number them 0 (background), 1..
        values, inverse = np.unique(labels_zyx, return_inverse=True)
        labels_zyx = (inverse.reshape(labels_zyx.shape) + (values[0] != 0)).astype(np.uint32)
    components = cc3d.connected_components(labels_zyx, connectivity=26)
    center = tuple(n * f // 2 for n, f in zip(labels_zyx.shape, scale))   # fine grid
    chosen = int(components[tuple(c // f for c, f in zip(center, scale))])
    if chosen == 0:
        chosen, _ = _nearest_component(components, center, resolution_nm_zyx, scale)
        if chosen == 0:
            return None
    mask = upsample_nearest_zyx((components == chosen).astype(np.uint8), scale[::-1])
    mask = _over_source(mask, source_padding_zyx)   # (its coarse voxels each keep a fine one)
    if mask[center]:
        return mask, 0.0
    # measured on the mask itself: the fine voxels of its coarse ones over padding are cut
    return mask, _nearest_component(mask, center, resolution_nm_zyx, (1, 1, 1))[1]


def _over_source(array_zyx: np.ndarray, padding_zyx, scale_zyx=(1, 1, 1)) -> np.ndarray:
    """``array_zyx`` with 0 on its voxels whose ``scale_zyx`` fine voxels all lie in the fine
    grid's padding ``padding_zyx`` ((before, after) per axis); a copy only when it changes."""
    cut = [(before // f, after // f) for (before, after), f in zip(padding_zyx, scale_zyx)]
    if not any(before or after for before, after in cut):
        return array_zyx
    out = array_zyx.copy()
    for axis, (before, after) in enumerate(cut):
        index = [slice(None)] * out.ndim
        index[axis] = slice(0, before)
        out[tuple(index)] = 0
        index[axis] = slice(out.shape[axis] - after, out.shape[axis])
        out[tuple(index)] = 0
    return out


def _nearest_component(components: np.ndarray, center_zyx, resolution_nm_zyx, scale_zyx
                       ) -> Tuple[int, float]:
    """(component number with a fine voxel nearest the fine-grid centre, that distance in nm);
    (0, 0.0) when there is no foreground. A coarse voxel i covers fine voxels
    [i*f, i*f + f - 1] per axis."""
    foreground = np.nonzero(components)
    if foreground[0].size == 0:
        return 0, 0.0
    d2 = np.zeros(foreground[0].size, np.float64)
    for index, c, f, r in zip(foreground, center_zyx, scale_zyx, resolution_nm_zyx):
        lo = index.astype(np.int64) * f
        gap = np.maximum(np.maximum(lo - c, c - (lo + f - 1)), 0)
        d2 += (gap * float(r)) ** 2
    nearest = d2 == d2.min()
    distance_nm = math.sqrt(float(d2.min()))
    candidates = np.unique(components[tuple(i[nearest] for i in foreground)])
    if candidates.size == 1:
        return int(candidates[0]), distance_nm
    sizes = np.bincount(components.ravel())[candidates]
    # Largest first; np.argmax returns the first maximum, i.e. the smallest component number.
    return int(candidates[int(np.argmax(sizes))]), distance_nm


class CleanTargetFn(beam.DoFn):
    """Fetched -> Cleaned (the centred synapse as a 0/1 mask, labels dropped, and how far the
    centre is from it), or an ``empty_target`` DeadLetter on the DEAD output."""

    def __init__(self, source_resolution_nm_xyz, scale_xyz=(1, 1, 1)):
        self._resolution_nm_zyx = tuple(source_resolution_nm_xyz)[::-1]
        self._scale_zyx = tuple(scale_xyz)[::-1]
        self._empty = Metrics.counter("synanno", "empty_targets")
        self._off_label = Metrics.counter("synanno", "centers_off_label")

    def process(self, fetched: Fetched):
        padding_zyx = fetched.source_padding_xyz[::-1]
        kept = center_component(fetched.labels_zyx, self._resolution_nm_zyx, self._scale_zyx,
                                padding_zyx)
        if kept is None:
            self._empty.inc()
            where = " where the source volume has data" if fetched.labels_zyx.any() else ""
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                fetched.instance, EMPTY_TARGET, f"no synapse voxel in the target crop{where}",
                "CleanTargets"))
            return
        mask, distance_nm = kept
        if distance_nm:
            self._off_label.inc()
        yield Cleaned(**fetched.crop_fields(), target_zyx=mask, center_distance_nm=distance_nm)


class CleanTargets(beam.PTransform):
    """Fetched -> outputs ``ok`` (Cleaned) and ``dead_letter`` (empty targets, exceptions)."""

    def __init__(self, source_resolution_nm_xyz, scale_xyz=(1, 1, 1)):
        super().__init__()
        self._resolution = tuple(source_resolution_nm_xyz)
        self._scale = tuple(scale_xyz)

    def expand(self, fetched):
        ok, dead = guarded_pardo(fetched, "Clean", CleanTargetFn(self._resolution, self._scale),
                                 UNEXPECTED_ERROR, "CleanTargets")
        return {"ok": ok, DEAD: dead}
