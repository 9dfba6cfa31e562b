"""--materialization and the column flags -> the table's shards, format, id column and points.

Only headers and Parquet footers are read. Every problem is a ConfigError naming the flag, what
was looked for and what was found.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from synanno_datagen.errors import ConfigError, first_line
from synanno_datagen.pipeline.table_resolution import declared
from synanno_datagen.transforms.points import (
    AXES, CENTER_COLUMNS, POST_PREFIX, PRE_PREFIX, PointColumns, TableLayout, candidate_columns,
    find_point,
)
from synanno_datagen.transforms.table_formats import (
    FORMAT_NAMES, READ_FORMATS, ShardSchema, TableFormatError, has_data_rows, holds_numbers,
    read_schema,
)

log = logging.getLogger(__name__)

TABLE_FLAG = "--materialization"
NO_POINT = "none"   # --pre-column/--post-column value: records without that point
_SHOWN_COLUMNS = 40
# a name ending in the word id: ID, synapse_id, synapse id, synapseId (not valid, rigid)
_ID_LIKE = re.compile(r"(?:^|[^A-Za-z])(?:id|Id|ID|iD)$|[a-z0-9](?:Id|ID)$")
# the words of a name (snake_case, camelCase, UPPER): pre_pt_root_id, preNeuronId, SegmentID
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# words before a final 'id' naming a neuron or segment, whose id many synapses share ...
_NOT_SYNAPSE = frozenset(("neuron", "root", "supervoxel", "sv", "segment", "seg", "body", "cell",
                          "nucleus"))
_SYNAPSE_WORDS = frozenset(("synapse", "syn", "cleft"))   # ... unless the name is a synapse's


@dataclass(frozen=True)
class TableSpec:
    """The table as the run reads it: sorted shards, their one format, id column and points
    (``layout.to_target_xyz`` is left at 1 until the target's resolution is known), and the
    units each shard declares (table_resolution.declared; None: none)."""

    shards: Tuple[str, ...]
    format: str
    id_column: Optional[str]
    layout: TableLayout
    resolution_attrs: Tuple[Any, ...] = ()


def describe_table(pattern: str, id_column: Optional[str], center_column: Optional[str],
                   pre_column: Optional[str], post_column: Optional[str]) -> TableSpec:
    """Shards, format and columns of the table; raises ConfigError."""
    _check_not_empty("--id-column", id_column)
    _check_not_empty("--center-column", center_column)
    shards = match_table(pattern)
    schemas = [_schema(path) for path in shards]
    schema = schemas[0]
    for path, other in zip(shards, schemas):   # (before the shapes: its advice is the fix)
        _check_ids_are_a_column(id_column, other, path)
    for path, other in zip(shards[1:], schemas[1:]):
        _check_same_shape(schema, other, path, shards[0])
    _check_has_rows(pattern, shards)
    first = shards[0]
    layout = TableLayout(
        center=_center(center_column, schema, first),
        pre=_optional_point("--pre-column", pre_column, PRE_PREFIX, schema, first),
        post=_optional_point("--post-column", post_column, POST_PREFIX, schema, first))
    for path, other in zip(shards[1:], schemas[1:]):   # Parquet types may differ by shard
        for flag, point in (("--center-column", layout.center), ("--pre-column", layout.pre),
                            ("--post-column", layout.post)):
            if point is not None and point.is_list:
                _find(flag, point.columns[0], other, path)
    ids = resolve_id_column(id_column, schema.columns, first)
    if ids is None:
        _warn_of_id_like_columns(pattern, schema.columns)
    else:
        layout = _with_float_ids(layout, schemas, ids)
    for path, other in zip(shards, schemas):
        _check_read_once(other, ((ids,) if ids else ()) + layout.columns(), path)
        _check_scalar_types(other, ids, layout, path)
    return TableSpec(tuple(shards), schema.format, ids, layout,
                     tuple(declared(s.pandas_attrs) for s in schemas))


def _check_scalar_types(schema: ShardSchema, ids: Optional[str], layout: TableLayout,
                        path: str) -> None:
    """Refuse an id or x/y/z column of a type no cell of which is a number (a bool or
    timestamp column named by mistake), which would reject every row one by one."""
    named = [("--id-column", ids, (ids,))] if ids else []
    named += [(flag, point.describe(), point.columns)
              for flag, point in (("--center-column", layout.center), ("--pre-column", layout.pre),
                                  ("--post-column", layout.post))
              if point is not None and not point.is_list]
    for flag, name, columns in named:
        for column in columns:
            if not holds_numbers(schema, column):
                raise ConfigError(f"{flag} {name}: {path} has column {column} of type "
                                  f"{schema.types[column]}, not numbers or text; name the "
                                  "right column, or store it as numbers")


def match_table(pattern: str) -> List[str]:
    """Sorted paths of the table's shards (a file or a glob)."""
    from apache_beam.io.filesystems import FileSystems

    from synanno_datagen.transforms.files import storage_location

    try:
        where = storage_location(pattern)
    except ValueError as e:
        raise ConfigError(f"{TABLE_FLAG} {pattern!r}: {e}") from None
    if "://" not in where:
        where = os.path.expanduser(where)   # as --output-dir and the volumes' paths
    named = where   # (the path it names: a file:// URL decoded, ~ expanded)
    if where.endswith("/") or ("://" not in where and os.path.isdir(where)):
        raise ConfigError(f"{TABLE_FLAG} {pattern}: a directory; give a file, or a glob of its "
                          f"shards (e.g. {pattern.rstrip('/')}/*.csv)")
    if _names_a_file(where):
        paths = [where]   # a file named as it is, '[' or '*' in its name included
    else:
        if ("://" not in where and not where.startswith(("/", "."))
                and any(c in where for c in "*?[")):
            where = os.path.join(".", where)   # Beam's local glob needs a leading folder
        try:
            matched = FileSystems.match([where])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for unreadable locations
            raise ConfigError(f"{TABLE_FLAG} {pattern}: cannot list it ({e})") from None
        paths = sorted(m.path for m in matched if not m.path.endswith("/"))
    if not paths:
        decoded = f" (the path {named})" if named != pattern and "://" not in named else ""
        raise ConfigError(f"{TABLE_FLAG} {pattern}: no such file{decoded}; give a table file "
                          f"({READ_FORMATS}), or a glob of shards")
    for path in paths:
        local = path[len("file://"):] if path.startswith("file://") else path
        if "://" in local or not os.path.exists(local):
            continue
        found = os.stat(local)
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(f"{TABLE_FLAG} {path}: not a regular file (a pipe?); a run reads "
                              "the table more than once: write the table to a file")
        if found.st_size == 0:
            raise ConfigError(f"{TABLE_FLAG} {path}: empty (0 bytes); check the export")
    return paths


def _names_a_file(where: str) -> bool:
    """Whether ``where`` is the name of one file or object, globbing characters and all."""
    if "://" not in where:
        return os.path.isfile(where)
    if not any(c in where for c in "*?["):
        return False   # listed as it is by the glob anyway
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(where)
    except Exception:   # (the glob then says what is wrong)
        return False


# Arrow's names of the binary float types
_FLOAT_TYPES = {"halffloat": "float16", "float": "float32", "double": "float64"}


def _with_float_ids(layout: TableLayout, schemas: Sequence[ShardSchema], ids: str) \
        -> TableLayout:
    """``layout`` knowing which Parquet shards hold the id column as binary floats (as pandas
    writes an int64 column holding a null): past 2**53 such a column cannot tell neighbouring
    ids apart, so those ids are invalid (transforms.table.parse_row)."""
    floats = tuple(_FLOAT_TYPES.get(s.types[ids]) if s.types else None for s in schemas)
    return dataclasses.replace(layout, float_ids=floats) if any(floats) else layout


def _warn_of_id_like_columns(pattern: str, columns: Sequence[str]) -> None:
    """Instances are numbered by row without an 'id' column: say so when a column looks like
    one (another case of 'id', or a name ending in a word 'id': ``synapse_id``, ``synapseId``;
    not ``valid``), which the user may have meant. Not a neuron's or segment's id
    (``pre_neuron_id``, ``post_pt_root_id``, ``bodyId``): many synapses share one."""
    like = [c for c in columns if _ID_LIKE.search(c.strip()) and not _names_a_neuron(c)]
    if like:
        log.warning("%s %s: no column named 'id', so instances are numbered by row; to take ids "
                    "from a column (%s), pass --id-column NAME", TABLE_FLAG, pattern,
                    ", ".join(like))


def _names_a_neuron(column: str) -> bool:
    """Whether an id-like name is a neuron's or segment's id (``pre_neuron_id``, ``rootId``),
    not a synapse's (``synapse_segment_id``, ``cleft_segment_id``: a synapse segmentation's
    label of the synapse itself)."""
    words = [w.lower() for w in _WORDS.findall(column)]
    return (len(words) >= 2 and words[-2] in _NOT_SYNAPSE
            and not _SYNAPSE_WORDS.intersection(words))


def resolve_id_column(requested: Optional[str], columns: Sequence[str], path: str) \
        -> Optional[str]:
    """The id column: ``requested``, else 'id' when there is one, else None (ids by row)."""
    if requested is None:
        return "id" if "id" in columns else None
    if requested not in columns:
        raise ConfigError(f"--id-column {requested}: no such column in {path} "
                          f"(found: {found(columns)})")
    return requested


def _check_ids_are_a_column(requested: Optional[str], schema: ShardSchema, path: str) -> None:
    """Refuse ids a Parquet shard holds only as a pandas RangeIndex in its metadata, no column
    (``df.set_index('id').to_parquet()`` of evenly spaced ids): rows would be numbered instead."""
    wanted = "id" if requested is None else requested
    if wanted not in schema.columns and wanted in schema.metadata_indexes:
        raise ConfigError(f"{TABLE_FLAG} {path}: {wanted!r} is the table's pandas index, which "
                          "pandas stored in the file's metadata (a RangeIndex), not as a "
                          "column; write it with df.reset_index().to_parquet(...), or "
                          "to_parquet(..., index=True)")


def found(columns: Sequence[str]) -> str:
    """Column names for a one-line message (long headers are cut)."""
    shown = ",".join(repr(c) if c != c.strip() or "," in c else c
                     for c in columns[:_SHOWN_COLUMNS]) or "nothing"
    more = len(columns) - _SHOWN_COLUMNS
    return shown + (f",... ({more} more)" if more > 0 else "")


def _schema(path: str) -> ShardSchema:
    try:
        schema = read_schema(path)
    except TableFormatError as e:
        raise ConfigError(f"{TABLE_FLAG} {e}") from None
    except Exception as e:
        raise ConfigError(f"{TABLE_FLAG} {path}: cannot read it ({type(e).__name__}: "
                          f"{first_line(e, 200)})") from None
    return schema


def _check_read_once(schema: ShardSchema, read: Sequence[str], path: str) -> None:
    """Refuse a header naming a column the run reads twice: a row keeps only the last of them,
    so the other would be read silently in its place (others, such as a spreadsheet's empty
    trailing names, do not matter)."""
    twice = sorted({c for c in read if schema.columns.count(c) > 1})
    if twice:
        raise ConfigError(f"{TABLE_FLAG} {path}: column {twice[0]!r} appears twice in the "
                          "header; give every column its own name")


def _check_has_rows(pattern: str, shards: Sequence[str]) -> None:
    """A table with a header and no data row would make an empty dataset: refuse it. Shards are
    read until one holds a row (only its first row is read)."""
    try:
        if any(has_data_rows(path) for path in shards):
            return
    except TableFormatError as e:   # says what is wrong, and where
        raise ConfigError(f"{TABLE_FLAG} {e}") from None
    except Exception as e:
        raise ConfigError(f"{TABLE_FLAG} {pattern}: cannot read it ({type(e).__name__}: "
                          f"{first_line(e, 200)})") from None
    what = "no data rows" if len(shards) == 1 else \
        f"none of its {len(shards)} shards has a data row"
    raise ConfigError(f"{TABLE_FLAG} {pattern}: {what} (a header only); the table is empty, "
                      "check the export")


def _check_same_shape(first: ShardSchema, other: ShardSchema, path: str, first_path: str):
    if other.format != first.format:
        raise ConfigError(f"{TABLE_FLAG}: shards mix formats ({first_path} is "
                          f"{FORMAT_NAMES[first.format]}, {path} is "
                          f"{FORMAT_NAMES[other.format]}); give shards of one format")
    if set(other.columns) != set(first.columns):
        lacks = [c for c in first.columns if c not in other.columns]
        extra = [c for c in other.columns if c not in first.columns]
        raise ConfigError(f"{TABLE_FLAG}: {path} has different columns than {first_path} "
                          f"(lacks: {found(lacks) if lacks else 'nothing'}; extra: "
                          f"{found(extra) if extra else 'nothing'}); all shards must share "
                          "one header")


def _center(flag_value: Optional[str], schema: ShardSchema, path: str) -> PointColumns:
    if flag_value is None:
        if all(c in schema.columns for c in CENTER_COLUMNS.columns):
            return CENTER_COLUMNS
        raise ConfigError(f"{TABLE_FLAG} {path}: no centre columns {CENTER_COLUMNS.describe()} "
                          f"(found: {found(schema.columns)}); {_centre_advice(schema)}")
    point = _find("--center-column", flag_value, schema, path)
    if point is None:
        raise ConfigError(_absent("--center-column", flag_value, schema, path))
    return point


def _centre_advice(schema: ShardSchema) -> str:
    """What to do about a table without the default centre columns: the header's likely
    mistake (another separator, other case or spaces), else the flag naming the centre."""
    columns = schema.columns
    separator = next((c for c in ";\t|" if len(columns) == 1 and c in columns[0]), None)
    if schema.types is None and separator:
        return (f"the header is one column holding {separator!r}: CSV cells are separated by "
                "commas; export with commas")
    near = [next((c for c in columns if c.strip().lower() == axis), None)
            for axis in CENTER_COLUMNS.columns]
    if all(near):
        return (f"names are exact (case and spaces): rename {', '.join(found([c]) for c in near)}"
                f" to {', '.join(CENTER_COLUMNS.columns)}")
    like = _point_like(schema, lambda name: _CENTRE_WORDS.search(name.lower()) is not None)
    if like:
        return (f"name the centre with --center-column NAME ({', '.join(like)} "
                f"{'looks like one' if len(like) == 1 else 'look like centres'}: pass "
                f"--center-column {like[0]})")
    return ("name the centre with --center-column NAME (a column of [x, y, z] lists, or "
            "NAME_x/_y/_z)")


# a word starting ctr or cent: ctr_pt_position, center, centre, centroid (not percent)
_CENTRE_WORDS = re.compile(r"(?:^|[^a-z])(?:ctr|cent)")


def _point_like(schema: ShardSchema, keep: Callable[[str], bool]) -> List[str]:
    """Names of the points the table seems to hold that ``keep`` keeps, sorted: NAME of
    NAME_x/_y/_z, or a column of lists (in CSV, where any text may be a list, one whose name
    says position)."""
    columns = schema.columns
    trios = {c[:-2] for c in columns if c[-2:] == "_x"
             and all(c[:-2] + axis in columns for axis in ("_y", "_z"))}
    lists = {c for c in columns if schema.holds_lists(c)
             and (_arrow_list(schema, c) or "position" in c.lower())
             and not (c[-2:] in ("_x", "_y", "_z") and c[:-2] in trios)}
    return sorted(name for name in trios | lists if keep(name))


def _check_not_empty(flag: str, value: Optional[str], more: str = "") -> None:
    """Refuse a column flag given an empty name (an unset variable: ``--id-column "$ID"``)."""
    if value is not None and not value.strip():
        raise ConfigError(f"{flag} {value!r}: empty; give a column name{more}")


def _optional_point(flag: str, flag_value: Optional[str], default: str, schema: ShardSchema,
                    path: str) -> Optional[PointColumns]:
    """The point's columns; None when the default ones are absent (a given NAME must exist) or
    NAME is ``none`` (the point left out: its columns, if any, are not read)."""
    _check_not_empty(flag, flag_value, ", or 'none' to leave the point out")
    if flag_value == NO_POINT:
        return None
    point = _find(flag, flag_value or default, schema, path, given=flag_value is not None)
    if point is None and flag_value is not None:
        raise ConfigError(_absent(flag, flag_value, schema, path))
    if point is None:
        _warn_of_point_like_columns(flag, default, schema, path)
    return point


def _warn_of_point_like_columns(flag: str, default: str, schema: ShardSchema,
                                path: str) -> None:
    """The default columns of a point are absent: say so when others hold one (a CAVE table's
    ``pre_pt_position``: NAME_x/_y/_z, or a column of lists; in CSV, where any text may be a
    list, one whose name says position), which the user may have meant. Not for its other
    columns (``pre_pt_root_id``)."""
    like = _point_like(schema, lambda name: name.startswith(default + "_"))
    if like:
        which = default.partition("_")[0]
        log.warning("%s %s: the %s-synaptic point is left out (no column %s or %s_x/_y/_z); %s "
                    "%s: pass %s %s, or %s none to leave it out", TABLE_FLAG, path, which,
                    default, default, ", ".join(like),
                    "looks like one" if len(like) == 1 else "look like points", flag, like[0],
                    flag)


def _arrow_list(schema: ShardSchema, column: str) -> bool:
    """Whether a Parquet column is of a list type (text, as in CSV, may hold anything)."""
    return schema.types is not None and "list<" in schema.types[column]


def _find(flag: str, name: str, schema: ShardSchema, path: str, given: bool = True) \
        -> Optional[PointColumns]:
    where = f"{flag} {name}: {path}" if given else f"{TABLE_FLAG} {path}:"
    try:
        point = find_point(name, schema.columns)
    except ValueError as e:
        raise ConfigError(f"{where} {e}; a point needs all three") from None
    if point is not None and point.is_list:
        if not _arrow_list(schema, name):   # (a Parquet column of lists is a point as it is)
            _check_not_one_coordinate(flag, name, schema.columns, where)
        if not schema.holds_lists(name):
            raise ConfigError(f"{where} has column {name} of type {schema.types[name]}, not "
                              "[x, y, z] lists")
    return point


def _check_not_one_coordinate(flag: str, name: str, columns: Sequence[str], where: str) -> None:
    """Refuse a point named by one of its x/y/z columns (``ctr_pt_position_x`` of a table with
    ``ctr_pt_position_x/_y/_z``, or ``x`` of x/y/z): read as a column of [x, y, z] lists, every
    row would be rejected (in CSV any column may hold lists)."""
    for axis in AXES:
        if name == axis:
            stem, trio = "", CENTER_COLUMNS
        elif name.endswith("_" + axis) and len(name) > 2:
            stem = name[:-2]
            trio = PointColumns(candidate_columns(stem)[1])
        else:
            continue
        if not all(c in columns for c in trio.columns):
            return
        if stem:
            point, advice = f"{stem}_x/_y/_z", f"pass {flag} {stem}"
        elif flag == "--center-column":
            point, advice = trio.describe(), f"leave {flag} out ({trio.describe()} is the default)"
        else:
            point, advice = f"{trio.describe()} (the centre's)", "name this point's own columns"
        raise ConfigError(f"{where.rstrip(':')}: {name} is one coordinate of the point {point}; "
                          f"{advice}")


def _absent(flag: str, name: str, schema: ShardSchema, path: str) -> str:
    """The line for a point flag naming no column; when the table holds a point whose name the
    flag's is part of, or that name with an axis (``ctr_pt_position_x`` for a column of lists
    ``ctr_pt_position``), it says to pass that one."""
    single, split = candidate_columns(name)
    stem = name[:-2] if name[-2:] in ("_x", "_y", "_z") else None
    like = _point_like(schema, lambda c: c == stem or c.startswith(name))
    hint = (f"; {like[0]} {'looks like' if len(like) == 1 else 'and others look like'} the "
            f"point: pass {flag} {like[0]}") if like else ""
    return (f"{flag} {name}: {path} has no column {single[0]} or {split[0]}/_y/_z "
            f"(found: {found(schema.columns)}){hint}")
