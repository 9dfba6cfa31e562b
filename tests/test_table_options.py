"""Table problems found from headers and footers: one line, exit code 2, nothing written."""
from __future__ import annotations

import gzip
import logging
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import assert_usage_error


def _csv(path, text):
    path.write_text(text)


def _parquet(path, columns):
    pq.write_table(pa.table(columns), path)


def _pandas(name):
    """A writer of tests/data/pandas/NAME, a one-row table (id, x, y, z) pandas wrote with
    ``df.attrs`` in its metadata (PANDAS_ATTRS; tests/data/make_pandas_tables.py)."""
    def write(path):
        from tests.data.make_pandas_tables import HERE

        shutil.copyfile(HERE / name, path)
    return write


def _pandas_resolution(text):
    """A writer of res_4_4_40.parquet with its attrs' dataframe_resolution written as ``text``
    (JSON, as pandas writes attrs: ``Infinity`` for an infinite float)."""
    def write(path):
        _pandas("res_4_4_40.parquet")(path)
        table = pq.read_table(path)
        attrs = table.schema.metadata[b"PANDAS_ATTRS"].replace(b"[4, 4, 40]}",
                                                               text.encode() + b"}")
        assert attrs != table.schema.metadata[b"PANDAS_ATTRS"]
        pq.write_table(table.replace_schema_metadata(
            {**table.schema.metadata, b"PANDAS_ATTRS": attrs}), path)
    return write


def _gzip_bytes_named_csv(path):
    with gzip.open(path, "wt") as f:
        f.write("id,x,y,z\n1,2,3,4\n")


