"""The elements that travel between stages: small records that may cross a shuffle (Instance,
DeadLetter, WrittenShard), and the array-carrying types that stay inside one fused stage
(Fetched -> Cleaned -> Varied), one type per stage an instance has reached."""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from synanno_datagen.errors import plain, redact
from synanno_datagen.transforms.geometry import XYZ, Box

# Dead-letter reasons (a contract with the manifest's counts and users' scripts).
MISSING_COORDINATE = "missing_coordinate"
NOT_A_NUMBER = "not_a_number"
OUTSIDE_VOLUME = "outside_volume"
INVALID_ID = "invalid_id"
DUPLICATE_ID = "duplicate_id"
CHANGED_SINCE_WRITTEN = "changed_since_written"   # incremental: an id an earlier run wrote
EXTRA_CELLS = "extra_cells"   # a CSV row with text beyond its header's columns
# A row rejected before any fetch (counted in rows_rejected, remembered as a row)
TABLE_REASONS = (MISSING_COORDINATE, NOT_A_NUMBER, OUTSIDE_VOLUME, INVALID_ID, DUPLICATE_ID,
                 CHANGED_SINCE_WRITTEN, EXTRA_CELLS)
EMPTY_TARGET = "empty_target"
MISSING_CHUNKS = "missing_chunks"
FETCH_ERROR = "fetch_error"
UNEXPECTED_ERROR = "unexpected_error"

DEAD = "dead_letter"  # every stage's output of DeadLetters, and the tag its DoFns yield them on


@dataclass(frozen=True)
class RowRef:
    """Where a table row came from: table shard number (sorted shard order) and 0-based data
    row."""

    table_shard: int
    row: int


@dataclass(frozen=True)
class Instance:
    """One synapse to cut. Coordinates are absolute target-volume voxels, x, y, z; pre and post
    points are None when the table has none."""

    instance_id: int
    center_xyz: XYZ
    pre_pt_xyz: Optional[XYZ]
    post_pt_xyz: Optional[XYZ]
    ref: RowRef
    row: Tuple[Tuple[str, str], ...] = ()
    split: str = ""
    group: int = -1   # its shard group (transforms.shards), set by PlanShards

    def replace(self, **changes) -> "Instance":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DeadLetter:
    """A row or instance that produced no examples, and why."""

    reason: str
    details: str
    stage: str
    instance_id: Optional[int] = None
    ref: Optional[RowRef] = None
    row: Tuple[Tuple[str, str], ...] = ()

    def sort_key(self):
        ref = (self.ref.table_shard, self.ref.row) if self.ref else (1 << 62, 0)
        return ref, self.instance_id if self.instance_id is not None else -(1 << 63), self.reason

    def to_json(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "reason": self.reason,
            "details": self.details,
            "stage": self.stage,
            "table_shard": self.ref.table_shard if self.ref else None,
            "table_row": self.ref.row if self.ref else None,
            "row": dict(self.row),
        }

    @classmethod
    def for_instance(cls, instance: Instance, reason: str, details: str, stage: str):
        """The dead letter of ``instance``; URL passwords in ``details`` (a volume's, in a read
        error) are shown as ``***`` (errors.redact)."""
        return cls(reason, redact(details), stage, instance.instance_id, instance.ref,
                   instance.row)


@dataclass(frozen=True)
class Crop:
    """What every stage after fetching knows of an instance: its boxes and raw crop.

    Arrays are (z, y, x); ``source_zyx`` and what later stages add are on the source grid (a
    subclass says when not). ``source_zyx``: uint8 raw EM, padded with the pad
    value outside the source volume. ``filled_chunks``: per volume, chunks absent from storage
    and read as zeros. Elements are never changed in place: each stage makes the next type.
    """

    instance: Instance
    target_box: Box
    source_box: Box
    target_padding_xyz: tuple
    source_padding_xyz: tuple
    source_zyx: np.ndarray
    filled_chunks: Dict[str, int]  # {volume: chunks read as zeros}

    def crop_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Crop)}


@dataclass(frozen=True)
class Fetched(Crop):
    """FetchSubvolumes' output: ``labels_zyx``, the target labels (volume dtype) at the target
    volume's resolution (the source grid is ``scale_xyz`` finer), 0 outside the volume."""

    labels_zyx: np.ndarray


@dataclass(frozen=True)
class Cleaned(Crop):
    """CleanTargets' output: ``target_zyx``, the uint8 0/1 mask of the centred synapse;
    ``center_distance_nm``: 0.0 when the centre voxel is on it, else how far (nm) the centre is
    from its nearest voxel (the centre fell on no label and the nearest synapse was taken)."""

    target_zyx: np.ndarray
    center_distance_nm: float = dataclasses.field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class Varied(Cleaned):
    """MakeVariants' output: ``seed_slices``, per variant the sorted z indices kept as seeds."""

    seed_slices: Tuple[Tuple[int, ...], ...]


@dataclass(frozen=True)
class WrittenShard:
    """What the worker of one shard group wrote for one split: small whatever the group holds, it
    crosses the shuffle that names the shards. ``path``: its TFRecord file under a temporary name
    (None without the tfrecord format); ``index``: the file of its instances' index lines, in
    record order, under a temporary name (the shard number is added when the shards are named);
    ``counts``: instances, variants, npy_files, npy_bytes, filled_source, filled_target (chunks
    read as zeros), centers_off_label (instances whose centre is on no label)."""

    group: int
    split: str
    path: Optional[str]
    records: int
    bytes: int
    sha256: str
    index: str
    counts: Dict[str, int]


DETAILS_LIMIT = 2000   # characters of a dead letter's details


def exception_text(exc_type: type, exc_repr: str) -> str:
    """``"Type: message"`` from Beam's ``repr(exception)`` (``"Type('message')"``), at most
    DETAILS_LIMIT characters: a dead letter's details."""
    name = exc_type.__name__
    message = exc_repr
    if exc_repr.startswith(name + "(") and exc_repr.endswith(")"):
        try:
            message = ast.literal_eval(exc_repr[len(name) + 1:-1])
        except (ValueError, SyntaxError):
            message = exc_repr[len(name) + 1:-1]
        message = message if isinstance(message, str) else repr(message)
    return redact(plain(f"{name}: {message}"))[:DETAILS_LIMIT]
