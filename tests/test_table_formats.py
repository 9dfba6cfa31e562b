"""Reading CSV, gzip CSV and Parquet shards (real files, no Beam pipeline)."""
import bz2
import gzip
import lzma
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synanno_datagen.transforms.points import BadValue, PointColumns, parse_point, to_target_factors
from synanno_datagen.transforms.table import parse_id
from synanno_datagen.transforms.table_formats import (
    TableFormatError, cell_text, count_rows, has_data_rows, iter_rows, read_schema, table_format,
)


def _lzma_alone(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


@pytest.mark.parametrize("name, fmt", [
    ("a.parquet", "parquet"), ("gs://b/t/part-0.PQ", "parquet"), ("a.csv.gz", "csv.gz"),
    ("export_000.gz", "csv.gz"), ("a.csv", "csv"), ("synapses.tsv", "csv"), ("table", "csv"),
    ("a.csv.bz2", "csv.bz2"), ("gs://b/t/part-0.BZ2", "csv.bz2"), ("a.csv.xz", "csv.xz"),
    ("a.csv.lzma", "csv.xz"),
])
def test_the_file_name_says_the_format(name, fmt):
    assert table_format(name) == fmt


def test_csv_and_gzip_csv_read_the_same_rows(tmp_path):
    text = "id,ctr_pt_position,score\n11,\"[120, 220, 14]\",0.9\n12,[125 220 14],\n"
    (tmp_path / "t.csv").write_text(text)
    with gzip.open(tmp_path / "t.csv.gz", "wt", newline="") as f:
        f.write(text)
    rows = list(iter_rows(str(tmp_path / "t.csv")))
    assert rows == list(iter_rows(str(tmp_path / "t.csv.gz")))
    assert rows == [{"id": "11", "ctr_pt_position": "[120, 220, 14]", "score": "0.9"},
                    {"id": "12", "ctr_pt_position": "[125 220 14]", "score": ""}]
    schema = read_schema(str(tmp_path / "t.csv.gz"))
    assert schema.format == "csv.gz" and schema.columns == ("id", "ctr_pt_position", "score")


@pytest.mark.parametrize("name, compress", [("t.csv.bz2", bz2.compress), ("t.bz2", bz2.compress),
                                            ("t.csv.xz", lzma.compress),
                                            ("t.csv.lzma", _lzma_alone)])
def test_bzip2_and_xz_csv_read_the_rows_the_csv_holds(tmp_path, name, compress):
    """Found by review: pandas' to_csv('t.csv.bz2') (compression='infer') wrote tables every
    run refused: 'cannot read it (TypeError: CompressedFile.readline() ...)'. Concatenated
    streams (``cat a.bz2 b.bz2``) are read whole, as concatenated gzip is."""
    head, body = b"id,ctr_pt_position\r\n", b'11,"[120, 220, 14]"\r\n12,[125 220 14]\r\n'
    (tmp_path / "t.csv").write_bytes(head + body + b"13,[1 2 3]\r\n")
    (tmp_path / name).write_bytes(compress(head + body) + compress(b"13,[1 2 3]\r\n"))
    path = str(tmp_path / name)
    assert list(iter_rows(path)) == list(iter_rows(str(tmp_path / "t.csv")))
    assert [r["id"] for r in iter_rows(path)] == ["11", "12", "13"]
    schema = read_schema(path)
    assert schema.format == table_format(name) and schema.columns == ("id", "ctr_pt_position")
    assert count_rows(path) == 3 and has_data_rows(path)


@pytest.mark.parametrize("name, compress, kind", [("t.csv.bz2", bz2.compress, "bzip2"),
                                                  ("t.csv.xz", lzma.compress, "xz")])
def test_bzip2_and_xz_csv_cut_short_or_not_compressed_fail_clearly(tmp_path, name, compress,
                                                                   kind):
    cut, plain = tmp_path / ("cut-" + name), tmp_path / ("plain-" + name)
    cut.write_bytes(compress(b"x,y,z\n" + b"1,2,3\n" * 20000)[:-40])
    plain.write_bytes(b"x,y,z\n1,2,3\n")
    with pytest.raises(TableFormatError, match="cannot be read to its end"):
        list(iter_rows(str(cut)))
    with pytest.raises(TableFormatError, match=f"not {kind} data .*; a {name[5:]} shard must be "
                                               f"{kind}-compressed CSV"):
        read_schema(str(plain))


def test_a_small_bzip2_table_cut_short_is_said_to_be_cut_short(tmp_path):
    """Found by review: a .csv.bz2 cut inside its first block (any table up to about 900 KB)
    was refused as 'not bzip2 data' when its header was read, not as cut short (bzip2
    decompresses a whole block at once; gzip and xz give the header first, then the end is
    found short while rows are read)."""
    cut = tmp_path / "t.csv.bz2"
    cut.write_bytes(bz2.compress(b"x,y,z\n" + b"1,2,3\n" * 2000)[:-30])
    with pytest.raises(TableFormatError, match="cannot be read to its end .*cut short: export "
                                               "or copy it again"):
        read_schema(str(cut))


@pytest.mark.parametrize("name, says", [
    ("t.csv.zst", "zstd-compressed CSV"), ("t.csv.zstd", "zstd-compressed CSV"), ("t.csv.deflate", "deflate-compressed CSV"),
    ("t.json", "JSON"), ("t.jsonl", "JSON lines"), ("t.json.gz", "JSON"),
    ("gs://b/t.ndjson", "JSON lines"), ("t.csv.zip", "a zip archive"), ("t.zip", "a zip archive")])
def test_formats_not_read_are_refused_by_their_name(tmp_path, name, says):
    """Found by review: a .json table was refused as 'no data rows (a header only)', and a
    .csv.zst or .csv.deflate one with a TypeError; a .zip one (pandas' to_csv("t.csv.zip"))
    as not CSV text."""
    with pytest.raises(TableFormatError, match=f"unknown format: {says} is not read; give CSV"):
        table_format(name)
    if "://" not in name:
        (tmp_path / name).write_text("x,y,z\n1,2,3\n")
        with pytest.raises(TableFormatError, match="is not read"):
            read_schema(str(tmp_path / name))


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    # Spreadsheets export "CSV UTF-8" with a BOM; the first column must still be "x".
    text = "x,y,z,id\n10,20,3,7\n"
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    with gzip.open(tmp_path / "t.csv.gz", "wb") as f:
        f.write(b"\xef\xbb\xbf" + text.encode())
    for name in ("t.csv", "t.csv.gz"):
        assert read_schema(str(tmp_path / name)).columns == ("x", "y", "z", "id")
        assert list(iter_rows(str(tmp_path / name))) == [{"x": "10", "y": "20", "z": "3",
                                                          "id": "7"}]


def _cave_table():
    return pa.table({
        "id": pa.array([864691135000000001, 12, 13, 14, 15], pa.int64()),
        "ctr_pt_position": pa.array(
            [[960, 1760, 462], None, [967.5, None, 462.0], [960.0, math.nan, 462.0], [1, 2, 3]],
            pa.list_(pa.float64())),
        "size": pa.array([10, None, 30, 40, 50], pa.int64()),
        "score": pa.array([0.5, math.nan, None, 2.0, 46.7]),
        "valid": [True, False, True, True, True],
    })


def test_parquet_rows_become_the_text_a_csv_export_holds(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_cave_table(), path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    schema = read_schema(str(path))
    assert schema.format == "parquet" and schema.types["id"] == "int64"
    assert schema.holds_lists("ctr_pt_position") and not schema.holds_lists("size")
    rows = list(iter_rows(str(path)))
    assert [r["id"] for r in rows] == ["864691135000000001", "12", "13", "14", "15"]
    assert rows[0] == {"id": "864691135000000001", "ctr_pt_position": "[960.0, 1760.0, 462.0]",
                       "size": "10", "score": "0.5", "valid": "true"}
    assert rows[1]["ctr_pt_position"] == "" and rows[1]["size"] == ""
    assert rows[1]["score"] == "nan" and rows[2]["score"] == ""
    assert parse_id(rows[0]["id"]) == 864691135000000001       # int64 ids stay exact
    nm = to_target_factors((1, 1, 1), (8, 8, 33))
    ctr = PointColumns(("ctr_pt_position",))
    assert parse_point(rows[0], ctr, nm) == (120, 220, 14)
    for row in rows[1:4]:       # null list, null element, NaN element
        with pytest.raises(BadValue) as err:
            parse_point(row, ctr, nm)
        assert err.value.reason == "missing_coordinate"


def test_parquet_numbers_follow_the_csv_cell_rules(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": pa.array([46.0, 46.7, math.nan, None]),
                             "y": pa.array([46, 47, 48, 49], pa.int64()),
                             "z": pa.array([1, 2, 3, 4], pa.int32())}), path)
    xyz = PointColumns(("x", "y", "z"))
    rows = list(iter_rows(str(path)))
    assert parse_point(rows[0], xyz) == (46, 46, 1)
    assert parse_point(rows[1], xyz) == (46, 47, 2)
    for row in rows[2:]:
        with pytest.raises(BadValue) as err:
            parse_point(row, xyz)
        assert err.value.reason == "missing_coordinate"