# (files to write, --materialization relative to tmp_path, extra flags, fragments of the line)
CASES = {
    "centre flag absent": (
        {}, None, ["--center-column", "ctr_pt_position"],
        ["--center-column ctr_pt_position:", "has no column ctr_pt_position or "
         "ctr_pt_position_x/_y/_z", "(found: id,x,y,z,pre_pt_x,"]),
    # found by review: a CAVE point's list column named with an axis got no word of it
    "centre flag with an axis": (
        {"t.parquet": {"id": pa.array([1]), "ctr_pt_position": pa.array([[1, 2, 3]])}},
        "t.parquet", ["--center-column", "ctr_pt_position_x"],
        ["--center-column ctr_pt_position_x:", "(found: id,ctr_pt_position); ctr_pt_position "
         "looks like the point: pass --center-column ctr_pt_position"]),
    "centre flag a prefix": (
        {"t.csv": "id,ctr_pt_position_x,ctr_pt_position_y,ctr_pt_position_z\n1,2,3,4\n"},
        "t.csv", ["--center-column", "ctr_pt"],
        ["--center-column ctr_pt:", "ctr_pt_position looks like the point: pass --center-column "
         "ctr_pt_position"]),
    # found by mutation review: a point named with its y or z axis, and a prefix of several
    # points (the first named, the others said), got no test
    "centre flag with the z axis": (
        {"t.parquet": {"id": pa.array([1]), "ctr_pt_position": pa.array([[1, 2, 3]])}},
        "t.parquet", ["--center-column", "ctr_pt_position_z"],
        ["(found: id,ctr_pt_position); ctr_pt_position looks like the point: pass "
         "--center-column ctr_pt_position"]),
    "centre flag a prefix of two points": (
        {"t.csv": "id,ctr_pt_scaled_x,ctr_pt_scaled_y,ctr_pt_scaled_z,ctr_pt_position_x,"
                  "ctr_pt_position_y,ctr_pt_position_z\n1,2,3,4,5,6,7\n"},
        "t.csv", ["--center-column", "ctr_pt"],
        ["; ctr_pt_position and others look like the point: pass --center-column "
         "ctr_pt_position"]),
    "pre flag absent": (
        {}, None, ["--pre-column", "pre_pt_position"],
        ["--pre-column pre_pt_position:", "no column pre_pt_position or pre_pt_position_x/_y/_z"]),
    "post flag absent": (
        {}, None, ["--post-column", "post"], ["--post-column post:", "no column post or post_x"]),
    "centre columns partly there": (
        {"t.csv": "id,ctr_pt_position_x,ctr_pt_position_y\n1,2,3\n"}, "t.csv",
        ["--center-column", "ctr_pt_position"],
        ["--center-column ctr_pt_position:", "has ctr_pt_position_x, ctr_pt_position_y but not "
         "ctr_pt_position_z; a point needs all three"]),
    "default pre partly there": (
        {"t.csv": "x,y,z,pre_pt_x\n1,2,3,4\n"}, "t.csv", [],
        ["--materialization", "has pre_pt_x but not pre_pt_y, pre_pt_z"]),
    "a scalar column is no list": (
        {"t.parquet": {"ctr_pt_position": pa.array([1, 2], pa.int64())}}, "t.parquet",
        ["--center-column", "ctr_pt_position"],
        ["--center-column ctr_pt_position:", "has column ctr_pt_position of type int64, not "
         "[x, y, z] lists"]),
    "a list of lists is no point list": (   # found by review: every row dead-lettered
        {"t.parquet": {"ctr_pt_position": pa.array([[[1, 2, 3]], [[4, 5, 6]]])}}, "t.parquet",
        ["--center-column", "ctr_pt_position"],
        ["--center-column ctr_pt_position:", "has column ctr_pt_position of type "
         "list<element: list<element: int64>>, not [x, y, z] lists"]),
    # found by review: such columns rejected every row, one by one, and the run exited 0
    "a bool coordinate column": (
        {"t.parquet": {"id": [1], "x": pa.array([True]), "y": [2], "z": [3]}}, "t.parquet", [],
        ["--center-column x/y/z:", "t.parquet has column x of type bool, not numbers or "
         "text"]),
    "a timestamp pre column in a later shard": (
        {"t/a.parquet": {"id": [1], "x": [1], "y": [2], "z": [3], "pre_pt_x": [1],
                         "pre_pt_y": [2], "pre_pt_z": [3]},
         "t/b.parquet": {"id": [2], "x": [1], "y": [2], "z": [3],
                         "pre_pt_x": pa.array([0], pa.timestamp("s")), "pre_pt_y": [2],
                         "pre_pt_z": [3]}}, "t/*.parquet", [],
        ["--pre-column pre_pt_x/pre_pt_y/pre_pt_z:", "b.parquet has column pre_pt_x of type "
         "timestamp[ms], not numbers or text"]),   # (Parquet stores seconds as ms)
    "a binary id column": (
        {"t.parquet": {"id": pa.array([b"1"]), "x": [1], "y": [2], "z": [3]}}, "t.parquet", [],
        ["--id-column id:", "t.parquet has column id of type binary, not numbers or text"]),
    # found by review: in CSV, where any column may hold lists, every row was dead-lettered
    # (not_a_number) and the run exited 0
    "one coordinate of a CSV point named as the centre": (
        {"t.csv": "id,ctr_pt_position_x,ctr_pt_position_y,ctr_pt_position_z\n1,2,3,4\n"},
        "t.csv", ["--center-column", "ctr_pt_position_x"],
        ["--center-column ctr_pt_position_x:", "t.csv: ctr_pt_position_x is one coordinate of "
         "the point ctr_pt_position_x/_y/_z; pass --center-column ctr_pt_position"]),
    "one coordinate of a Parquet point named as pre": (
        {"t.parquet": {"id": [1], "x": [1], "y": [2], "z": [3], "pre_pt_position_x": [1.0],
                       "pre_pt_position_y": [2.0], "pre_pt_position_z": [3.0]}},
        "t.parquet", ["--pre-column", "pre_pt_position_z"],
        ["--pre-column pre_pt_position_z:", "pre_pt_position_z is one coordinate of the point "
         "pre_pt_position_x/_y/_z; pass --pre-column pre_pt_position"]),
    "one of the default centre columns named": (
        {"t.csv": "id,x,y,z\n1,2,3,4\n"}, "t.csv", ["--center-column", "x"],
        ["--center-column x:", "x is one coordinate of the point x/y/z; leave --center-column "
         "out (x/y/z is the default)"]),
    # found by review: the advice named no column, though the pre/post warnings did
    "a CAVE table without --center-column": (
        {"t.parquet": {"id": [1], "ctr_pt_position": pa.array([[1, 2, 3]]),
                       "pre_pt_position": pa.array([[1, 2, 3]])}}, "t.parquet", [],
        ["no centre columns x/y/z (found: id,ctr_pt_position,pre_pt_position); name the centre "
         "with --center-column NAME (ctr_pt_position looks like one: pass --center-column "
         "ctr_pt_position)"]),
    "centre columns ctr_x/_y/_z without --center-column": (
        {"t.csv": "id,ctr_x,ctr_y,ctr_z,size\n1,2,3,4,5\n"}, "t.csv", [],
        ["(ctr looks like one: pass --center-column ctr)"]),
    # found by review: a word holding 'cent' is no centre
    "percent columns are no centre": (
        {"t.csv": "id,percent_x,percent_y,percent_z\n1,2,3,4\n"}, "t.csv", [],
        ["name the centre with --center-column NAME (a column of [x, y, z] lists, or "
         "NAME_x/_y/_z)"]),
    "a later shard's column is no list": (
        {"t/a.parquet": {"id": [1], "c": pa.array([[1, 2, 3]])},
         "t/b.parquet": {"id": [2], "c": pa.array([7])}}, "t/*.parquet",
        ["--center-column", "c"],
        ["--center-column c:", "b.parquet has column c of type int64, not [x, y, z] lists"]),
    "shards with other columns": (
        {"t/a.csv": "id,x,y,z,score\n1,2,3,4,5\n", "t/b.csv": "id,x,y,z,size\n1,2,3,4,5\n"},
        "t/*.csv", [],
        ["has different columns than", "a.csv (lacks: score; extra: size)"]),
    "shards of two formats": (
        {"t/a.csv": "x,y,z\n1,2,3\n", "t/b.parquet": {"x": [1], "y": [2], "z": [3]}}, "t/*", [],
        ["shards mix formats", "a.csv is CSV", "b.parquet is Parquet"]),
    "not Parquet inside": (
        {"t.parquet": "x,y,z\n1,2,3\n"}, "t.parquet", [],
        ["--materialization", "not a Parquet file"]),
    "not gzip inside": (
        {"t.csv.gz": "x,y,z\n1,2,3\n"}, "t.csv.gz", [], ["--materialization", "not gzip data"]),
    "not bzip2 inside": (
        {"t.csv.bz2": "x,y,z\n1,2,3\n"}, "t.csv.bz2", [],
        ["--materialization", "not bzip2 data", "a .bz2 shard must be bzip2-compressed CSV"]),
    "a JSON table": (   # found by review: refused as 'no data rows (a header only)'
        {"t.json": '{"x":{"0":1},"y":{"0":2},"z":{"0":3}}'}, "t.json", [],
        ["--materialization", "t.json: unknown format: JSON is not read; give CSV, plain or "
         "compressed (.csv, .csv.gz/.gz, .csv.bz2/.bz2, .csv.xz/.xz), or Parquet"]),
    "a zstd CSV": (   # found by review: refused with a TypeError
        {"t.csv.zst": "x,y,z\n1,2,3\n"}, "t.csv.zst", [],
        ["--materialization", "t.csv.zst: unknown format: zstd-compressed CSV is not read"]),
    "gzip named csv": (
        {"t.csv": _gzip_bytes_named_csv}, "t.csv", [],
        ["--materialization", "unknown format", "content is gzip", ".csv.gz"]),
    "a column named twice": (
        {"t.csv": "id,x,y,z,x\n1,2,3,4,5\n"}, "t.csv", [],
        ["--materialization", "t.csv: column 'x' appears twice in the header"]),
    "a Parquet column named twice": (
        {"t.parquet": lambda path: pq.write_table(pa.Table.from_arrays(
            [pa.array([1]), pa.array([2]), pa.array([3]), pa.array([4]), pa.array([5])],
            names=["id", "x", "y", "z", "id"]), path)}, "t.parquet", [],
        ["--materialization", "t.parquet: column 'id' appears twice in the header"]),
    "a later shard names a column twice": (
        {"t/a.csv": "id,x,y,z\n1,2,3,4\n", "t/b.csv": "id,x,y,z,x\n1,2,3,4,5\n"}, "t/*.csv",
        [], ["--materialization", "b.csv: column 'x' appears twice in the header"]),
    "spaces after the commas": (
        {"t.csv": "id, x, y, z\n1,2,3,4\n"}, "t.csv", [],
        ["no centre columns x/y/z (found: id,' x',' y',' z')", "names are exact (case and "
         "spaces): rename ' x', ' y', ' z' to x, y, z"]),
    "upper-case names": (   # found by review: told to name a centre flag no name fits
        {"t.csv": "ID,X,Y,Z\n1,2,3,4\n"}, "t.csv", [],
        ["no centre columns x/y/z (found: ID,X,Y,Z)", "names are exact (case and spaces): "
         "rename X, Y, Z to x, y, z"]),
    "semicolons": (
        {"t.csv": "id;x;y;z\n1;2;3;4\n"}, "t.csv", [],
        ["no centre columns x/y/z (found: id;x;y;z)", "the header is one column holding ';': "
         "CSV cells are separated by commas; export with commas"]),
    # found by review: an unset variable gave '--center-column : TABLE has no column  or
    # _x/_y/_z', as --pre-column '' and --post-column '' do not
    "empty centre flag": (
        {}, None, ["--center-column", ""],
        ["--center-column '': empty; give a column name"]),
    "empty id flag": (
        {}, None, ["--id-column", ""], ["--id-column '': empty; give a column name"]),
    "zero resolution": (
        {}, None, ["--coordinate-resolution", "0", "4", "33"],
        ["--coordinate-resolution 0.0 4.0 33.0: must be positive nm per table unit"]),
    "nan resolution": (
        {}, None, ["--coordinate-resolution", "4", "nan", "33"],
        ["--coordinate-resolution 4.0 nan"]),
    "infinite resolution": (   # (found by mutation review: read as units)
        {}, None, ["--coordinate-resolution", "inf", "4", "33"],
        ["--coordinate-resolution inf 4.0 33.0: must be positive nm per table unit"]),
    # CAVEclient's attrs (dataframe_resolution: the units of its points) against the flag
    "resolution flag other than the table's": (
        {"t.parquet": _pandas("res_4_4_40.parquet")}, "t.parquet",
        ["--coordinate-resolution", "8", "8", "40"],
        ["--coordinate-resolution 8 8 40: ", "t.parquet declares dataframe_resolution 4 4 40 nm "
         "per unit (pandas attrs in its Parquet metadata, as CAVEclient sets them); leave the "
         "flag out"]),
    "shards declaring other resolutions": (
        {"t/a.parquet": _pandas("res_4_4_40.parquet"),
         "t/b.parquet": _pandas("res_8_8_40.parquet")}, "t/*.parquet", [],
        ["--materialization: ", "b.parquet declares dataframe_resolution 8 8 40 but ",
         "a.parquet 4 4 40 (pandas attrs in their Parquet metadata); the shards of one table "
         "must be in one unit"]),
    "a shard declaring no resolution, no flag": (   # (none is a unit too: the target's voxels)
        {"t/a.parquet": _pandas("res_4_4_40.parquet"),
         "t/b.parquet": _pandas("res_absent.parquet")}, "t/*.parquet", [],
        ["b.parquet declares dataframe_resolution none but ", "a.parquet 4 4 40",
         "pass --coordinate-resolution X Y Z, the units of them all"]),
    "a flag other than one shard's": (
        {"t/a.parquet": _pandas("res_absent.parquet"),
         "t/b.parquet": _pandas("res_4_4_40.parquet")}, "t/*.parquet",
        ["--coordinate-resolution", "4", "4", "33"],
        ["--coordinate-resolution 4 4 33: ", "b.parquet declares dataframe_resolution 4 4 40"]),
    "a flag other than a later shard's": (   # (each shard is checked: found by mutation review)
        {"t/a.parquet": _pandas("res_4_4_40.parquet"),
         "t/b.parquet": _pandas("res_8_8_40.parquet")}, "t/*.parquet",
        ["--coordinate-resolution", "4", "4", "40"],
        ["--coordinate-resolution 4 4 40: ", "b.parquet declares dataframe_resolution 8 8 40"]),
    "a resolution that is not three numbers": (   # a CAVE join of tables in different units
        {"t.parquet": _pandas("res_mixed.parquet")}, "t.parquet", [],
        ["--materialization ", "t.parquet: its dataframe_resolution (pandas attrs) is "
         "\"mixed_resolutions\", not three positive numbers", "pass --coordinate-resolution "
         "X Y Z"]),
    # (the next three were read as units: found by mutation review)
    **{f"a resolution of {text}": (
        {"t.parquet": _pandas_resolution(text)}, "t.parquet", [],
        ["--materialization ", f"t.parquet: its dataframe_resolution (pandas attrs) is {text}, "
         "not three positive numbers", "pass --coordinate-resolution X Y Z"])
       for text in ("[0, 4, 40]", "[Infinity, 4, 40]", "[true, 4, 40]", "[4, 4, 40, 1]")},
    # an integer beyond any float is no unit, shown cut at 80 characters (found by mutation
    # review: an OverflowError traceback)
    "a resolution beyond any float": (
        {"t.parquet": _pandas_resolution(f"[1{'0' * 400}, 4, 40]")}, "t.parquet", [],
        [f"t.parquet: its dataframe_resolution (pandas attrs) is [1{'0' * 78}, not three "
         "positive numbers"]),
    "word resolution": (
        {}, None, ["--coordinate-resolution", "4", "four", "33"],
        ["--coordinate-resolution", "invalid float value: 'four'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_table_problems_stop_the_run_before_any_work(small_data, tmp_path, capsys, case):
    files, table, extra, fragments = CASES[case]
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, dict):
            _parquet(path, content)
        else:
            _csv(path, content)
    argv = small_data.argv(tmp_path / "out", *extra)
    if table:
        argv[argv.index("--materialization") + 1] = str(tmp_path / table)
    assert_usage_error(capsys, ["run"] + argv, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_parquet_list_column_named_as_an_axis_is_a_point(tmp_path):
    """Found by review: a Parquet column of [x, y, z] lists named x (or p_x) beside y and z
    columns was refused as one coordinate of x/y/z; its type says it is a whole point. A column
    named _x was told that _x/_y/_z is the default centre."""
    from synanno_datagen.pipeline.table_options import describe_table

    table = tmp_path / "t.parquet"
    _parquet(table, {"id": [1], "x": pa.array([[1, 2, 3]]), "y": [2], "z": [3]})
    assert describe_table(str(table), None, "x", None, None).layout.center.columns == ("x",)
    (tmp_path / "u.csv").write_text("id,_x,_y,_z\n1,2,3,4\n")   # no NAME to name them by
    assert describe_table(str(tmp_path / "u.csv"), None, "_x", None, None).layout.center \
        .columns == ("_x",)


def test_columns_named_twice_that_the_run_does_not_read_are_fine(small_data, tmp_path):
    """Spreadsheets export trailing commas: two columns named '' are no problem."""
    from synanno_datagen.pipeline.config import check

    lines = open(small_data.table_path).read().splitlines()
    table = tmp_path / "trailing.csv"
    table.write_text("\n".join(line + ",," for line in lines) + "\n")
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(table)
    assert check(argv)[0].id_column == "id"


def test_a_table_without_pre_and_post_needs_no_flag(small_data, tmp_path):
    from synanno_datagen.pipeline.config import parse

    table = tmp_path / "t.parquet"
    _parquet(table, {"id": pa.array([1], pa.int64()),
                     "ctr_pt_position": pa.array([[960, 1760, 462]], pa.list_(pa.int64()))})
    argv = small_data.argv(tmp_path / "out", "--center-column", "ctr_pt_position",
                           "--coordinate-resolution", "1", "1", "1")
    argv[argv.index("--materialization") + 1] = str(table)
    config, _ = parse(argv)
    assert config.table_format == "parquet" and config.id_column == "id"
    assert config.points.center.columns == ("ctr_pt_position",)
    assert config.points.pre is None and config.points.post is None
    assert [str(f) for f in config.points.to_target_xyz] == ["1/8", "1/8", "1/33"]
    assert config.generation()["table_points"]["pre_pt_xyz"] is None


def test_a_glob_in_the_working_directory_matches_its_shards(tmp_path, monkeypatch):
    """'syn-*.csv' (no folder part) matched nothing in Beam's local filesystem, while
    './syn-*.csv' and 'syn-1.csv' worked."""
    from synanno_datagen.pipeline.table_options import match_table

    monkeypatch.chdir(tmp_path)
    for name in ("syn-2.csv", "syn-1.csv", "other.csv"):
        (tmp_path / name).write_text("id\n1\n")
    assert [os.path.basename(p) for p in match_table("syn-*.csv")] == ["syn-1.csv", "syn-2.csv"]
    assert match_table("syn-1.csv") == ["syn-1.csv"]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "syn-3.csv").write_text("id\n3\n")
    assert [os.path.basename(p) for p in match_table("s*/syn-*.csv")] == ["syn-3.csv"]
    # Found by review: an existing file with '[' in its name was refused as a glob matching
    # nothing, and '~' was not expanded (as it is for --output-dir and the volumes).
    (tmp_path / "g[1]").mkdir()
    (tmp_path / "g[1]" / "syn.csv").write_text("id\n1\n")
    assert match_table(str(tmp_path / "g[1]" / "syn.csv")) == [str(tmp_path / "g[1]" / "syn.csv")]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert match_table("~/syn-1.csv") == [str(tmp_path / "syn-1.csv")]


def test_a_table_without_id_but_with_an_id_like_column_warns(tmp_path, caplog):
    """Ids are taken only from a column named exactly 'id' (or --id-column): a table whose ids
    are in 'ID' or 'synapse_id' was numbered by row without a word."""
    import logging

    from synanno_datagen.pipeline.table_options import describe_table

    table = tmp_path / "t.csv"
    table.write_text("ID,synapse_id,valid,x,y,z\n7,8,t,1,2,3\n")
    with caplog.at_level(logging.WARNING):
        spec = describe_table(str(table), None, None, None, None)
    assert spec.id_column is None
    assert (f"--materialization {table}: no column named 'id', so instances are numbered by "
            "row; to take ids from a column (ID, synapse_id), pass --id-column NAME") in \
        caplog.text
    caplog.clear()
    (tmp_path / "u.csv").write_text("x,y,z\n1,2,3\n")
    with caplog.at_level(logging.WARNING):
        describe_table(str(tmp_path / "u.csv"), None, None, None, None)
    assert "--id-column" not in caplog.text


def test_the_id_warning_names_no_column_of_neuron_or_segment_ids(tmp_path, caplog):
    """Found by review: the warning suggested pre_neuron_id and post_neuron_id as synapse ids;
    following it made every further synapse of a neuron a duplicate_id."""
    import logging

    from synanno_datagen.pipeline.table_options import describe_table

    xyz = "pre_pt_x,pre_pt_y,pre_pt_z,post_pt_x,post_pt_y,post_pt_z,x,y,z"
    (tmp_path / "t.csv").write_text(f"{xyz},pre_neuron_id,post_neuron_id\n" + "1," * 10 + "2\n")
    with caplog.at_level(logging.WARNING):
        assert describe_table(str(tmp_path / "t.csv"), None, None, None, None).id_column is None
    assert "--id-column" not in caplog.text
    caplog.clear()
    others = ["pre_pt_root_id", "post_pt_supervoxel_id", "pre_segment_id", "post_seg_id",
              "preNeuronId", "bodyId", "post_cell_id", "root_id", "SegmentID"]
    synapses = ["synapse_segment_id", "cleftSegmentId"]   # a synapse segmentation's labels
    (tmp_path / "u.csv").write_text(
        ",".join(["x", "y", "z", "synapse_id"] + others + synapses + ["ID"]) + "\n"
        + ",".join(["1"] * (len(others) + len(synapses) + 5)) + "\n")
    with caplog.at_level(logging.WARNING):
        describe_table(str(tmp_path / "u.csv"), None, None, None, None)
    assert ("to take ids from a column (synapse_id, synapse_segment_id, cleftSegmentId, ID), "
            "pass --id-column NAME" in caplog.text)


def test_ids_held_only_as_a_pandas_range_index_are_refused(tmp_path):
    """Found by review: df.set_index('id').to_parquet() stores evenly spaced ids as a RangeIndex
    in the file's pandas metadata, no column: instances were numbered by row, 0.. instead of the
    table's ids, with a warning only."""
    import json

    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.table_options import describe_table

    pandas = {"index_columns": [{"kind": "range", "name": "id", "start": 1000, "stop": 1014,
                                 "step": 7}], "columns": []}
    table = pa.table({"x": [1, 2], "y": [2, 3], "z": [3, 4]}).replace_schema_metadata(
        {b"pandas": json.dumps(pandas).encode()})
    pq.write_table(table, tmp_path / "t.parquet")
    for requested in (None, "id"):
        with pytest.raises(ConfigError) as err:
            describe_table(str(tmp_path / "t.parquet"), requested, None, None, None)
        assert str(err.value) == (
            f"--materialization {tmp_path / 't.parquet'}: 'id' is the table's pandas index, "
            "which pandas stored in the file's metadata (a RangeIndex), not as a column; write "
            "it with df.reset_index().to_parquet(...), or to_parquet(..., index=True)")
    # ... in any shard of a glob (the first here has none, or a real id column: a mix of
    # writers; the advice, not 'different columns')
    (tmp_path / "t.parquet").rename(tmp_path / "s1.parquet")
    for first in ({"x": [1], "y": [2], "z": [3]}, {"id": [9], "x": [1], "y": [2], "z": [3]}):
        pq.write_table(pa.table(first), tmp_path / "s0.parquet")
        with pytest.raises(ConfigError, match="s1.parquet: 'id' is the table's pandas index"):
            describe_table(str(tmp_path / "s*.parquet"), None, None, None, None)
    # an unnamed range index (to_parquet of a plain frame) is no column the run wants
    pandas["index_columns"][0]["name"] = None
    pq.write_table(table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()}),
                   tmp_path / "u.parquet")
    assert describe_table(str(tmp_path / "u.parquet"), None, None, None, None).id_column is None


