"""Table files as labs export them: CSV (plain, gzip, bzip2 or xz) and Parquet, row by row.

Every reader goes through Beam's FileSystems (local paths and ``gs://`` alike) and keeps memory
flat in the table's size: CSV is read line by line, Parquet one record batch at a time (column
chunks through a small buffer, so not even a large row group is held whole; compressed CSV is
decompressed as it is read, by Python's gzip, bz2 and lzma). Rows come
out as ``{column: text}`` whatever the format, so one set of cell rules serves all of them:
Parquet values become the text a CSV export would hold (``None`` -> ``""``, floats as ``repr``,
lists as JSON-ish ``[960, 1760.5, null]``).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Dict, Iterator, List, Optional, Tuple

from synanno_datagen.errors import first_line

CSV, CSV_GZ, CSV_BZ2, CSV_XZ, PARQUET = "csv", "csv.gz", "csv.bz2", "csv.xz", "parquet"
CSV_ENCODING = "utf-8-sig"  # UTF-8; a leading byte order mark (spreadsheet exports) is dropped
FORMAT_NAMES = {CSV: "CSV", CSV_GZ: "gzip CSV", CSV_BZ2: "bzip2 CSV", CSV_XZ: "xz CSV",
                PARQUET: "Parquet"}
# compressed CSV: {format: (the compression's name, the file name's ending)}
_COMPRESSED = {CSV_GZ: ("gzip", ".gz"), CSV_BZ2: ("bzip2", ".bz2"), CSV_XZ: ("xz", ".xz")}
_SUFFIXES = {".gz": CSV_GZ, ".bz2": CSV_BZ2, ".xz": CSV_XZ, ".lzma": CSV_XZ}
READ_FORMATS = ("CSV, plain or compressed (.csv, .csv.gz/.gz, .csv.bz2/.bz2, .csv.xz/.xz), "
                "or Parquet (.parquet, .pq)")
# Names of formats not read, refused before any work (pandas writes .zst, .zip and JSON; Beam
# names zlib streams .deflate). zstd: zstandard's stream reader ends a file cut short without an
# error, so its last rows would be lost unnoticed; deflate: no common tool writes tables so.
_NOT_READ = {".zst": "zstd-compressed CSV", ".zstd": "zstd-compressed CSV",
             ".deflate": "deflate-compressed CSV", ".zip": "a zip archive",
             ".json": "JSON", ".jsonl": "JSON lines", ".ndjson": "JSON lines"}
PARQUET_BATCH_ROWS = 4096
CSV_CELL_LIMIT = 1 << 26       # characters of one CSV cell (Python's default is 131,072)
# A line after a CSV's last one: a quote never closed takes it into a cell, a table that ends
# well reads it as a row of its own (dropped).
# (noncharacters, never in an export; no NUL, which csv before Python 3.11 refuses)
_END_OF_TABLE = "\ufffesynanno-datagen: end of table\uffff"
# The key under which a CSV row holding text in cells beyond the header's says so (a comma in an
# unquoted cell shifts every later cell: ReadTable dead-letters such a row, ``extra_cells``).
EXTRA_CELLS_KEY = "\ufffesynanno-datagen: cells beyond the header\uffff"
PARQUET_READ_BUFFER = 1 << 20  # column chunks are read through this buffer, not whole
_MAGIC = {b"PAR1": "Parquet", b"\x1f\x8b": "gzip"}
_LIST_TYPES = ("list<", "large_list<", "fixed_size_list<", "string", "large_string")


class TableFormatError(ValueError):
    """A shard that cannot be read as the format its name says (one line for the user)."""


def table_format(path: str) -> str:
    """The format a file name says: ``.parquet``/``.pq``; ``.gz``, ``.bz2``, ``.xz``/``.lzma``
    compressed CSV; else CSV. Raises TableFormatError for a format not read (``.zst``,
    ``.deflate``, ``.zip``, JSON)."""
    name = path.lower()
    if name.endswith((".parquet", ".pq")):
        return PARQUET
    fmt = next((f for suffix, f in _SUFFIXES.items() if name.endswith(suffix)), CSV)
    stem = name[:name.rindex(".")] if fmt != CSV else name
    what = next((w for suffix, w in _NOT_READ.items() if name.endswith(suffix)
                 or stem.endswith(suffix)), None)
    if what:
        raise TableFormatError(f"{path}: unknown format: {what} is not read; give "
                               f"{READ_FORMATS}")
    return fmt


@dataclass(frozen=True)
class ShardSchema:
    """A shard's format and column names; for Parquet also each column's Arrow type."""

    format: str
    columns: Tuple[str, ...]
    types: Optional[Dict[str, str]] = None
    # names of pandas range indexes, which pandas stores in the file's metadata, not as columns
    metadata_indexes: Tuple[str, ...] = ()
    # a Parquet file's PANDAS_ATTRS metadata (pandas >= 2.1 writes DataFrame.attrs there as
    # JSON), as text; None when it has none
    pandas_attrs: Optional[str] = None

    def holds_lists(self, column: str) -> bool:
        """Whether ``column`` can hold [x, y, z] points: CSV text, Parquet text or a list of
        scalars (not of lists, structs or maps)."""
        if self.types is None:
            return True
        kind = self.types[column]
        if kind == "null":   # no values (an empty shard's column, as pandas writes it)
            return True
        return kind.startswith(_LIST_TYPES) and not any(
            nested in kind.partition("<")[2] for nested in ("list<", "struct<", "map<"))


# Arrow types no cell of which reads as a number (every row would be rejected, one by one)
NOT_NUMBERS = ("bool", "timestamp", "date", "time", "duration", "month_day_nano_interval",
               "binary", "large_binary", "fixed_size_binary", "map<", "struct<", "list<",
               "large_list<", "fixed_size_list<", "dictionary<values=bool")


def holds_numbers(schema: "ShardSchema", column: str) -> bool:
    """Whether a scalar ``column`` can hold ids or coordinates: CSV text, or a Parquet column
    of numbers or text (not booleans, times, bytes or nested values)."""
    return schema.types is None or not schema.types[column].startswith(NOT_NUMBERS)


def read_schema(path: str) -> ShardSchema:
    """Format and columns of one shard, reading only its header or footer."""
    fmt = table_format(path)
    if fmt == PARQUET:
        with _open_binary(path) as raw:
            schema = _parquet_file(raw, path).schema_arrow
        attrs = (schema.metadata or {}).get(b"PANDAS_ATTRS")
        return ShardSchema(fmt, tuple(schema.names), {f.name: str(f.type) for f in schema},
                           _range_indexes(schema),
                           None if attrs is None else attrs.decode("utf-8", "replace"))
    with _open_binary(path) as raw:
        first = _first_line(_decompressed(raw, fmt), path, fmt)
    return ShardSchema(fmt, tuple(next(csv.reader([first]), [])))


def _range_indexes(schema) -> Tuple[str, ...]:
    """The names of the pandas RangeIndexes a Parquet file's metadata describes (``to_parquet``
    of a frame indexed by evenly spaced values stores no column for them)."""
    try:
        pandas = schema.pandas_metadata or {}
    except ValueError:   # metadata that is not JSON: none that pandas wrote
        return ()
    indexes = pandas.get("index_columns") if isinstance(pandas, dict) else None
    return tuple(str(index["name"]) for index in indexes or ()
                 if isinstance(index, dict) and index.get("kind") == "range"
                 and index.get("name") is not None)


def has_data_rows(path: str) -> bool:
    """Whether the shard holds at least one data row: Parquet's footer row count, or a CSV row
    after the header (blank lines are not rows)."""
    if table_format(path) == PARQUET:
        with _open_binary(path) as raw:
            return _parquet_file(raw, path).metadata.num_rows > 0
    return next(iter_rows(path), None) is not None


def count_rows(path: str) -> int:
    """The shard's data rows: Parquet's footer row count, or the CSV rows iter_rows reads."""
    if table_format(path) == PARQUET:
        with _open_binary(path) as raw:
            return _parquet_file(raw, path).metadata.num_rows
    return sum(1 for _ in iter_rows(path))


def shard_parts(path: str) -> List[Tuple[Optional[int], int]]:
    """The parts of a shard that can be read apart, each as (part, its first row in the shard):
    a Parquet file's row groups (pandas and pyarrow write a group per million rows or fewer), a
    CSV whole (``[(None, 0)]``: its rows can only be found in order)."""
    if table_format(path) != PARQUET:
        return [(None, 0)]
    with _open_binary(path) as raw:
        metadata = _parquet_file(raw, path).metadata
    parts, first = [], 0
    for group in range(metadata.num_row_groups):
        parts.append((group, first))
        first += metadata.row_group(group).num_rows
    return parts or [(None, 0)]


def iter_rows(path: str, part: Optional[int] = None) -> Iterator[Dict[str, str]]:
    """The shard's data rows in file order, as ``{column: text}``; with ``part``, those of that
    part (``shard_parts``) only. A file that cannot be read to its end (a gzip stream cut short,
    a damaged Parquet page) raises TableFormatError."""
    import lzma
    import zlib

    import pyarrow as pa

    try:
        yield from _iter_rows(path, part)
    except (EOFError, zlib.error, lzma.LZMAError, OSError, pa.ArrowException) as e:
        raise _not_to_its_end(path, e) from None


def _not_to_its_end(path: str, e: Exception) -> TableFormatError:
    return TableFormatError(f"{path}: cannot be read to its end ({type(e).__name__}: "
                            f"{first_line(e, 200)}); the file is damaged or cut short: export "
                            "or copy it again")


def _iter_rows(path: str, part: Optional[int] = None) -> Iterator[Dict[str, str]]:
    fmt = table_format(path)
    with _open_binary(path) as raw:
        if fmt == PARQUET:
            batches = _parquet_file(raw, path).iter_batches(
                batch_size=PARQUET_BATCH_ROWS, use_threads=False,
                row_groups=None if part is None else [part])
            for batch in batches:
                batch = _as_python_can_hold(batch)
                narrow = _narrow_floats(batch.schema)    # float16 left: rare, cell by cell
                names = batch.schema.names
                columns = [_python_values(column) for column in batch.columns]
                for values in zip(*columns):
                    row = dict(zip(names, values))
                    for name, kind in narrow.items():
                        row[name] = _as_written(row[name], kind)
                    yield {name: cell_text(value) for name, value in row.items()}
            return
        stream = _decompressed(raw, fmt)
        if csv.field_size_limit() < CSV_CELL_LIMIT:
            csv.field_size_limit(CSV_CELL_LIMIT)
        lines = itertools.chain(io.TextIOWrapper(stream, encoding=CSV_ENCODING, newline=""),
                                [_END_OF_TABLE + "\n"])
        reader = csv.reader(lines)   # lenient, as spreadsheets and pandas write and read
        after = 0   # the line the last whole row ended on (0: the header is being read)
        try:
            header = next(reader)
            if _END_OF_TABLE in "".join(header):
                if header != [_END_OF_TABLE]:   # an empty file's header is the marker itself
                    raise TableFormatError(f"{path}: a quote opened in the header is never "
                                           "closed, so every line is read into one name; fix "
                                           "the export")
                return
            last, before, after = None, reader.line_num, reader.line_num
            for row in reader:   # held back one row: only the last can hold the marker
                if not row:
                    continue     # a blank line is no row (as csv.DictReader has it)
                if last is not None:
                    yield _as_dict(header, last)
                last, before, after = row, after, reader.line_num
            if last != [_END_OF_TABLE]:   # the marker is inside a cell: a quote runs to the end
                raise TableFormatError(
                    f"{path}: a quote opened in the row after line {before} is never closed, "
                    "so every later line would be read into one cell; fix the export")
        except csv.Error as e:
            # (the reader's line count already holds the failing row's lines)
            where = f"the row after line {after}" if after else "the header"
            raise TableFormatError(f"{path}: {where}: {e} (a quote that is never closed?); "
                                   "fix the export") from None
        except UnicodeDecodeError as e:
            # (decoded ahead of the rows in blocks: the line is where the reader had got to)
            where = (f"within a few thousand bytes after line {reader.line_num}"
                     if reader.line_num else "within its first few thousand bytes")
            raise TableFormatError(f"{path}: not UTF-8 ({e.reason}) {where}; export the table "
                                   "as UTF-8") from None


def _as_dict(header, row) -> Dict[str, str]:
    """A CSV row as ``{column: text}``, as csv.DictReader makes it: a missing cell is None, a
    repeated name keeps its last cell. Empty cells beyond the header's named columns (a
    trailing comma, on the header's line too or not) are dropped; text there is described
    under EXTRA_CELLS_KEY."""
    cells = dict(zip(header, itertools.chain(row, itertools.repeat(None, len(header) - len(row)))))
    named = len(header)
    while named and not header[named - 1].strip():
        named -= 1   # the header's own trailing commas: columns without a name
    beyond = row[named:]
    if any(cell.strip() for cell in beyond):
        shown = ", ".join(repr(cell) for cell in beyond)
        cells[EXTRA_CELLS_KEY] = (f"{len(row)} cells for the header's {named} named columns "
                                  f"(beyond them: {shown[:200]})")
    return cells


def cell_text(value) -> str:
    """A Parquet value as CSV-like text (lists and structs as JSON-ish text; lists of text or
    decimals unquoted, as a CSV export writes them)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, Decimal)) or v is None
                                                for v in value):
        # as in CSV: text and decimals (Arrow's decimal128) unquoted, decimals exactly as held
        return "[" + ", ".join("null" if v is None else str(v) for v in value) + "]"
    if isinstance(value, (list, tuple, dict, bool)):
        return json.dumps(value, default=str)
    return str(value)


