"""ReadTable: table shards (CSV, plain or compressed, and Parquet) -> Instance records and dead
letters."""
from __future__ import annotations

from decimal import InvalidOperation
from typing import Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam

from synanno_datagen.transforms.geometry import Box
from synanno_datagen.transforms.points import (
    FLOAT_INEXACT_FROM, BadValue, TableLayout, exact_decimal, number_from_text, parse_point,
)
from synanno_datagen.transforms.select import SmallestDistinct, selection_key
from synanno_datagen.transforms.records import (
    DEAD, DUPLICATE_ID, EXTRA_CELLS, INVALID_ID, OUTSIDE_VOLUME, DeadLetter, Instance, RowRef,
)
from synanno_datagen.transforms.table_formats import (
    EXTRA_CELLS_KEY, count_rows, iter_rows, shard_parts,
)

DEFAULT_LAYOUT = TableLayout()
_INT64_MAX = (1 << 63) - 1


def parse_id(text: Optional[str]) -> int:
    """Instance id from a cell: an integer in the int64 range, read exactly as written
    (``12.0`` and ``1e12`` accepted; ``12.0000000000000000001`` is no integer)."""
    text = (text or "").strip()
    value = number_from_text(text)
    if isinstance(value, float):
        value = _integral_decimal(text)
    if not isinstance(value, int):
        raise BadValue(INVALID_ID, f"id {text!r} is not an integer")
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise BadValue(INVALID_ID, f"id {text!r} is outside the int64 range")
    return value


def _integral_decimal(text: str) -> Optional[int]:
    """The integer a decimal text (``9.2e18``, ``12.000``) is exactly, None when it is none;
    one beyond int64 (of any exponent, never expanded) stands in as 2**64 with its sign."""
    try:
        exact = exact_decimal(text)
    except InvalidOperation:
        return None
    if not exact.is_finite() or exact != exact.to_integral_value():
        return None
    if exact.adjusted() > 19:
        return -(1 << 64) if exact.is_signed() else 1 << 64
    return int(exact)


def parse_row(row: dict, ref: RowRef, id_column: Optional[str], row_number: Optional[int],
              target_bounds: Box, layout: TableLayout = DEFAULT_LAYOUT,
              source_bounds: Optional[Box] = None) -> Instance:
    """One row ({column: text}) -> Instance; raises BadValue with a dead-letter reason.
    ``source_bounds``: the target voxels the source volume covers (geometry.target_voxels_inside),
    when it covers less than the target: a centre outside them has no raw EM."""
    if EXTRA_CELLS_KEY in row:
        raise BadValue(EXTRA_CELLS, f"the row has {row[EXTRA_CELLS_KEY]}: a comma in an unquoted "
                       "cell moves every later cell; quote that cell or fix the export")
    instance_id = parse_id(row.get(id_column)) if id_column else int(row_number)
    floats = layout.float_ids[ref.table_shard] if layout.float_ids else None
    if floats and abs(instance_id) >= FLOAT_INEXACT_FROM[floats]:
        raise BadValue(INVALID_ID, f"id {row.get(id_column)!r} is "
                       f"{FLOAT_INEXACT_FROM[floats]:,} or beyond, where a {floats} column holds "
                       "ids only approximately; store the ids as int64 (there, neighbouring ids "
                       "become one)")
    center, pre, post = (parse_point(row, point, layout.to_target_xyz) if point else None
                         for point in (layout.center, layout.pre, layout.post))
    if not target_bounds.contains(center):
        raise BadValue(OUTSIDE_VOLUME, f"center {list(center)} is outside the target volume "
                       f"[{list(target_bounds.start_xyz)}, {list(target_bounds.stop_xyz)})")
    for name, point in (("pre", pre), ("post", post)):
        if point is not None and not all(-_INT64_MAX - 1 <= v <= _INT64_MAX for v in point):
            raise BadValue(OUTSIDE_VOLUME, f"{name} point {list(point)} is beyond any volume "
                           "(outside int64)")
    if source_bounds is not None and not source_bounds.contains(center):
        raise BadValue(OUTSIDE_VOLUME, f"center {list(center)} is outside the source volume (in "
                       f"target voxels {source_bounds.to_list()})")
    return Instance(instance_id, center, pre, post, ref, tuple(sorted(row.items())))