def test_a_cave_table_whose_pre_and_post_points_are_not_read_warns(tmp_path, caplog):
    """Found by review: a CAVE table names its points pre_pt_position and post_pt_position, and
    with only --center-column given, they were left out of every record without a word."""
    import logging

    from synanno_datagen.pipeline.table_options import describe_table

    table = tmp_path / "t.csv"
    table.write_text("id,ctr_pt_position,pre_pt_root_id,pre_pt_position_x,pre_pt_position_y,"
                     "pre_pt_position_z,post_pt_root_id,post_pt_position\n"
                     "1,[1 2 3],7,1,2,3,8,[1 2 3]\n")
    with caplog.at_level(logging.WARNING):
        spec = describe_table(str(table), None, "ctr_pt_position", None, None)
    assert spec.layout.pre is None and spec.layout.post is None
    for flag, name in (("--pre-column", "pre_pt_position"), ("--post-column", "post_pt_position")):
        assert (f"--materialization {table}: the {flag[2:-7]}-synaptic point is left out (no "
                f"column {flag[2:-7]}_pt or {flag[2:-7]}_pt_x/_y/_z); {name} looks like one: "
                f"pass {flag} {name}, or {flag} none to leave it out") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        spec = describe_table(str(table), None, "ctr_pt_position", "pre_pt_position", "none")
    assert spec.layout.pre is not None and spec.layout.post is None
    assert "left out" not in caplog.text
    # Found by review: the root ids of a CAVE table are no points, and were suggested as such
    (tmp_path / "ids.csv").write_text("id,x,y,z,pre_pt_root_id,post_pt_root_id\n1,2,3,4,5,6\n")
    pq.write_table(pa.table({"id": [1], "x": [2], "y": [3], "z": [4], "pre_pt_root_id": ["5"],
                             "pre_pt_supervoxel_position": [[1, 2, 3]]}), tmp_path / "ids.pq")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        describe_table(str(tmp_path / "ids.csv"), None, None, None, None)
        describe_table(str(tmp_path / "ids.pq"), None, None, None, None)
    assert "pre_pt_root_id" not in caplog.text and "post_pt_root_id" not in caplog.text
    assert "pre_pt_supervoxel_position looks like one" in caplog.text