def test_float32_parquet_numbers_are_read_as_the_decimals_written(tmp_path):
    """A float32 column holds 0.04 as 0.0399999991...: read as that, a centre in um with
    --coordinate-resolution 1000 fell one voxel short, where a CSV export of the same column
    (0.04) does not. Lists of float32 (CAVE's ctr_pt_position) alike."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({
        "x": pa.array([0.04, 1e-05, None], pa.float32()),
        "y": pa.array([0.04, 0.1, 0.5], pa.float16()),
        "z": pa.array([0.12, 2.0, 3.0], pa.float64()),
        "ctr_pt_position": pa.array([[0.04, 0.04, 0.12], [-29.7, None, 1.0], None],
                                    pa.list_(pa.float32()))}), path)
    rows = list(iter_rows(str(path)))
    assert [r["x"] for r in rows] == ["0.04", "1e-05", ""]
    assert [r["y"] for r in rows] == ["0.04", "0.1", "0.5"]
    assert rows[0]["ctr_pt_position"] == "[0.04, 0.04, 0.12]"
    assert rows[1]["ctr_pt_position"] == "[-29.7, null, 1.0]"
    um = to_target_factors((1000, 1000, 1000), (8, 8, 40))
    assert parse_point(rows[0], PointColumns(("ctr_pt_position",)), um) == (5, 5, 3)
    assert parse_point(rows[0], PointColumns(("x", "x", "z")), um) == (5, 5, 3)


def test_cell_text_of_parquet_values():
    assert cell_text(None) == "" and cell_text(7) == "7" and cell_text(2.5) == "2.5"
    assert cell_text([1, None, 2.5]) == "[1, null, 2.5]" and cell_text(False) == "false"
    assert cell_text({"a": 1}) == '{"a": 1}' and cell_text("text") == "text"


def test_a_parquet_list_of_numbers_as_text_reads_as_the_point_it_holds(tmp_path):
    """Found by review: a list<string> centre passed the option check, then every row was
    not_a_number: its items were read with JSON's quotes ('"1005"')."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"c": pa.array([["1005", "2032.5", "105"], ["1", None, "3"]],
                                           pa.list_(pa.string()))}), path)
    rows = list(iter_rows(str(path)))
    assert [r["c"] for r in rows] == ["[1005, 2032.5, 105]", "[1, null, 3]"]
    assert parse_point(rows[0], PointColumns(("c",))) == (1005, 2032, 105)
    with pytest.raises(BadValue, match="missing_coordinate|is empty"):
        parse_point(rows[1], PointColumns(("c",)))