def _with_value_type(list_or_value_type, value_type):
    """``list_or_value_type`` (float32, or lists of it, nested) with ``value_type`` inside."""
    import pyarrow as pa

    t = list_or_value_type
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_with_value_type(t.value_type, value_type), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(_with_value_type(t.value_type, value_type))
    if pa.types.is_list(t):
        return pa.list_(_with_value_type(t.value_type, value_type))
    return value_type


def _python_values(column) -> list:
    """A column's values as Python's; where Python cannot hold them (a date past year 9999, a
    time zone it does not know, nanoseconds inside a struct), as Arrow's text of each, or, where
    Arrow has none, a text naming the type. Only columns a run does not read can be such: those
    it reads are numbers or text, or lists of them."""
    import pyarrow as pa

    if not _holds_nanoseconds(column.type):   # (with pandas installed Arrow would convert
        try:                                  # them to its Timestamps: text unlike without)
            return column.to_pylist()
        except (ValueError, OverflowError, KeyError, pa.ArrowException):
            pass
    try:
        return column.cast(pa.string()).to_pylist()
    except pa.ArrowException:
        return [f"({column.type} value)" if valid else None
                for valid in column.is_valid().to_pylist()]


def _ns_as_text(value_type):
    """``value_type`` with every nanosecond timestamp, duration or time in it (in lists,
    structs and maps too) as text: what Arrow casts such a column to."""
    import pyarrow as pa

    if pa.types.is_temporal(value_type):
        return pa.string() if getattr(value_type, "unit", None) == "ns" else value_type
    if pa.types.is_map(value_type):
        return pa.map_(_ns_as_text(value_type.key_type), _ns_as_text(value_type.item_type))
    if pa.types.is_struct(value_type):
        return pa.struct([f.with_type(_ns_as_text(f.type)) for f in value_type])
    if pa.types.is_fixed_size_list(value_type):
        return pa.list_(_ns_as_text(value_type.value_type), value_type.list_size)
    if pa.types.is_large_list(value_type):
        return pa.large_list(_ns_as_text(value_type.value_type))
    if pa.types.is_list(value_type):
        return pa.list_(_ns_as_text(value_type.value_type))
    return value_type