def test_pre_and_post_points_can_be_left_out_with_none(tmp_path):
    """A table with pre/post columns that are present but empty rejected every row as
    missing_coordinate, and `--pre-column ''` silently meant the default."""
    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.table_options import describe_table

    table = tmp_path / "t.csv"
    table.write_text("id,x,y,z,pre_pt_x,pre_pt_y,pre_pt_z,post_pt_x,post_pt_y,post_pt_z\n"
                     "1,1,2,3,,,,,,\n")
    spec = describe_table(str(table), None, None, "none", "none")
    assert spec.layout.pre is None and spec.layout.post is None
    assert spec.layout.point_features() == ("center_xyz",)
    with pytest.raises(ConfigError, match="--pre-column '': empty; give a column name, or "
                       "'none' to leave the point out"):
        describe_table(str(table), None, None, "", None)


@pytest.mark.parametrize("empty_first", [True, False])
def test_an_empty_parquet_shard_whose_point_column_is_untyped_is_no_refusal(tmp_path,
                                                                           empty_first):
    """Found by review: pandas writes an empty DataFrame's object column as Arrow type null;
    such a header-only shard refused the whole glob when its name sorted first."""
    from synanno_datagen.pipeline.table_options import describe_table

    (tmp_path / "t").mkdir()
    empty, full = ("part-0", "part-1") if empty_first else ("part-1", "part-0")
    pq.write_table(pa.table({"id": pa.array([], pa.int64()),
                             "ctr_pt_position": pa.array([], pa.null())}),
                   tmp_path / "t" / f"{empty}.parquet")
    pq.write_table(pa.table({"id": [11], "ctr_pt_position": [[8100.0, 16100.0, 3400.0]]}),
                   tmp_path / "t" / f"{full}.parquet")
    spec = describe_table(str(tmp_path / "t" / "*.parquet"), None, "ctr_pt_position", None,
                          None)
    assert spec.layout.center.columns == ("ctr_pt_position",) and len(spec.shards) == 2


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_directory_is_no_table(tmp_path, slash):
    """Found by review: a directory was called 'not a regular file (a pipe?)', and with a
    trailing slash every file under it was read as a shard."""
    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.table_options import match_table

    folder = tmp_path / "tables"
    folder.mkdir()
    for name in ("a.csv", "b.csv"):
        (folder / name).write_text("id,x,y,z\n1,2,3,4\n")
    with pytest.raises(ConfigError, match=(
            rf"^--materialization {folder}{slash}: a directory; give a file, or a glob of its "
            rf"shards \(e\.g\. {folder}/\*\.csv\)$")):
        match_table(f"{folder}{slash}")


