"""The table's units as the table declares them: nm per unit of its point columns, x, y, z.

CAVEclient's ``query_table(..., desired_resolution=[4, 4, 40])`` returns a DataFrame with
``df.attrs["dataframe_resolution"]`` (without ``desired_resolution``: the table's own voxel
resolution), and pandas >= 2.1 writes ``DataFrame.attrs`` into a Parquet file's schema metadata
as JSON under ``PANDAS_ATTRS`` (table_formats.ShardSchema.pandas_attrs). Without
``--coordinate-resolution`` the run reads its points in those units (shards declaring others, or
none, are refused); a flag that says otherwise is refused, and shards that declare none are read
in the flag's units.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Optional, Sequence, Tuple

from synanno_datagen.errors import ConfigError

log = logging.getLogger(__name__)

RESOLUTION_ATTR = "dataframe_resolution"
_FLAG = "--coordinate-resolution"
_TABLE_FLAG = "--materialization"


def declared(pandas_attrs: Optional[str]) -> Any:
    """A shard's ``dataframe_resolution`` as stored (a JSON value: usable when a list of three
    positive numbers); None when it declares none (no PANDAS_ATTRS, metadata that is not a JSON
    object, no such key, or null)."""
    if pandas_attrs is None:
        return None
    try:
        attrs = json.loads(pandas_attrs)
    except ValueError:   # not pandas' JSON: no declaration
        return None
    return attrs.get(RESOLUTION_ATTR) if isinstance(attrs, dict) else None


def coordinate_resolution(given: Optional[Sequence[float]], shards: Sequence[str],
                          values: Sequence[Any]) \
        -> Tuple[Optional[Tuple[float, float, float]], bool]:
    """(nm per table unit xyz, None for the target's; whether it was read from the table) from
    ``--coordinate-resolution`` (``given``) and each shard's declaration (``values``, as
    ``declared`` gives them). Without the flag every shard must declare the same units (none
    included: then the target's voxels); with it, every usable declaration must be the flag's,
    and shards declaring none are read in the flag's units (an export of one night by pandas
    2.1+ beside older ones). Raises ConfigError naming the shard."""
    given = tuple(float(v) for v in given) if given is not None else None
    declaring = [(path, value) for path, value in zip(shards, values) if value is not None]
    if not declaring:
        return given, False
    if given is None:
        first = values[0]
        for path, value in zip(shards[1:], values[1:]):
            if value != first:   # (4 == 4.0: JSON's integers and floats alike)
                raise ConfigError(
                    f"{_TABLE_FLAG}: {path} declares {RESOLUTION_ATTR} {_shown(value)} but "
                    f"{shards[0]} {_shown(first)} (pandas attrs in their Parquet metadata); the "
                    f"shards of one table must be in one unit: pass {_FLAG} X Y Z, the units "
                    "of them all, or export them again alike")
        table_nm = _usable(first)
        if table_nm is None:
            raise ConfigError(
                f"{_TABLE_FLAG} {shards[0]}: its {RESOLUTION_ATTR} (pandas attrs) is "
                f"{_shown(first)}, not three positive numbers (nm per unit of its points, x y "
                f"z); pass {_FLAG} X Y Z, the units of the point columns read")
        log.info("%s %s: points read in %s nm per unit, the table's %s (pandas attrs)",
                 _TABLE_FLAG, shards[0], nm_text(table_nm), RESOLUTION_ATTR)
        return table_nm, True
    for path, value in declaring:
        table_nm = _usable(value)
        if table_nm is None:
            log.warning("%s %s: %s's %s (pandas attrs) is %s, not three positive numbers; the "
                        "flag's units are used", _FLAG, nm_text(given), path, RESOLUTION_ATTR,
                        _shown(value))
        elif table_nm != given:
            raise ConfigError(
                f"{_FLAG} {nm_text(given)}: {path} declares {RESOLUTION_ATTR} "
                f"{nm_text(table_nm)} nm per unit (pandas attrs in its Parquet metadata, as "
                "CAVEclient sets them); leave the flag out to read its points in those units, or, if the attrs are "
                f"wrong, set df.attrs[{RESOLUTION_ATTR!r}] to the right units and write the "
                "table again")
    return given, False


def _usable(value: Any) -> Optional[Tuple[float, float, float]]:
    """``value`` as three positive finite floats, or None."""
    if not isinstance(value, list) or len(value) != 3 or \
            any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return None
    try:
        xyz = tuple(float(v) for v in value)
    except OverflowError:   # an integer beyond any float
        return None
    return xyz if all(math.isfinite(v) and v > 0 for v in xyz) else None


def nm_text(xyz: Sequence[float]) -> str:
    """``4 4 40``, ``4.5 8 1e-05``: each as written, whole numbers without ``.0``."""
    return " ".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in xyz)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    usable = _usable(value)
    return nm_text(usable) if usable else json.dumps(value)[:80]