def row_id(row: dict, ref: RowRef, id_column: Optional[str],
           shard_offsets: Optional[list]) -> Optional[int]:
    """The id of a row's instance: its id column's, or its row number in the table (the rows of
    earlier shards, ``shard_offsets[shard]``, plus its row in its shard); None for a bad id."""
    if not id_column:
        return shard_offsets[ref.table_shard] + ref.row
    try:
        return parse_id(row.get(id_column))
    except BadValue:
        return None


def list_parts(element: Tuple[int, str]) -> List[Tuple[int, str, Optional[int], int]]:
    """(shard number, path) -> (shard number, path, part, its first row) per part of the shard
    that can be read apart (a Parquet row group; a CSV whole)."""
    shard, path = element
    return [(shard, path, part, first) for part, first in shard_parts(path)]


class ReadShardFn(beam.DoFn):
    """(shard number, path, part, first row) -> (RowRef, {column: text}), streaming that part
    of the shard (any format; ``part`` None: the whole shard)."""

    def process(self, element) -> Iterable[Tuple[RowRef, dict]]:
        shard, path, part, first = element
        for row_index, row in enumerate(iter_rows(path, part), start=first):
            yield RowRef(shard, row_index), row


class CountShardRowsFn(beam.DoFn):
    """(shard number, path) -> (shard number, its data rows)."""

    def process(self, element: Tuple[int, str]) -> Iterable[Tuple[int, int]]:
        shard, path = element
        yield shard, count_rows(path)


class ParseRowFn(beam.DoFn):
    """(RowRef, row) -> Instance, or a DeadLetter on the ``dead_letter`` output."""

    def __init__(self, id_column: Optional[str], target_bounds: Box, layout: TableLayout,
                 source_bounds: Optional[Box] = None):
        self._id_column = id_column
        self._bounds = target_bounds
        self._layout = layout
        self._source_bounds = source_bounds

    def process(self, element, shard_offsets=None):
        ref, row = element
        row_number = None if self._id_column else shard_offsets[ref.table_shard] + ref.row
        try:
            yield parse_row(row, ref, self._id_column, row_number, self._bounds,
                            self._layout, self._source_bounds)
        except BadValue as bad:
            instance_id = row_id(row, ref, self._id_column, shard_offsets)
            cells = tuple(sorted(item for item in row.items() if item[0] != EXTRA_CELLS_KEY))
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
                bad.reason, str(bad), "ReadTable", instance_id, ref, cells))


def _offsets(counts: dict, n_shards: int) -> list:
    offsets, total = [], 0
    for shard in range(n_shards):
        offsets.append(total)
        total += counts.get(shard, 0)
    return offsets


def in_table_order(instances: Iterable[Instance]) -> List[Instance]:
    """Instances sorted by their rows: table shard, then row."""
    return sorted(instances, key=lambda i: (i.ref.table_shard, i.ref.row))


def duplicate_letter(dup: Instance, first: Instance) -> DeadLetter:
    """The duplicate_id letter of a later row of an id whose earliest row, ``first``, is kept."""
    return DeadLetter.for_instance(
        dup, DUPLICATE_ID, f"id {dup.instance_id} first seen in table shard "
        f"{first.ref.table_shard} row {first.ref.row}", "ReadTable")


def keep_first(element):
    """(id, [Instance...]) -> the instance from the earliest row; later ones as duplicate_id."""
    _, instances = element
    first, *later = in_table_order(instances)
    yield first
    for dup in later:
        yield beam.pvalue.TaggedOutput(DEAD, duplicate_letter(dup, first))