@pytest.mark.parametrize("kind, name, exact", [(pa.float64(), "float64", 2**53),
                                              (pa.float32(), "float32", 2**24)])
def test_ids_a_float_column_cannot_hold_exactly_are_invalid(tmp_path, kind, name, exact):
    """Found by review: pandas writes an int64 id column with a null as float64, where ids past
    2**53 are not stored exactly: 864691135000000001 to ...003 all became 864691135000000000,
    an id no row has, and two rows were called duplicates of it. Such ids are invalid_id,
    saying why; smaller ones, and the same ids in a shard of int64 ids, are read as before."""
    from synanno_datagen.pipeline.table_options import describe_table
    from synanno_datagen.transforms.geometry import Box
    from synanno_datagen.transforms.records import RowRef
    from synanno_datagen.transforms.table import BadValue, parse_row
    from synanno_datagen.transforms.table_formats import iter_rows

    (tmp_path / "t").mkdir()
    floats, ints = tmp_path / "t" / "a.parquet", tmp_path / "t" / "b.parquet"
    pq.write_table(pa.table({"id": pa.array([float(exact - 1), float(exact), None], kind),
                             "x": [1, 2, 3], "y": [1, 2, 3], "z": [1, 2, 3]}), floats)
    pq.write_table(pa.table({"id": [exact * 2 + 1], "x": [1], "y": [1], "z": [1]}), ints)
    spec = describe_table(str(tmp_path / "t" / "*.parquet"), None, None, None, None)
    assert spec.layout.float_ids == (name, None)
    rows = list(iter_rows(str(floats)))
    bounds = Box((0, 0, 0), (10, 10, 10))
    assert parse_row(rows[0], RowRef(0, 0), "id", None, bounds, spec.layout).instance_id == \
        exact - 1
    with pytest.raises(BadValue) as err:   # found by review: 2**53 + 1 is stored as 2**53 too
        parse_row(rows[1], RowRef(0, 1), "id", None, bounds, spec.layout)
    assert err.value.reason == "invalid_id"
    assert str(err.value).startswith(f"id {rows[1]['id']!r} is {exact:,} or beyond, where a "
                                     f"{name} column holds ids only approximately; store the "
                                     "ids as int64")
    row = next(iter_rows(str(ints)))
    assert parse_row(row, RowRef(1, 0), "id", None, bounds, spec.layout).instance_id == \
        exact * 2 + 1
    assert describe_table(str(ints), None, None, None, None).layout.float_ids == ()
    # the float shard sorting second is found too (found by mutation review: a look at the
    # first shard alone passed)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "a.parquet").write_bytes(ints.read_bytes())
    (tmp_path / "u" / "b.parquet").write_bytes(floats.read_bytes())
    spec = describe_table(str(tmp_path / "u" / "*.parquet"), None, None, None, None)
    assert spec.layout.float_ids == (None, name)
    with pytest.raises(BadValue, match="store the ids as int64"):
        parse_row(rows[1], RowRef(1, 1), "id", None, bounds, spec.layout)


