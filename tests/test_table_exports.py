"""Tables as labs export them, end to end: each gives exactly the dataset of a plain CSV holding
the same rows in target voxels (TFRecord, index and npy bytes; dead letters but for the text of
the original row)."""
from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tfrecord.reader import tfrecord_iterator

from tests.conftest import SYNAPSES
from tests.test_pipeline import run_pipeline
from synanno_datagen.record_format import example_pb2

NULL = None                      # the whole centre is missing
GOOD = [(sid, center) for sid, _, _, _, center in SYNAPSES]
# (id, centre xyz in target voxels, None for a missing element), reason or None
ROWS = [(sid, center, None) for sid, center in GOOD] + [
    (20, NULL, "missing_coordinate"),
    (21, (120, math.nan, 14), "missing_coordinate"),
    (24, (120, None, 14), "missing_coordinate"),
    (22, (500, 220, 14), "outside_volume"),
    (23, (106, 234, 12), "empty_target"),
    (11, (120, 220, 14), "duplicate_id"),
]
TARGET_NM = (8, 8, 33)
RUN = ("--variants", "2")


def _text(value) -> str:
    if value is None:
        return ""
    return "nan" if isinstance(value, float) and math.isnan(value) else str(value)


def _write_csv(path: Path, header, rows, opener=open):
    with opener(path, "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _plain_csv(path: Path, rows, with_id=True, points=False):
    """The reference: centre (and pre/post) columns in target voxels."""
    header = (["id"] if with_id else []) + ["x", "y", "z"]
    header += ["pre_pt_x", "pre_pt_y", "pre_pt_z", "post_pt_x", "post_pt_y", "post_pt_z"] \
        if points else []
    lines = []
    for sid, center, _ in rows:
        xyz = [_text(v) for v in (center or (None,) * 3)]
        line = ([str(sid)] if with_id else []) + xyz
        if points:
            line += [_text(v) for v in _pre_post(center)]
        lines.append(line + ["0.9"])
    _write_csv(path, header + ["score"], lines)


def _pre_post(center):
    if center is None:
        return (None,) * 6
    x, y, z = center
    return (x - 1, y, z, x + 1, y, z)


def _files(out: Path) -> dict:
    """Every file's bytes but the manifest and the dead letters (they hold the row as read)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name not in ("manifest.json", "dead_letter.jsonl")}


def _dead_letters(out: Path):
    return [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]


def _without_row(letters):
    return [{k: v for k, v in d.items() if k not in ("row", "details")} for d in letters]


def _index(out: Path):
    return [json.loads(line) for p in sorted((out / "index").glob("*.jsonl"))
            for line in p.read_text().splitlines()]


def _feature_keys(out: Path):
    keys = set()
    for shard in (out / "tfrecord").glob("*.tfrecord"):
        for record in tfrecord_iterator(str(shard)):
            keys |= set(example_pb2().Example.FromString(bytes(record)).features.feature)
    return keys


def _run(data, out: Path, table: Path, *flags):
    argv = data.argv(out, *RUN, *flags)
    argv[argv.index("--materialization") + 1] = str(table)
    return run_pipeline(argv)[1]


def _assert_same_dataset(out: Path, reference: Path, manifest: dict, reference_manifest: dict):
    assert _files(out) == _files(reference)
    assert _without_row(_dead_letters(out)) == _without_row(_dead_letters(reference))
    assert manifest["counts"] == reference_manifest["counts"]
    assert manifest["features"] == reference_manifest["features"]
    assert manifest["files"]["tfrecord"] == reference_manifest["files"]["tfrecord"]


def test_cave_parquet_in_nm_without_pre_and_post(small_data, tmp_path):
    def nm(center):     # CAVE positions in nm, a little inside the voxel so flooring matters
        if center is None:
            return None
        return [None if v is None else v * r + (r - 0.5 if not isinstance(v, float) else 0.0)
                for v, r in zip(center, TARGET_NM)]

    table = tmp_path / "synapses.parquet"
    pq.write_table(pa.table({
        "id": pa.array([sid for sid, _, _ in ROWS], pa.int64()),
        "ctr_pt_position": pa.array([nm(c) for _, c, _ in ROWS], pa.list_(pa.float64())),
        "valid": [True] * len(ROWS),
    }), table, row_group_size=4)
    reference = tmp_path / "plain.csv"
    _plain_csv(reference, ROWS)
    manifest = _run(small_data, tmp_path / "out", table, "--center-column", "ctr_pt_position",
                    "--coordinate-resolution", "1", "1", "1")
    expected = _run(small_data, tmp_path / "ref", reference)
    _assert_same_dataset(tmp_path / "out", tmp_path / "ref", manifest, expected)

    letters = _dead_letters(tmp_path / "out")
    assert sorted((d["instance_id"], d["reason"]) for d in letters) == sorted(
        (sid, reason) for sid, _, reason in ROWS if reason)
    by_id = {d["instance_id"]: d["row"] for d in letters}
    assert by_id[20] == {"id": "20", "ctr_pt_position": "", "valid": "true"}
    assert by_id[21]["ctr_pt_position"] == "[967.5, NaN, 494.5]"
    assert by_id[24]["ctr_pt_position"] == "[967.5, null, 494.5]"
    # No pre/post points anywhere: not in the records, the index or the manifest's features.
    names = {f["name"] for f in manifest["features"]}
    assert "center_xyz" in names and not names & {"pre_pt_xyz", "post_pt_xyz"}
    assert manifest["table"]["point_features"] == ["center_xyz"]
    assert manifest["table"]["points"]["pre_pt_xyz"] is None
    assert manifest["table"]["format"] == "parquet"
    assert manifest["config"]["coordinate_resolution_nm_xyz"] == [1, 1, 1]
    assert not {"pre_pt_xyz", "post_pt_xyz"} & set().union(*map(set, _index(tmp_path / "out")))
    keys = _feature_keys(tmp_path / "out")
    assert "center_xyz" in keys and not keys & {"pre_pt_xyz", "post_pt_xyz"}


def test_gzip_csv_in_source_voxels_with_prefixed_columns(small_data, tmp_path):
    """The reference is the fixture's own table; here every x, y is 2 * c + 1 source voxels."""
    with open(small_data.table_path, newline="") as f:
        rows = list(csv.DictReader(f))
    renamed = {"x": "ctr_pt_position_x", "y": "ctr_pt_position_y", "z": "ctr_pt_position_z"}
    renamed.update({f"{p}_pt_{a}": f"{p}_pt_position_{a}" for p in ("pre", "post")
                    for a in "xyz"})

    def to_source(column, text):
        if column not in renamed or column.endswith("z"):
            return text
        try:
            return str(2 * int(float(text)) + 1)
        except ValueError:
            return text        # '' and 'n/a' stay as they are

    header = [renamed.get(c, c) for c in rows[0]]
    table = tmp_path / "export_000.csv.gz"
    _write_csv(table, header, [[to_source(c, v) for c, v in row.items()] for row in rows],
               opener=gzip.open)
    manifest = _run(small_data, tmp_path / "out", table,
                    "--center-column", "ctr_pt_position", "--pre-column", "pre_pt_position",
                    "--post-column", "post_pt_position", "--coordinate-resolution", "4", "4", "33")
    expected = _run(small_data, tmp_path / "ref", Path(small_data.table_path))
    _assert_same_dataset(tmp_path / "out", tmp_path / "ref", manifest, expected)
    assert manifest["table"]["format"] == "csv.gz"
    assert manifest["table"]["points"]["to_target_voxels_xyz"] == ["1/2", "1/2", "1"]
    assert manifest["table"]["point_features"] == ["center_xyz", "pre_pt_xyz", "post_pt_xyz"]
    # the units the table was read in: given, or the target's (found by mutation review: the
    # latter passed as [1, 1, 1])
    assert manifest["table"]["coordinate_resolution_nm_xyz"] == [4, 4, 33]
    assert expected["table"]["coordinate_resolution_nm_xyz"] == \
        expected["volumes"]["target"]["resolution_nm_xyz"] == [8, 8, 33]
    assert _index(tmp_path / "out")[0]["pre_pt_xyz"] == [119, 220, 14]
    reasons = {d["instance_id"]: d["reason"] for d in _dead_letters(tmp_path / "out")}
    assert reasons[20] == "missing_coordinate" and reasons[22] == "outside_volume"
    letter = next(d for d in _dead_letters(tmp_path / "out") if d["instance_id"] == 22)
    assert letter["row"]["ctr_pt_position_x"] == "1001"    # the row as the table holds it


def _int_lists(centers, point):
    """An int64 list column of ``point(center)`` (null where the centre is missing)."""
    return pa.array([None if c is None else list(point(c)) for c in centers],
                    pa.list_(pa.int64()))


def test_parquet_shards_stream_by_row_group_and_number_rows_across_shards(small_data, tmp_path):
    """No id column: ids are row numbers over the shards in sorted order, as for CSV; one row per
    row group and two, against one plain CSV run."""
    (good_0, good_1, good_2, good_3, good_4), null, outside, empty = (
        [r for r in ROWS if r[2] is None], ROWS[5], ROWS[8], ROWS[9])
    rows = [good_0, good_1, null, good_2, outside, good_3, good_4, empty]
    reference = tmp_path / "plain.csv"
    _plain_csv(reference, rows, with_id=False, points=True)
    expected = _run(small_data, tmp_path / "ref", reference)
    for row_group_size in (1, 2):
        _check_parquet_shards(small_data, tmp_path / f"groups-{row_group_size}", rows,
                              row_group_size, tmp_path / "ref", expected)


def _check_parquet_shards(small_data, tmp_path, rows, row_group_size, reference_out, expected):
    shards = {"part-1.parquet": rows[:3], "part-2.parquet": rows[3:]}
    (tmp_path / "t").mkdir(parents=True)
    for name, part in shards.items():
        centers = [c for _, c, _ in part]
        pq.write_table(pa.table({
            "ctr_pt_position": _int_lists(centers, lambda c: c),
            "pre_pt_position": _int_lists(centers, lambda c: _pre_post(c)[:3]),
            "post_pt_position": _int_lists(centers, lambda c: _pre_post(c)[3:]),
        }), tmp_path / "t" / name, row_group_size=row_group_size)
        groups = pq.ParquetFile(tmp_path / "t" / name).num_row_groups
        assert groups == -(-len(part) // row_group_size) > 1
    manifest = _run(small_data, tmp_path / "out", tmp_path / "t" / "part-*.parquet",
                    "--center-column", "ctr_pt_position", "--pre-column", "pre_pt_position",
                    "--post-column", "post_pt_position")
    assert [Path(p).name for p in manifest["config"]["table_shards"]] == list(shards)
    assert manifest["config"]["id_column"] is None

    # Same ids (row numbers), so the same records; only the table positions differ.
    def place(number):
        return (0, number) if number < 3 else (1, number - 3)

    def not_index(files):
        return {k: v for k, v in files.items() if not k.startswith("index/")}

    assert not_index(_files(tmp_path / "out")) == not_index(_files(reference_out))
    entries, ref_entries = _index(tmp_path / "out"), _index(reference_out)
    assert [e["instance_id"] for e in entries] == [e["instance_id"] for e in ref_entries]
    assert sorted(e["instance_id"] for e in entries) == [0, 1, 3, 5, 6]
    for entry, ref in zip(entries, ref_entries):
        assert (entry["table_shard"], entry["table_row"]) == place(entry["instance_id"])
        assert {k: v for k, v in entry.items() if not k.startswith("table_")} == \
            {k: v for k, v in ref.items() if not k.startswith("table_")}
    letters = _dead_letters(tmp_path / "out")
    assert [(d["instance_id"], d["reason"], (d["table_shard"], d["table_row"]))
            for d in letters] == [(2, "missing_coordinate", (0, 2)),
                                  (4, "outside_volume", (1, 1)), (7, "empty_target", (1, 4))]
    assert letters[0]["row"] == {"ctr_pt_position": "", "pre_pt_position": "",
                                 "post_pt_position": ""}
    assert manifest["counts"] == expected["counts"]


def test_a_pandas_table_is_read_in_the_units_its_attrs_declare(small_data, tmp_path):
    """CAVEclient sets ``df.attrs["dataframe_resolution"]`` and pandas (>= 2.1) stores attrs in
    the Parquet metadata (PANDAS_ATTRS); without --coordinate-resolution the table was read in
    target voxels, every x and y twice what it is. Read so, it makes the dataset of the same
    rows in target voxels, and a manifest as if the flag had been given."""
    from synanno_datagen.summary import summary
    from tests.data.make_pandas_tables import CAVE_TABLE, HERE, cave_positions

    table = HERE / CAVE_TABLE   # ROWS in the source's voxels (half a target voxel), by pandas
    metadata = pq.ParquetFile(table).schema_arrow.metadata
    written_by = json.loads(metadata[b"pandas"])["pandas_version"]
    assert tuple(int(v) for v in written_by.split(".")[:2]) >= (2, 1)
    assert json.loads(metadata[b"PANDAS_ATTRS"])["dataframe_resolution"] == [4, 4, 33]
    assert pq.read_table(table).column("ctr_pt_position").to_pylist() == [
        None if c is None else [None if v != v else v for v in c]   # (NaN: written as null)
        for c in cave_positions(ROWS, TARGET_NM, (4, 4, 33))]
    reference = tmp_path / "plain.csv"
    _plain_csv(reference, ROWS)
    manifest = _run(small_data, tmp_path / "out", table, "--center-column", "ctr_pt_position")
    expected = _run(small_data, tmp_path / "ref", reference)
    _assert_same_dataset(tmp_path / "out", tmp_path / "ref", manifest, expected)
    assert manifest["config"]["coordinate_resolution_nm_xyz"] == [4.0, 4.0, 33.0]
    assert manifest["table"]["coordinate_resolution_nm_xyz"] == [4.0, 4.0, 33.0]
    assert manifest["table"]["points"]["to_target_voxels_xyz"] == ["1/2", "1/2", "1"]
    assert manifest["table"]["coordinate_resolution_from"] == \
        "table: pandas attrs dataframe_resolution"
    assert "coordinate_resolution_from" not in expected["table"]
    lines = summary(manifest, str(tmp_path / "out")).splitlines()
    assert "coordinates: 4 4 33 nm per table unit, as the table's pandas attrs declare " \
        "(dataframe_resolution)" in lines
    assert not any(line.startswith("coordinates:") for line in
                   summary(expected, str(tmp_path / "ref")).splitlines())

    # The flag with the same units: the same config, records and generation (a root made with
    # the flag goes on from a night that reads the units from the table)
    given = _run(small_data, tmp_path / "given", table, "--center-column", "ctr_pt_position",
                 "--coordinate-resolution", "4", "4", "33")
    assert {k: v for k, v in given["config"].items() if k != "output_dir"} == \
        {k: v for k, v in manifest["config"].items() if k != "output_dir"}
    assert _files(tmp_path / "given") == _files(tmp_path / "out")
    assert "coordinate_resolution_from" not in given["table"]