def test_a_parquet_list_of_decimals_reads_as_the_same_numbers_written_as_text(tmp_path):
    """Found by review: a list<decimal128(12,3)> centre was not_a_number in every row: its items
    were read with JSON's quotes ('"72680.000"'). Decimals are exact, as the text is: 8.008 um
    on an 8 nm grid is voxel 1001 (a binary float would give 1000)."""
    from decimal import Decimal

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({
        "ctr_pt_position": pa.array(
            [[Decimal("72680.000"), Decimal("75560.5"), Decimal("15485")],
             [Decimal("8.008"), Decimal("-0.001"), None], None], pa.list_(pa.decimal128(12, 3))),
        "text": pa.array([["72680.000", "75560.500", "15485.000"], ["8.008", "-0.001", None],
                          None], pa.list_(pa.string()))}), path)
    rows = list(iter_rows(str(path)))
    assert [r["ctr_pt_position"] for r in rows] == [r["text"] for r in rows] == [
        "[72680.000, 75560.500, 15485.000]", "[8.008, -0.001, null]", ""]
    point = PointColumns(("ctr_pt_position",))
    assert parse_point(rows[0], point) == (72680, 75560, 15485)
    um = to_target_factors((1000, 1000, 1000), (8, 8, 40))
    rows[1]["ctr_pt_position"] = rows[1]["ctr_pt_position"].replace("null", "0.04")
    assert parse_point(rows[1], point, um) == (1001, -1, 1)
    assert cell_text([Decimal("1.50"), None]) == "[1.50, null]"