def _holds_nanoseconds(value_type) -> bool:
    """Whether a type holds nanosecond timestamps, durations or times anywhere."""
    return _ns_as_text(value_type) != value_type


def _as_python_can_hold(batch):
    """The batch with the columns Python's values would change or cannot hold cast by Arrow
    (vectorised), lists of them too; other columns as they are:
    - float32 as float64 holding each value's shortest decimal (Arrow's cast to text writes it):
      float32 0.04 becomes 0.04, not 0.0399999991;
    - nanosecond timestamps, durations and times of day, in lists, structs and maps too, as
      Arrow's text of them: Python's hold microseconds, and Arrow refuses to convert finer
      values without pandas (with pandas it gives pandas' Timestamps, whose text differs)."""
    import pyarrow as pa

    columns, changed = list(batch.columns), False
    for i, field in enumerate(batch.schema):
        inner = _innermost(field.type)
        if _NARROW.get(str(inner)) is _FLOAT32:
            text = columns[i].cast(_with_value_type(field.type, pa.string()))
            columns[i] = text.cast(_with_value_type(field.type, pa.float64()))
        elif _holds_nanoseconds(field.type):
            try:
                columns[i] = columns[i].cast(_ns_as_text(field.type))
            except pa.ArrowException:   # (a time zone Arrow does not know): _python_values
                continue
        else:
            continue
        changed = True
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names) if changed else batch