class ReadTable(beam.PTransform):
    """Table shards -> outputs ``ok`` (Instances, unique ids), ``dead_letter``, ``rows``.

    ``rows`` is the raw (RowRef, row) collection, for counting rows read. With
    ``dedup=False`` ``ok`` holds every valid row's instance, an id's repeats too, for a later
    step to choose among (an incremental run's KeepNewInstances, which prefers the row the
    dataset holds).

    With ``select=(run_seed, n)`` only the ``n`` valid ids with the smallest ``selection_key``
    come out, and memory does not grow with the table: a first pass keeps just the n smallest
    keys, a second pass reads the table again and keeps the rows of those ids. Repeats of an id
    that was not picked are then not dead-lettered (they count as rows not selected).
    """

    def __init__(self, shard_paths: Sequence[str], id_column: Optional[str], target_bounds: Box,
                 select: Optional[Tuple[int, int]] = None, layout: TableLayout = DEFAULT_LAYOUT,
                 source_bounds: Optional[Box] = None, dedup: bool = True):
        super().__init__()
        self._paths = list(shard_paths)
        self._dedup = dedup
        self._id_column = id_column
        self._bounds = target_bounds
        self._source_bounds = source_bounds   # see parse_row
        self._select = select
        self._layout = layout

    def _read(self, pbegin, label: str = ""):
        # A shard's parts are read apart, by any worker: a table of one large Parquet file is
        # not read and parsed by one thread (its row groups; a CSV is read whole).
        return (pbegin
                | f"ListShards{label}" >> beam.Create(list(enumerate(self._paths)))
                | f"ListParts{label}" >> beam.FlatMap(list_parts)
                | f"SpreadParts{label}" >> beam.Reshuffle()
                | f"ReadShards{label}" >> beam.ParDo(ReadShardFn()))  # (RowRef, {column: text})

    def expand(self, pbegin):
        rows = self._read(pbegin)
        side = {}
        if not self._id_column:
            # counted by a read of their own: taken from the rows themselves, the row numbers
            # would make every row wait, in memory, until the last was counted
            counts = (pbegin
                      | "ListShardsToCount" >> beam.Create(list(enumerate(self._paths)))
                      | "RowsPerShard" >> beam.ParDo(CountShardRowsFn()))
            n = len(self._paths)
            side["shard_offsets"] = beam.pvalue.AsSingleton(
                counts | "ToDict" >> beam.combiners.ToDict()
                | "Offsets" >> beam.Map(_offsets, n))
        parse = ParseRowFn(self._id_column, self._bounds, self._layout, self._source_bounds)
        parsed = rows | "ParseRows" >> beam.ParDo(parse, **side).with_outputs(DEAD, main="ok")
        candidates = parsed.ok
        if self._select:
            seed, n = self._select
            picked = (parsed.ok
                      | "SelectionKeys" >> beam.Map(lambda i: selection_key(seed, i.instance_id))
                      | "SmallestKeys" >> beam.CombineGlobally(SmallestDistinct(n))
                      | "PickedIds" >> beam.Map(lambda keys: frozenset(k[1] for k in keys)))
            # Only the picked ids' rows are parsed again (their ids read first).
            id_column = self._id_column
            candidates = (self._read(pbegin, "Again")
                          | "KeepPicked" >> beam.Filter(
                              lambda e, ids, shard_offsets=None:
                              row_id(e[1], e[0], id_column, shard_offsets) in ids,
                              beam.pvalue.AsSingleton(picked), **side)
                          | "ParseRowsAgain" >> beam.ParDo(parse, **side)
                          .with_outputs(DEAD, main="ok")).ok
        if not self._dedup:
            return {"ok": candidates, DEAD: parsed[DEAD], "rows": rows}
        unique = (candidates
                  | "KeyById" >> beam.Map(lambda i: (i.instance_id, i))
                  | "GroupById" >> beam.GroupByKey()
                  | "KeepFirst" >> beam.FlatMap(keep_first).with_outputs(DEAD, main="ok"))
        dead = (parsed[DEAD], unique[DEAD]) | "FlattenDead" >> beam.Flatten()
        return {"ok": unique.ok, DEAD: dead, "rows": rows}