@pytest.mark.parametrize("newline", ["\r", "\r\n", "\n"])
@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_every_line_ending_reads_the_same_header_and_rows(tmp_path, newline, name):
    """Found by review: a CSV with CR line endings (a spreadsheet's 'CSV (Macintosh)') was
    refused: its whole content was taken for the header line, while the rows read fine."""
    text = newline.join(["id,x,y,z", "1,1005,2032,105", "2,1006,2033,106", ""])
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_bytes(text.encode())
    assert read_schema(str(path)).columns == ("id", "x", "y", "z")
    assert [r["x"] for r in iter_rows(str(path))] == ["1005", "1006"]


def test_a_header_in_another_text_encoding_is_named_as_such(tmp_path):
    """Found by review: a spreadsheet's export as UTF-16 ("Unicode text") or in a Windows code
    page (a column named typ\xe9) was refused as 'unknown format: not CSV text', where the same
    bytes in a row were named as not UTF-8."""
    text = "id,x,y,z,typé\n1,2,3,4,a\n"
    for name, encoded, says in [
            ("utf16.csv", text.encode("utf-16"), "UTF-16 text"),
            ("utf16be.csv", b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16 text"),
            ("cp1252.csv", text.encode("cp1252"), r"not UTF-8 \(invalid continuation byte\) in "
                                                  "its header")]:
        (tmp_path / name).write_bytes(encoded)
        with pytest.raises(TableFormatError, match=rf"{tmp_path / name}: {says}; export the "
                                                   "table as UTF-8"):
            read_schema(str(tmp_path / name))


def test_content_that_is_not_what_the_name_says_is_an_unknown_format(tmp_path):
    with gzip.open(tmp_path / "gzip.csv", "wt") as f:
        f.write("id,x,y,z\n1,2,3,4\n")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "parquet.csv")
    (tmp_path / "binary.csv").write_bytes(b"\x00\x01\xff\xfe junk")
    (tmp_path / "plain.gz").write_text("id,x,y,z\n")
    (tmp_path / "text.parquet").write_text("id,x,y,z\n")
    for name, says in [("gzip.csv", "content is gzip; name such files .csv.gz or .gz"),
                       ("parquet.csv", "content is Parquet; name such files .parquet or .pq"),
                       ("binary.csv", "unknown format: not CSV text"),
                       ("plain.gz", "not gzip data"),
                       ("text.parquet", "not a Parquet file")]:
        with pytest.raises(TableFormatError, match=says):
            read_schema(str(tmp_path / name))


