"""Table points -> target-volume voxels: which columns hold a point, and the cell rules.

A point is one column of [x, y, z] lists (Parquet lists; in CSV text such as ``[120, 220, 14]``,
numpy's ``[120 220 14]``, a list of numpy 2 scalars ``[np.int64(120), ...]``, or a tuple's
``(120, 220, 14)`` or ``(np.int32(120), ...)``, read by the same rules) or three columns
``NAME_x, NAME_y, NAME_z``. A value in table units
becomes the target voxel ``floor(value * table_nm / target_nm)`` per axis, exactly as written,
except that a product within a millionth of a voxel below an integer is that integer (to_voxel).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Optional, Sequence, Tuple, Union

from synanno_datagen.transforms.geometry import XYZ
from synanno_datagen.transforms.records import MISSING_COORDINATE, NOT_A_NUMBER, OUTSIDE_VOLUME

AXES = ("x", "y", "z")
MISSING_TEXT = ("", "nan", "na", "null", "none")
_EXACT_DIGITS = 30   # decimal exponents read exactly; beyond, the float
_MAX_TEXT = 64       # characters of a coordinate's text
_MAX_EXACT = 2**53
SNAP_VOXELS = Fraction(1, 10**6)   # a point this close below a voxel's edge is on it (to_voxel)
_SPLIT = re.compile(r"\s+")
# a decimal with an exponent; one Decimal refuses is beyond its range (10**18)
_WITH_EXPONENT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?)\d+")
_HUGE_EXPONENT = 10**17
_NUMPY_SCALAR = re.compile(r"np\.(?:u?int(?:8|16|32|64)|float(?:16|32|64)|longdouble)"
                           r"\(\s*'?([^']*?)'?\s*\)\Z")


class BadValue(ValueError):
    """A cell that cannot be used; ``reason`` is the dead-letter reason."""

    def __init__(self, reason: str, details: str):
        super().__init__(details)
        self.reason = reason


@dataclass(frozen=True)
class PointColumns:
    """Where a point is: ``(list_column,)`` or ``(x_column, y_column, z_column)``."""

    columns: Tuple[str, ...]

    @property
    def is_list(self) -> bool:
        return len(self.columns) == 1

    def describe(self) -> str:
        return self.columns[0] if self.is_list else "/".join(self.columns)


CENTER_COLUMNS = PointColumns(AXES)
PRE_PREFIX, POST_PREFIX = "pre_pt", "post_pt"
UNIT_SCALE = (Fraction(1),) * 3


# Binary float types: the smallest integer a value of the type may stand for another than
# itself (2**53 + 1 is stored as 2**53): below it every integer is held exactly
FLOAT_INEXACT_FROM = {"float16": 2**11, "float32": 2**24, "float64": 2**53}


@dataclass(frozen=True)
class TableLayout:
    """The table's point columns (pre and post may be absent) and table units -> target voxels.

    ``to_target_xyz`` is ``table_nm / target_nm`` per axis, as exact fractions.
    ``float_ids``, when some Parquet shard's id column is binary floats: per shard (by number),
    the float type (``float64``, see FLOAT_INEXACT_FROM) or None.
    """

    center: PointColumns = CENTER_COLUMNS
    pre: Optional[PointColumns] = PointColumns(tuple(f"{PRE_PREFIX}_{a}" for a in AXES))
    post: Optional[PointColumns] = PointColumns(tuple(f"{POST_PREFIX}_{a}" for a in AXES))
    to_target_xyz: Tuple[Fraction, Fraction, Fraction] = UNIT_SCALE
    float_ids: Tuple[Optional[str], ...] = ()

    def point_features(self) -> Tuple[str, ...]:
        """The point features records carry: ``center_xyz`` and those of pre/post present."""
        present = {"pre_pt_xyz": self.pre, "post_pt_xyz": self.post}
        return ("center_xyz",) + tuple(name for name, point in present.items() if point)

    def columns(self) -> Tuple[str, ...]:
        """The table columns the points are read from."""
        return tuple(c for point in (self.center, self.pre, self.post) if point
                     for c in point.columns)

    def to_manifest(self) -> dict:
        def cols(point):
            return list(point.columns) if point else None

        return {"center_xyz": cols(self.center), "pre_pt_xyz": cols(self.pre),
                "post_pt_xyz": cols(self.post),
                "to_target_voxels_xyz": [str(f) for f in self.to_target_xyz]}


def candidate_columns(name: str) -> Tuple[Tuple[str], Tuple[str, str, str]]:
    """The two places a point NAME may be: one list column, or ``NAME_x/_y/_z``."""
    return (name,), tuple(f"{name}_{a}" for a in AXES)


def find_point(name: str, columns: Sequence[str]) -> Optional[PointColumns]:
    """A column named exactly ``name`` (lists), else ``name_x/_y/_z``; None when neither is there.

    Raises ValueError when only some of ``name_x/_y/_z`` exist.
    """
    single, split = candidate_columns(name)
    if name in columns:
        return PointColumns(single)
    present = [c for c in split if c in columns]
    if len(present) == 3:
        return PointColumns(split)
    if present:
        missing = [c for c in split if c not in columns]
        raise ValueError(f"has {', '.join(present)} but not {', '.join(missing)}")
    return None


def to_target_factors(table_nm: Sequence[float], target_nm: Sequence[float]) \
        -> Tuple[Fraction, ...]:
    """Exact ``table_nm / target_nm`` per axis (decimals as written, e.g. 4.5 -> 9/2)."""
    return tuple(Fraction(repr(float(t))) / Fraction(repr(float(g)))
                 for t, g in zip(table_nm, target_nm))


def number_from_text(text: str) -> Union[int, float, None]:
    """``int`` when the text is an integer (exact at any size), else ``float``; None if neither,
    and for spellings only Python reads as numbers (``1_000``, digits of other scripts)."""
    if "_" in text or not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def parse_number(text: Optional[str], what: str) -> Union[int, Fraction]:
    """A coordinate from a cell, exactly as written: an int, or the decimal's Fraction
    (``8.008`` is 1001/125, not the nearest binary float); raises BadValue."""
    text = (text or "").strip()
    if text.lower() in MISSING_TEXT:
        raise BadValue(MISSING_COORDINATE, f"{what} is empty ({text!r})")
    if len(text) > _MAX_TEXT:   # no coordinate is written that long (and exact reading costs)
        raise BadValue(NOT_A_NUMBER, f"{what} is not a coordinate: {len(text)} characters")
    value = number_from_text(text)
    if value is None:
        raise BadValue(NOT_A_NUMBER, f"{what} is not a number: {text!r}")
    if isinstance(value, float) and not math.isfinite(value) and not _finite_decimal(text):
        raise BadValue(NOT_A_NUMBER, f"{what} is not a finite coordinate: {text!r}")
    if abs(value) > _MAX_EXACT:
        raise BadValue(OUTSIDE_VOLUME, f"{what} is beyond any volume: {text!r}")
    if isinstance(value, float):
        try:
            exact = exact_decimal(text)
        except InvalidOperation:   # a spelling float() reads and Decimal does not
            return Fraction(value)
        # Decimal keeps the exponent as written: 1e-100000000 is no work until made a Fraction.
        # A value that small stands in as +-10**-31, which floors alike for any factor < 10**30
        if exact.is_zero() or exact.adjusted() >= -_EXACT_DIGITS:
            return Fraction(exact) if exact.adjusted() <= _EXACT_DIGITS else Fraction(value)
        return Fraction(-1 if exact.is_signed() else 1, 10 ** (_EXACT_DIGITS + 1))
    return value


def _finite_decimal(text: str) -> bool:
    """Whether ``text`` is a finite decimal (``1e400``, beyond a float, is)."""
    try:
        return exact_decimal(text).is_finite()
    except InvalidOperation:
        return False


def exact_decimal(text: str) -> Decimal:
    """``Decimal(text)``, also where its exponent is beyond Decimal's (``1e10000000000000000000``):
    such an exponent stands in as 10**17 with its sign, as far beyond any volume or int64, or
    as far below a voxel. InvalidOperation for text that is no decimal."""
    try:
        return Decimal(text)
    except InvalidOperation:
        found = _WITH_EXPONENT.fullmatch(text.strip())
        if found is None:
            raise
        return Decimal(f"{found.group(1)}e{found.group(2)}{_HUGE_EXPONENT}")


def to_voxel(value: Union[int, float, Fraction], factor: Fraction) -> int:
    """``floor(value * factor + SNAP_VOXELS)``, exactly: a point within a millionth of a voxel
    below a voxel's edge is in that voxel. Binary floats put points there that were meant to be
    on the edge (CAVE's ``desired_resolution`` writes z=63 of 33 nm as 51.974999999999994 in
    40 nm units: 62.99999999999999 back in 33 nm)."""
    n, d = factor.numerator, factor.denominator
    if isinstance(value, int):
        return (value * n * SNAP_VOXELS.denominator + d) // (d * SNAP_VOXELS.denominator)
    return math.floor(Fraction(value) * factor + SNAP_VOXELS)


def split_list_text(text: Optional[str], what: str) -> Tuple[str, ...]:
    """``[x, y, z]`` or ``[x y z]`` text, or a tuple's ``(x, y, z)`` (pandas' to_csv of a column
    of tuples), -> its item texts (any number of them)."""
    text = (text or "").strip()
    if text.lower() in MISSING_TEXT:
        raise BadValue(MISSING_COORDINATE, f"{what} is empty ({text!r})")
    if not (text[:1] + text[-1:] in ("[]", "()")):
        raise BadValue(NOT_A_NUMBER, f"{what} is not an [x, y, z] list: {text!r}")
    inner = text[1:-1].strip()
    if not inner:
        return ()
    if "," in inner:
        return tuple(_numpy_scalar_text(item.strip()) for item in inner.split(","))
    return tuple(_SPLIT.split(inner))


def _numpy_scalar_text(item: str) -> str:
    """``np.int64(120)`` (a numpy 2 scalar as str() of a list of them prints it) -> ``120``."""
    found = _NUMPY_SCALAR.match(item)
    return found.group(1).strip() if found else item


def parse_point(row: dict, point: PointColumns, to_target_xyz=UNIT_SCALE) -> XYZ:
    """A point from a row, in target voxels; raises BadValue with a dead-letter reason."""
    if point.is_list:
        column = point.columns[0]
        items = split_list_text(row.get(column), f"column {column!r}")
        if len(items) != 3:
            reason = MISSING_COORDINATE if len(items) < 3 else NOT_A_NUMBER
            raise BadValue(reason, f"column {column!r} holds {len(items)} values, not [x, y, z]: "
                           f"{row.get(column)!r}")
        cells = [(text, f"column {column!r} {axis}") for text, axis in zip(items, AXES)]
    else:
        cells = [(row.get(c), f"column {c!r}") for c in point.columns]
    return tuple(to_voxel(parse_number(text, what), factor)
                 for (text, what), factor in zip(cells, to_target_xyz))
