"""Padded crops of one volume for the members of a work block, cut from few region reads.

Absent chunks are found exactly, whatever the storage layout: a region is read strictly, and only
if that fails is it read again chunk by chunk, which tells absent chunks (read as zeros) and
chunks that cannot be read (a decode or storage error) apart. A member's crop then knows which of
its own chunks were absent or failed, so errors reach exactly the members whose crops touch them.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Tuple

import numpy as np

from synanno_datagen.transforms.geometry import Box
from synanno_datagen.transforms.readers import ChunkMissing
from synanno_datagen.transforms.volumes import MissingChunks, VolumeSpec, chunk_names, chunk_pieces, plan_reads


@dataclass
class RegionRead:
    """A region's voxels (z, y, x; absent and failed chunks as 0) and what was not in them."""

    array_zyx: np.ndarray
    absent: FrozenSet[str] = frozenset()                        # chunks not in storage
    errors: Dict[str, Exception] = field(default_factory=dict)  # chunks that could not be read


def paste(out_zyx: np.ndarray, out_box: Box, data_zyx: np.ndarray, data_box: Box) -> None:
    """Copy the overlap of ``data_box`` (holding ``data_zyx``) into ``out_zyx`` (``out_box``)."""
    inner = out_box.intersect(data_box)
    if inner is None:
        return
    dst = [a - b for a, b in zip(inner.start_xyz, out_box.start_xyz)][::-1]
    src = [a - b for a, b in zip(inner.start_xyz, data_box.start_xyz)][::-1]
    z, y, x = inner.size_xyz[::-1]
    out_zyx[dst[0]:dst[0] + z, dst[1]:dst[1] + y, dst[2]:dst[2] + x] = \
        data_zyx[src[0]:src[0] + z, src[1]:src[1] + y, src[2]:src[2] + x]


def read_region(reader, spec: VolumeSpec, region: Box) -> RegionRead:
    """Read ``region`` (inside the bounds) with one read; if that fails, chunk by chunk.

    Absent chunks are those whose strict read raises ChunkMissing (cloud-volume) or, where
    reads fill them with zeros (``reader.checks_absence``: tensorstore), those among the chunks
    that read as all zeros that the reader finds absent (so no other chunk needs asking).
    """
    absent, errors = set(), {}
    try:
        array = reader.read_zyx(region)
    except Exception:  # noqa: BLE001 - sorted out chunk by chunk below
        array = np.zeros(region.size_xyz[::-1], spec.dtype)
        for name, piece in chunk_pieces(spec, region):
            try:
                paste(array, region, reader.read_zyx(piece), piece)
            except ChunkMissing:
                absent.add(name)
            except Exception as error:  # noqa: BLE001 - reaches the members that touch it
                errors[name] = error
    if reader.checks_absence:
        zero = [name for name, piece in chunk_pieces(spec, region)
                if name not in errors and not _view(array, region, piece).any()]
        found, unknown = reader.absent(zero)
        absent |= found
        errors.update(unknown)
    return RegionRead(array, frozenset(absent), errors)


def _view(array_zyx: np.ndarray, array_box: Box, box: Box) -> np.ndarray:
    """The part of ``array_zyx`` (holding ``array_box``) inside ``box``."""
    lo = [a - b for a, b in zip(box.start_xyz, array_box.start_xyz)][::-1]
    z, y, x = box.size_xyz[::-1]
    return array_zyx[lo[0]:lo[0] + z, lo[1]:lo[1] + y, lo[2]:lo[2] + x]


class BlockReader:
    """Crops of ``boxes`` (voxels at the reader's mip) from one volume, padded with ``fill``.

    The boxes are grouped into regions by ``plan_reads`` (no region reads a chunk that no member
    needs); each region is read once, when its first member asks, and dropped after its last.
    """

    def __init__(self, reader, spec: VolumeSpec, boxes: List[Box], fill_value,
                 missing_chunks: str):
        self._reader, self._spec, self._boxes = reader, spec, boxes
        self._fill, self._missing = fill_value, missing_chunks
        self.regions, self._which = plan_reads(spec, boxes)
        self._left = collections.Counter(r for r in self._which if r is not None)
        self._read: Dict[int, RegionRead] = {}

    def crop(self, i: int) -> Tuple[np.ndarray, List[str]]:
        """Box ``i``'s crop (z, y, x) and the names of its chunks read as zeros.

        Raises MissingChunks when the crop touches absent chunks and the mode is "error", or the
        error of a chunk of the crop that could not be read.
        """
        box, r = self._boxes[i], self._which[i]
        out = np.full(box.size_xyz[::-1], self._fill, dtype=self._spec.dtype)
        if r is None:  # entirely outside the volume: nothing to read
            return out, []
        try:
            region = self._region(r)
            names = chunk_names(self._spec, box)
            failed = [n for n in names if n in region.errors]
            if failed:
                raise region.errors[failed[0]]
            absent = [n for n in names if n in region.absent]
            if absent and self._missing != "zero":
                raise MissingChunks(self._spec.url, absent)
            paste(out, box, region.array_zyx, self.regions[r])
            return out, absent
        finally:
            self._left[r] -= 1
            if not self._left[r]:
                self._read.pop(r, None)

    def _region(self, r: int) -> RegionRead:
        if r not in self._read:
            self._read[r] = read_region(self._reader, self._spec, self.regions[r])
        return self._read[r]


def padded_crop(reader, spec: VolumeSpec, box: Box, fill_value,
                missing_chunks: str) -> Tuple[np.ndarray, List[str]]:
    """One crop read on its own (a block of one member)."""
    return BlockReader(reader, spec, [box], fill_value, missing_chunks).crop(0)