def test_a_quote_never_closed_or_a_bad_byte_fails_loudly_with_the_line(tmp_path):
    """A lenient CSV reader takes every line after an unclosed quote into one cell, and the
    table's rows silently vanish; a byte that is not UTF-8 deep in a file broke the run with a
    bare UnicodeDecodeError. Both name the file and the line."""
    rows = "".join(f"{i},{i},{i},{i},note {i}\n" for i in range(2, 2000))
    quoted = tmp_path / "quote.csv"
    quoted.write_text('id,x,y,z,note\n1,1,1,1,"I forgot to close\n' + rows)
    with pytest.raises(TableFormatError,
                       match=rf"{quoted}: a quote opened in the row after line 1 is never closed"):
        list(iter_rows(str(quoted)))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,x,y,z,note\n" + rows.encode() + "2000,1,1,1,caf\xe9\n".encode("cp1252"))
    with pytest.raises(TableFormatError, match=rf"{latin}: not UTF-8 \(invalid continuation byte\) within a few thousand bytes after line 1[89]\d\d;"):
        list(iter_rows(str(latin)))


def test_a_long_text_cell_is_read(tmp_path):
    """Python's csv module refuses cells over 131,072 characters by default."""
    table = tmp_path / "long.csv"
    table.write_text("id,x,y,z,note\n1,1,1,1," + "a" * 300_000 + "\n2,2,2,2,short\n")
    got = list(iter_rows(str(table)))
    assert [r["id"] for r in got] == ["1", "2"] and len(got[0]["note"]) == 300_000


def test_stray_quotes_inside_a_row_are_read_as_before(tmp_path):
    """Only a quote that runs to the end of the file is refused: a space after a closing quote
    or a quote inside a cell are read as lenient CSV readers read them."""
    table = tmp_path / "stray.csv"
    table.write_text('id,x,y,z,kind\n1,1,1,1,"E" \n2,2,2,2,a"b\n3,3,3,3,"multi\nline"\n4,4,4,4,ok')
    got = list(iter_rows(str(table)))
    assert [(r["id"], r["kind"]) for r in got] == [
        ("1", "E "), ("2", 'a"b'), ("3", "multi\nline"), ("4", "ok")]


@pytest.mark.parametrize("header", [",id,x,y,z,,", "a,id,x,y,z,a"])
def test_a_first_column_name_repeated_later_reads_every_row(tmp_path, header):
    """pandas' unnamed index column and a trailing comma name two columns ''."""
    table = tmp_path / "t.csv"
    table.write_text(header + "\n0,11,1,2,3,\n1,12,4,5,6,\n")
    got = list(iter_rows(str(table)))
    assert [r["id"] for r in got] == ["11", "12"]


def test_odd_csv_files_read_as_empty_or_fail_clearly(tmp_path):
    blank = tmp_path / "blank.csv"
    blank.write_text("\r\n")
    assert list(iter_rows(str(blank))) == []
    header_quote = tmp_path / "header.csv"
    header_quote.write_text('id,x,y,z,"note\n1,1,1,1,a\n2,2,2,2,b\n')
    with pytest.raises(TableFormatError, match="a quote opened in the header is never closed"):
        list(iter_rows(str(header_quote)))