def test_a_table_declaring_its_units_needs_no_flag(small_data, tmp_path, caplog):
    """CAVEclient's ``df.attrs["dataframe_resolution"]`` was ignored, the
    points read in target voxels; the flag naming the same units is no conflict, and metadata
    that is not pandas' JSON, JSON that is no object, or attrs without the key, declare
    nothing."""
    from synanno_datagen.pipeline.config import check

    def config_of(table, *flags):
        argv = small_data.argv(tmp_path / "out", *flags)
        argv[argv.index("--materialization") + 1] = str(table)
        return check(argv)[0]

    _pandas("res_4_4_33.parquet")(tmp_path / "a.parquet")
    with caplog.at_level(logging.INFO):
        read = config_of(tmp_path / "a.parquet")
    assert read.coordinate_resolution_nm_xyz == (4.0, 4.0, 33.0)
    assert read.coordinate_resolution_from_table
    assert [str(f) for f in read.points.to_target_xyz] == ["1/2", "1/2", "1"]
    assert "points read in 4 4 33 nm per unit, the table's dataframe_resolution" in caplog.text
    given = config_of(tmp_path / "a.parquet", "--coordinate-resolution", "4", "4", "33")
    assert not given.coordinate_resolution_from_table
    assert given.generation() == read.generation()
    assert given.to_manifest() == read.to_manifest()
    assert given.table_manifest()["coordinate_resolution_nm_xyz"] == [4.0, 4.0, 33.0]

    columns = pa.table({"id": [1], "x": [2], "y": [3], "z": [4]})
    pq.write_table(columns, tmp_path / "plain.parquet")
    pq.write_table(columns.replace_schema_metadata({b"PANDAS_ATTRS": b"not json"}),
                   tmp_path / "b.parquet")
    _pandas("res_absent.parquet")(tmp_path / "c.parquet")
    _pandas("res_none.parquet")(tmp_path / "d.parquet")
    pq.write_table(columns.replace_schema_metadata({b"PANDAS_ATTRS": b"[4, 4, 40]"}),
                   tmp_path / "e.parquet")   # JSON, no object (an AttributeError: mutation review)
    plain = config_of(tmp_path / "plain.parquet")
    for table in ("b.parquet", "c.parquet", "d.parquet", "e.parquet"):
        config = config_of(tmp_path / table)
        assert config.coordinate_resolution_nm_xyz is None
        assert not config.coordinate_resolution_from_table
        assert config.generation() == plain.generation()
        assert "coordinate_resolution_from" not in config.table_manifest()


