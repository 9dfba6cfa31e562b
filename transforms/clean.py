"""Target cleaning: keep the one synapse component that the crop is centred on, as a 0/1 mask."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from synanno_datagen.transforms.dead_letters import guarded_pardo
from synanno_datagen.transforms.records import (
    DEAD, EMPTY_TARGET, UNEXPECTED_ERROR, Cleaned, DeadLetter, Fetched,
)


def keep_center_component(labels_zyx: np.ndarray, resolution_nm_zyx,
                          scale_zyx=(1, 1, 1)) -> Optional[np.ndarray]:
    """Binary mask (uint8 0/1, (z, y, x)) of the component the crop is centred on, on the grid
    ``scale_zyx`` times finer than ``labels_zyx`` (the source grid; ``resolution_nm_zyx`` is its
    resolution).

    Components are 26-connected and computed per label value, so touching synapses with different
    ids stay apart. The kept component is the one containing the centre voxel ``shape // 2`` of
    the fine grid; if the centre is background, the one owning the fine voxel nearest the centre
    in physical distance (nm); ties go to the larger component, then to the smaller component
    number (raster order). Returns None when there is no foreground at all.

    Components are found on the labels as given and only the kept mask is upsampled: nearest
    upsampling neither joins nor splits 26-connected components, keeps their raster order and
    scales every size alike, so the result equals the same rule applied to upsampled labels.
    """
    import cc3d  # heavy native import, only where it is needed

    from synanno_datagen.transforms.geometry import upsample_nearest_zyx

    scale = tuple(int(f) for f in scale_zyx)
    if labels_zyx.dtype == np.uint64 and labels_zyx.size and labels_zyx.max() >= 2**63:
        # cc3d fails on such labels (OverflowError when the foreground is one x-row);
        # components depend only on which voxels share a label: number them 0 (background), 1..
        values, inverse = np.unique(labels_zyx, return_inverse=True)
        labels_zyx = (inverse.reshape(labels_zyx.shape) + (values[0] != 0)).astype(np.uint32)
    components = cc3d.connected_components(labels_zyx, connectivity=26)
    center = tuple(n * f // 2 for n, f in zip(labels_zyx.shape, scale))   # fine grid
    chosen = int(components[tuple(c // f for c, f in zip(center, scale))])
    if chosen == 0:
        chosen = _nearest_component(components, center, resolution_nm_zyx, scale)
        if chosen == 0:
            return None
    return upsample_nearest_zyx((components == chosen).astype(np.uint8), scale[::-1])


def _nearest_component(components: np.ndarray, center_zyx, resolution_nm_zyx, scale_zyx) -> int:
    """Component number with a fine voxel nearest the fine-grid centre (nm); 0 when there is no
    foreground. A coarse voxel i covers fine voxels [i*f, i*f + f - 1] per axis."""
    foreground = np.nonzero(components)
    if foreground[0].size == 0:
        return 0
    d2 = np.zeros(foreground[0].size, np.float64)
    for index, c, f, r in zip(foreground, center_zyx, scale_zyx, resolution_nm_zyx):
        lo = index.astype(np.int64) * f
        gap = np.maximum(np.maximum(lo - c, c - (lo + f - 1)), 0)
        d2 += (gap * float(r)) ** 2
    nearest = d2 == d2.min()
    candidates = np.unique(components[tuple(i[nearest] for i in foreground)])
    if candidates.size == 1:
        return int(candidates[0])
    sizes = np.bincount(components.ravel())[candidates]
    # Largest first; np.argmax returns the first maximum, i.e. the smallest component number.
    return int(candidates[int(np.argmax(sizes))])


class CleanTargetFn(beam.DoFn):
    """Fetched -> Cleaned (the centred synapse as a 0/1 mask, labels dropped), or an
    ``empty_target`` DeadLetter on the DEAD output."""

    def __init__(self, source_resolution_nm_xyz, scale_xyz=(1, 1, 1)):
        self._resolution_nm_zyx = tuple(source_resolution_nm_xyz)[::-1]
        self._scale_zyx = tuple(scale_xyz)[::-1]
        self._empty = Metrics.counter("synanno", "empty_targets")

    def process(self, fetched: Fetched):
        mask = keep_center_component(fetched.labels_zyx, self._resolution_nm_zyx, self._scale_zyx)
        if mask is None:
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                fetched.instance, EMPTY_TARGET, "no synapse voxel in the target crop",
                "CleanTargets"))
            return
        yield Cleaned(**fetched.crop_fields(), target_zyx=mask)


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