def test_a_bad_byte_in_the_first_block_is_not_said_to_be_after_line_0(tmp_path):
    """Bytes are decoded in blocks ahead of the rows: a bad byte on line 6 was reported
    'after line 0'."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,x,y,z,note\n" + b"1,1,1,1,a\n" * 4 + "5,1,1,1,caf\xe9\n".encode("cp1252"))
    with pytest.raises(TableFormatError, match=rf"{latin}: not UTF-8 \(invalid continuation "
                       r"byte\) within its first few thousand bytes;"):
        list(iter_rows(str(latin)))


def test_a_row_with_more_cells_than_the_header_is_a_dead_letter_not_shifted(tmp_path):
    # An unquoted comma inside a cell shifts every later cell of its row: such a row must not be
    # read as if its cells were where the header says (x=4, y=100, z=200 here), nor dropped.
    from synanno_datagen.transforms.geometry import Box
    from synanno_datagen.transforms.points import TableLayout
    from synanno_datagen.transforms.records import EXTRA_CELLS, RowRef
    from synanno_datagen.transforms.table import parse_row

    (tmp_path / "t.csv").write_text("id,note,x,y,z\n5,3,4,100,200,30\n6,ok,10,20,3,\n7,a,1,2,3, \n")
    rows = list(iter_rows(str(tmp_path / "t.csv")))
    layout = TableLayout(center=PointColumns(("x", "y", "z")), pre=None, post=None)
    bounds = Box((0, 0, 0), (1000, 1000, 1000))
    with pytest.raises(BadValue) as bad:
        parse_row(rows[0], RowRef(0, 0), "id", None, bounds, layout)
    assert bad.value.reason == EXTRA_CELLS
    assert "6 cells for the header's 5 named columns" in str(bad.value)
    # Empty cells beyond the header (a trailing comma, as some exporters write) change nothing.
    assert [parse_row(r, RowRef(0, i + 1), "id", None, bounds, layout).center_xyz
            for i, r in enumerate(rows[1:])] == [(10, 20, 3), (1, 2, 3)]
    assert rows[1] == {"id": "6", "note": "ok", "x": "10", "y": "20", "z": "3"}
    # Found by review: an exporter that ends every line with a comma, the header's too, gives
    # the header a last column without a name, which took the cell a comma had moved.
    (tmp_path / "u.csv").write_text("id,note,x,y,z,\n5,3,4,100,200,30,\n6,ok,10,20,3,\n")
    shifted, fine = iter_rows(str(tmp_path / "u.csv"))
    with pytest.raises(BadValue) as bad:
        parse_row(shifted, RowRef(0, 0), "id", None, bounds, layout)
    assert bad.value.reason == EXTRA_CELLS and "the header's 5 named columns" in str(bad.value)
    assert parse_row(fine, RowRef(0, 1), "id", None, bounds, layout).center_xyz == (10, 20, 3)
    # Two such commas on the header's line: both its unnamed columns are dropped, not the last
    # alone, so the moved cell is still seen (found by mutation review)
    (tmp_path / "v.csv").write_text("id,note,x,y,z,,\n5,3,4,100,200,30,\n6,ok,10,20,3,,\n")
    shifted, fine = iter_rows(str(tmp_path / "v.csv"))
    with pytest.raises(BadValue) as bad:
        parse_row(shifted, RowRef(0, 0), "id", None, bounds, layout)
    assert bad.value.reason == EXTRA_CELLS and "7 cells for the header's 5 named columns" in \
        str(bad.value)
    assert parse_row(fine, RowRef(0, 1), "id", None, bounds, layout).center_xyz == (10, 20, 3)


def test_parquet_nanosecond_time_columns_are_read_as_their_text(tmp_path):
    # CAVE exports carry timestamps; pandas writes datetime64[ns] as Parquet nanoseconds, which
    # Arrow cannot hand to Python without pandas: the run ended in a ValueError traceback.
    ns = 1_700_000_000_000_000_001
    pq.write_table(pa.table({
        "id": pa.array([7], pa.int64()),
        "x": pa.array([1], pa.int64()), "y": pa.array([2], pa.int64()),
        "z": pa.array([3], pa.int64()),
        "created": pa.array([ns], pa.timestamp("ns", tz="UTC")),
        "age": pa.array([5], pa.duration("ns")),
        "at": pa.array([5], pa.time64("ns")),
        "times": pa.array([[ns, None]], pa.list_(pa.timestamp("ns"))),
    }), tmp_path / "t.parquet")
    (row,) = iter_rows(str(tmp_path / "t.parquet"))
    assert row == {"id": "7", "x": "1", "y": "2", "z": "3",
                   "created": "2023-11-14 22:13:20.000000001Z", "age": "5",
                   "at": "00:00:00.000000005",
                   "times": "[2023-11-14 22:13:20.000000001, null]"}


def test_nanosecond_values_anywhere_in_a_column_are_never_converted_by_python():
    """With pandas installed, Arrow turns nanosecond values into pandas' Timestamps, whose text
    differs from what a process without pandas writes (a Dataflow worker's image has pandas,
    a venv may not): a struct of them read as '{"a": "2023-..."}' there and as its type here,
    in dead letters and remembered rows' hashes. Such columns never go through Python's
    values, whatever is installed."""
    from synanno_datagen.transforms.table_formats import _holds_nanoseconds

    ns, us = pa.timestamp("ns"), pa.timestamp("us")
    for t in (ns, pa.duration("ns"), pa.time64("ns"), pa.struct([("a", ns)]),
              pa.list_(pa.struct([("b", pa.int64()), ("a", ns)])), pa.map_(pa.string(), ns),
              pa.map_(ns, pa.int64()), pa.large_list(pa.list_(ns)), pa.list_(ns, 3)):
        assert _holds_nanoseconds(t), t
    for t in (us, pa.int64(), pa.string(), pa.struct([("a", us)]), pa.map_(pa.string(), us),
              pa.list_(pa.float32()), pa.date32()):
        assert not _holds_nanoseconds(t), t


def test_parquet_columns_python_cannot_hold_never_stop_the_rows(tmp_path):
    # Found by review: a column the run does not read ended it with a traceback, or a 'bad
    # table', when Python's datetime cannot hold its values (year 10000, an unknown time zone,
    # nanoseconds inside a struct or map). Such a cell reads as Arrow's text of it, or, where
    # Arrow has none, as its type.
    ns = 1_700_000_000_000_000_001
    pq.write_table(pa.table({
        "id": pa.array([7, 8], pa.int64()),
        "late": pa.array([253402300800000000, None], pa.timestamp("us")),
        "mars": pa.array([0, 1], pa.timestamp("us", tz="Mars/Olympus")),
        "day": pa.array([2**31 - 1, 0], pa.date32()),
        "nested": pa.array([{"a": ns}, None], pa.struct([("a", pa.timestamp("ns"))])),
        "listed": pa.array([[ns], []], pa.list_(pa.timestamp("ns"))),
        "mapped": pa.array([[("k", ns)], None], pa.map_(pa.string(), pa.timestamp("ns"))),
        "far": pa.array([{"t": ns}, None],
                        pa.struct([("t", pa.timestamp("ns", tz="Mars/Olympus"))])),
    }), tmp_path / "t.parquet")
    first, second = iter_rows(str(tmp_path / "t.parquet"))
    assert first["id"] == "7" and second["id"] == "8"
    assert first["late"] == "10000-01-01 00:00:00.000000" and second["late"] == ""
    # nanoseconds in a struct, list or map: Arrow's text, with or without pandas installed
    assert first["nested"] == '{"a": "2023-11-14 22:13:20.000000001"}' and second["nested"] == ""
    assert first["listed"] == "[2023-11-14 22:13:20.000000001]" and second["listed"] == "[]"
    assert first["mapped"] == '[["k", "2023-11-14 22:13:20.000000001"]]'
    assert first["far"] == "(struct<t: timestamp[ns, tz=Mars/Olympus]> value)"
    assert first["mars"] and first["day"]


def test_count_rows_counts_the_rows_iter_rows_reads(tmp_path):
    from synanno_datagen.transforms.table_formats import count_rows

    (tmp_path / "t.csv").write_text('id,note\n1,"a\nb"\n\n2,\r\n3,c')
    with gzip.open(tmp_path / "t.csv.gz", "wt", newline="") as f:
        f.write((tmp_path / "t.csv").read_text())
    pq.write_table(pa.table({"id": [1, 2, 3, 4]}), tmp_path / "t.parquet", row_group_size=3)
    for name, n in (("t.csv", 3), ("t.csv.gz", 3), ("t.parquet", 4)):
        path = str(tmp_path / name)
        assert count_rows(path) == len(list(iter_rows(path))) == n


def test_long_parquet_shards_and_concatenated_gzip_csv_read_every_row(tmp_path):
    """Found by mutation review (each passed every test): a reader keeping one Parquet batch
    only (the tests' tables were all shorter than a batch) or one gzip member only (`cat a.gz
    b.gz`, as shards are joined) dropped rows without a word."""
    from synanno_datagen.transforms.table_formats import PARQUET_BATCH_ROWS, count_rows

    n = PARQUET_BATCH_ROWS + 5
    pq.write_table(pa.table({"id": list(range(n)), "x": list(range(n))}),
                   tmp_path / "t.parquet", row_group_size=1000)
    rows = list(iter_rows(str(tmp_path / "t.parquet")))
    assert len(rows) == n == count_rows(str(tmp_path / "t.parquet"))
    assert rows[-1] == {"id": str(n - 1), "x": str(n - 1)}
    joined = gzip.compress(b"id,x\n1,2\n") + gzip.compress(b"3,4\n5,6\n")
    (tmp_path / "joined.csv.gz").write_bytes(joined)
    assert list(iter_rows(str(tmp_path / "joined.csv.gz"))) == [
        {"id": "1", "x": "2"}, {"id": "3", "x": "4"}, {"id": "5", "x": "6"}]
    assert count_rows(str(tmp_path / "joined.csv.gz")) == 3


def test_a_cell_over_the_limit_is_said_to_be_in_the_row_after_the_last_good_line(tmp_path):
    """Found by review: a cell too long on line 4 was reported as 'the row after line 4' (the
    csv reader's count includes the failing row's own line)."""
    from synanno_datagen.transforms.table_formats import CSV_CELL_LIMIT

    table = tmp_path / "long.csv"
    table.write_text("id,x,y,z,note\n1,1,1,1,a\n2,2,2,2,b\n3,3,3,3,"
                     + "c" * (CSV_CELL_LIMIT + 1) + "\n4,4,4,4,d\n")
    with pytest.raises(TableFormatError, match=rf"{table}: the row after line 3: field larger "
                                               r"than field limit"):
        list(iter_rows(str(table)))
    spanning = tmp_path / "spanning.csv"   # rows over several lines (quoted newlines), the
    spanning.write_text('id,x,y,z,note\n1,1,1,1,"a\nb\nc"\n2,2,2,2,"d\ne'   # failing one too
                        + "c" * (CSV_CELL_LIMIT + 1) + '"\n')
    with pytest.raises(TableFormatError, match=rf"{spanning}: the row after line 4: field "
                                               r"larger than field limit"):
        list(iter_rows(str(spanning)))
    header = tmp_path / "header.csv"
    header.write_text("id,x,y,z," + "n" * (CSV_CELL_LIMIT + 1) + "\n1,1,1,1,a\n")
    with pytest.raises(TableFormatError, match=rf"{header}: the header: field larger"):
        list(iter_rows(str(header)))


def test_a_parquet_shard_is_read_in_parts_of_a_row_group_each_a_csv_whole(tmp_path):
    """A table of one large Parquet file was read and parsed by one thread (a scale review:
    about an hour for 150 million rows); its row groups are now parts that workers read apart,
    each knowing its first row, and together they are the shard's rows in order."""
    from synanno_datagen.transforms.table_formats import iter_rows, shard_parts

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": list(range(8)), "x": [f"{10 * i}" for i in range(8)]}), path,
                   row_group_size=3)
    parts = shard_parts(str(path))
    assert parts == [(0, 0), (1, 3), (2, 6)]
    rows = [(first + k, row) for part, first in parts
            for k, row in enumerate(iter_rows(str(path), part))]
    assert rows == list(enumerate(iter_rows(str(path))))
    assert [row["id"] for _, row in rows] == [str(i) for i in range(8)]
    csv_path = tmp_path / "t.csv.gz"
    csv_path.write_bytes(gzip.compress(b"id,x\n1,2\n3,4\n"))
    assert shard_parts(str(csv_path)) == [(None, 0)]
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), empty)
    assert [list(iter_rows(str(empty), part)) for part, _ in shard_parts(str(empty))] == [[]]