def test_shards_declaring_no_units_beside_others_are_read_in_the_flags(small_data, tmp_path):
    """Found by review: a glob of nightly exports, older ones without attrs and a new one by
    pandas 2.1+ with them, was refused even with the flag naming the new one's units: every
    later night stopped until the old shards were exported again."""
    from synanno_datagen.pipeline.config import check

    (tmp_path / "t").mkdir()
    _pandas("res_absent.parquet")(tmp_path / "t" / "a.parquet")
    _pandas("res_4_4_40.parquet")(tmp_path / "t" / "b.parquet")
    argv = small_data.argv(tmp_path / "out", "--coordinate-resolution", "4", "4", "40")
    argv[argv.index("--materialization") + 1] = str(tmp_path / "t" / "*.parquet")
    config = check(argv)[0]
    assert config.coordinate_resolution_nm_xyz == (4.0, 4.0, 40.0)
    assert not config.coordinate_resolution_from_table


def test_units_the_table_cannot_state_leave_the_flag_to_say_them(small_data, tmp_path, caplog):
    from synanno_datagen.pipeline.config import check

    _pandas("res_two.parquet")(tmp_path / "t.parquet")
    argv = small_data.argv(tmp_path / "out", "--coordinate-resolution", "4", "4", "33")
    argv[argv.index("--materialization") + 1] = str(tmp_path / "t.parquet")
    config = check(argv)[0]
    assert config.coordinate_resolution_nm_xyz == (4.0, 4.0, 33.0)
    assert "--coordinate-resolution 4 4 33: " in caplog.text
    assert "dataframe_resolution (pandas attrs) is [4, 4], not three positive numbers; the " \
        "flag's units are used" in caplog.text