_FLOAT32, _FLOAT16 = "float32", "float16"
_NARROW = {"float": _FLOAT32, "halffloat": _FLOAT16}   # Arrow's names of the narrow floats


def _innermost(value_type):
    import pyarrow as pa

    while (pa.types.is_list(value_type) or pa.types.is_large_list(value_type)
           or pa.types.is_fixed_size_list(value_type)):
        value_type = value_type.value_type
    return value_type


def _narrow_floats(schema) -> Dict[str, type]:
    """{column: numpy type} of the float16 columns (or lists of them; float32 ones are widened
    by ``_as_python_can_hold`` first): their values come as the float64 they equal, whose text
    is not the decimal the table was written with."""
    import numpy as np

    kinds = {_FLOAT32: np.float32, _FLOAT16: np.float16}
    return {field.name: kinds[_NARROW[str(_innermost(field.type))]] for field in schema
            if str(_innermost(field.type)) in _NARROW}


def _as_written(value, kind):
    """A narrow float (or a list of them, None kept) as the float64 of its shortest decimal text
    in its own precision: float32 0.04 -> 0.04, not 0.03999999910593033."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_as_written(v, kind) for v in value]
    return float(str(kind(value)))


def _open_binary(path: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    # opened as stored and decoded here (Beam's own decompressing file has no readline(size))
    table_format(path)   # (a format not read is refused before it is opened)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _decompressed(raw, fmt: str):
    """The CSV bytes of a shard opened as stored, decompressed as they are read (the streams
    of a concatenated file one after the other)."""
    if fmt == CSV_GZ:
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == CSV_BZ2:
        import bz2

        return bz2.BZ2File(raw, mode="rb")
    if fmt == CSV_XZ:
        import lzma

        return lzma.LZMAFile(raw, mode="rb")   # .xz and the older .lzma alike
    return raw


def _parquet_file(raw, path: str):
    import pyarrow
    import pyarrow.parquet as pq

    try:  # buffered, not pre-buffered: memory follows the batch, not the row group
        return pq.ParquetFile(raw, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False)
    except pyarrow.ArrowException as e:
        raise TableFormatError(f"{path}: not a Parquet file ({e})") from None


def _first_line(stream, path: str, fmt: str) -> str:
    """The header line, whichever line ending the file uses; binary content under a CSV name
    is an unknown format, not a header."""
    import lzma

    try:
        line = stream.readline(1 << 20)
    except EOFError as e:   # a compressed stream cut short (inside the header's block)
        raise _not_to_its_end(path, e) from None
    except (OSError, lzma.LZMAError) as e:  # gzip.BadGzipFile is an OSError
        kind, suffix = _COMPRESSED.get(fmt, ("CSV", ""))
        raise TableFormatError(f"{path}: not {kind} data ({e}); a {suffix} shard must be "
                               f"{kind}-compressed CSV") from None
    looks_like = next((kind for magic, kind in _MAGIC.items() if line.startswith(magic)), None)
    if looks_like:
        want = ".parquet or .pq" if looks_like == "Parquet" else ".csv.gz or .gz"
        content = "content" if fmt == CSV else "decompressed content"
        raise TableFormatError(f"{path}: unknown format: the file name says {FORMAT_NAMES[fmt]} "
                               f"but the {content} is {looks_like}; name such files {want}")
    if line.startswith((b"\xff\xfe", b"\xfe\xff")):   # a spreadsheet's "Unicode text"
        raise TableFormatError(f"{path}: UTF-16 text; export the table as UTF-8")
    try:
        text = line.decode(CSV_ENCODING)
    except UnicodeDecodeError as e:
        if b"\0" not in line:   # text in another encoding (a Windows code page)
            raise TableFormatError(f"{path}: not UTF-8 ({e.reason}) in its header; export the "
                                   "table as UTF-8") from None
        text = None
    if text is None or "\0" in text:
        raise TableFormatError(f"{path}: unknown format: not {FORMAT_NAMES[fmt]} text; give "
                               f"{READ_FORMATS}")
    return re.split("\r\n|\r|\n", text, maxsplit=1)[0]   # CR alone: a spreadsheet's "Macintosh"
