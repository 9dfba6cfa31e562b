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


def keep_center_component(labels_zyx: np.ndarray, resolution_nm_zyx) -> Optional[np.ndarray]:
    """Binary mask (uint8 0/1, same (z, y, x) shape) of the component the crop is centred on.

    Components are 26-connected and computed per label value, so touching synapses with different
    ids stay apart. The kept component is the one containing the centre voxel ``shape // 2``; if
    the centre is background, the one owning the foreground voxel nearest the centre in physical
    distance (nm, using ``resolution_nm_zyx``); ties go to the larger component, then to the
    smaller component number (raster order). Returns None when there is no foreground at all.
    """
    import cc3d  # heavy native import, only where it is needed

    components = cc3d.connected_components(labels_zyx, connectivity=26)
    center = tuple(n // 2 for n in labels_zyx.shape)
    chosen = int(components[center])
    if chosen == 0:
        chosen = _nearest_component(components, center, resolution_nm_zyx)
        if chosen == 0:
            return None
    return (components == chosen).astype(np.uint8)


def _nearest_component(components: np.ndarray, center_zyx, resolution_nm_zyx) -> int:
    """Component number with a voxel nearest the centre (nm); 0 when there is no foreground."""
    zz, yy, xx = np.nonzero(components)
    if zz.size == 0:
        return 0
    res = np.asarray(resolution_nm_zyx, dtype=np.float64)
    d2 = ((zz - center_zyx[0]) * res[0]) ** 2 + ((yy - center_zyx[1]) * res[1]) ** 2
    d2 += ((xx - center_zyx[2]) * res[2]) ** 2
    nearest = d2 == d2.min()
    candidates = np.unique(components[zz[nearest], yy[nearest], xx[nearest]])
    if candidates.size == 1:
        return int(candidates[0])
    sizes = np.bincount(components.ravel())[candidates]
    # Largest first; np.argmax returns the first maximum, i.e. the smallest component number.
    return int(candidates[int(np.argmax(sizes))])


class CleanTargetFn(beam.DoFn):
    """Fetched -> Cleaned (the centred synapse as a 0/1 mask, labels dropped), or an
    ``empty_target`` DeadLetter on the DEAD output."""

    def __init__(self, source_resolution_nm_xyz):
        self._resolution_nm_zyx = tuple(source_resolution_nm_xyz)[::-1]
        self._empty = Metrics.counter("synanno", "empty_targets")

    def process(self, fetched: Fetched):
        mask = keep_center_component(fetched.labels_zyx, self._resolution_nm_zyx)
        if mask is None:
            self._empty.inc()
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                fetched.instance, EMPTY_TARGET, "no synapse voxel in the target crop",
                "CleanTargets"))
            return
        yield Cleaned(**fetched.crop_fields(), target_zyx=mask)


class CleanTargets(beam.PTransform):
    """Fetched -> outputs ``ok`` (Cleaned) and ``dead_letter`` (empty targets, exceptions)."""

    def __init__(self, source_resolution_nm_xyz):
        super().__init__()
        self._resolution = tuple(source_resolution_nm_xyz)

    def expand(self, fetched):
        ok, dead = guarded_pardo(fetched, "Clean", CleanTargetFn(self._resolution),
                                 UNEXPECTED_ERROR, "CleanTargets")
        return {"ok": ok, DEAD: dead}
