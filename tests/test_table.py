import pytest

from synanno_datagen.transforms.geometry import Box
from synanno_datagen.transforms.records import RowRef
from synanno_datagen.transforms.points import PointColumns, parse_point
from synanno_datagen.transforms.table import BadValue, parse_id, parse_row

BOUNDS = Box((100, 200, 10), (164, 264, 22))


def _row(**overrides):
    row = {"id": "17", "x": "120", "y": "230", "z": "15", "pre_pt_x": "118", "pre_pt_y": "230",
           "pre_pt_z": "15", "post_pt_x": "122", "post_pt_y": "230.0", "post_pt_z": "15",
           "extra": "ignored"}
    row.update(overrides)
    return row


def test_good_row_with_float_text_and_extra_columns():
    inst = parse_row(_row(x="120.0"), RowRef(0, 3), "id", None, BOUNDS)
    assert inst.instance_id == 17
    assert inst.center_xyz == (120, 230, 15)
    assert inst.post_pt_xyz == (122, 230, 15)
    assert dict(inst.row)["extra"] == "ignored" and inst.ref == RowRef(0, 3)


def test_row_number_is_the_id_without_an_id_column():
    assert parse_row(_row(), RowRef(1, 0), None, 42, BOUNDS).instance_id == 42


@pytest.mark.parametrize("overrides, reason", [
    ({"z": ""}, "missing_coordinate"),
    ({"pre_pt_y": "nan"}, "missing_coordinate"),
    ({"x": "n/a"}, "not_a_number"),
    ({"y": "inf"}, "not_a_number"),
    ({"x": "99"}, "outside_volume"),        # just below the offset
    ({"z": "22"}, "outside_volume"),        # the far edge is exclusive
    ({"id": "abc"}, "invalid_id"),
    ({"id": "1.5"}, "invalid_id"),
    ({"id": str(1 << 63)}, "invalid_id"),
    ({"id": "1_000"}, "invalid_id"),
    ({"id": "12.0000000000000000001"}, "invalid_id"),  # no integer, however close
    ({"id": "\u0661\u0662"}, "invalid_id"),  # digits of another script
    ({"x": "1_20"}, "not_a_number"),
    ({"y": "2_30.0"}, "not_a_number"),
    ({"z": "\uff11\uff15"}, "not_a_number"),
])
def test_bad_rows_name_their_reason(overrides, reason):
    with pytest.raises(BadValue) as err:
        parse_row(_row(**overrides), RowRef(0, 0), "id", None, BOUNDS)
    assert err.value.reason == reason


def test_number_parsing():
    xyz = PointColumns(("x", "y", "z"))
    assert parse_point({"x": " 46.0 ", "y": "46.7", "z": "-0.5"}, xyz) == (46, 46, -1)
    assert parse_id("12.0") == 12 and parse_id("-3") == -3
    assert parse_id("9007199254740991.0") == 2**53 - 1 and parse_id(str(2**62)) == 2**62


def test_a_layout_without_pre_and_post_gives_instances_without_them():
    from synanno_datagen.transforms.points import PointColumns, TableLayout, to_target_factors

    layout = TableLayout(center=PointColumns(("ctr_pt_position",)), pre=None, post=None,
                         to_target_xyz=to_target_factors((4, 4, 33), (8, 8, 33)))
    row = {"id": "17", "ctr_pt_position": "[241 461 15]"}
    inst = parse_row(row, RowRef(0, 0), "id", None, BOUNDS, layout)
    assert inst.center_xyz == (120, 230, 15)
    assert inst.pre_pt_xyz is None and inst.post_pt_xyz is None
    assert dict(inst.row) == row
    with pytest.raises(BadValue) as err:
        parse_row({"id": "17", "ctr_pt_position": "[199 461 15]"}, RowRef(0, 0), "id", None,
                  BOUNDS, layout)
    assert err.value.reason == "outside_volume" and "[99, 230, 15]" in str(err.value)


def test_a_centre_outside_the_source_volume_is_outside_the_volume():
    """The raw EM may cover less than the labels: a centre whose raw would be all padding is
    dead-lettered as outside_volume, naming the source volume, not written as a record."""
    source_in_target = Box((100, 200, 10), (130, 264, 22))
    inside = parse_row(_row(x="129"), RowRef(0, 0), "id", None, BOUNDS,
                       source_bounds=source_in_target)
    assert inside.center_xyz == (129, 230, 15)
    with pytest.raises(BadValue) as err:
        parse_row(_row(x="130"), RowRef(0, 0), "id", None, BOUNDS,
                  source_bounds=source_in_target)
    assert err.value.reason == "outside_volume"
    assert str(err.value) == ("center [130, 230, 15] is outside the source volume (in target "
                              "voxels [[100, 200, 10], [130, 264, 22]])")


def test_a_pre_or_post_point_beyond_int64_is_outside_the_volume():
    """Records hold the points as int64: a point past that range (a unit mistake in one
    column) failed the instance as unexpected_error, which is retried every night."""
    from fractions import Fraction

    from synanno_datagen.transforms.points import TableLayout

    nm = TableLayout(to_target_xyz=(Fraction(2000), Fraction(1), Fraction(1)))  # x in 16 um
    with pytest.raises(BadValue) as err:
        parse_row(_row(x="0.06", pre_pt_x=str(2 ** 53)), RowRef(0, 0), "id", None, BOUNDS, nm)
    assert err.value.reason == "outside_volume"
    assert str(err.value) == (f"pre point [{2 ** 53 * 2000}, 230, 15] is beyond any volume "
                              "(outside int64)")
    assert parse_row(_row(post_pt_x="-500"), RowRef(0, 0), "id", None, BOUNDS).post_pt_xyz == \
        (-500, 230, 15)
    with pytest.raises(BadValue) as err:   # the post point alike (found by mutation review)
        parse_row(_row(x="0.06", post_pt_x=str(2 ** 53)), RowRef(0, 0), "id", None, BOUNDS, nm)
    assert (err.value.reason, str(err.value)) == (
        "outside_volume", f"post point [{2 ** 53 * 2000}, 230, 15] is beyond any volume "
                          "(outside int64)")


def test_a_repeated_id_keeps_its_earliest_row_over_the_table_shards():
    """The first row of an id, in table order (shard, then row), is the instance; the letter of
    a repeat names that first row (found by mutation review: rows ordered before shards, and the
    repeat naming itself, passed every test: the tests' repeats were in one shard)."""
    from synanno_datagen.transforms.table import keep_first

    first = parse_row(_row(), RowRef(0, 5), "id", None, BOUNDS)
    repeat = parse_row(_row(x="121"), RowRef(1, 0), "id", None, BOUNDS)
    kept, letter = keep_first((first.instance_id, [repeat, first]))
    assert kept is first
    assert letter.value.reason == "duplicate_id"
    assert letter.value.details == f"id {first.instance_id} first seen in table shard 0 row 5"


def test_ids_are_read_exactly_as_written():
    """Found by review: ids went through binary floats, so 12.0000000000000000001 became id 12
    (colliding with a real 12) while the integer 9007199254740993.0 was refused."""
    assert parse_id("9007199254740993.0") == 2**53 + 1
    assert parse_id("9.223372036854775807e18") == 2**63 - 1
    assert parse_id("9007199254740995e0") == 9007199254740995
    assert parse_id("1e12") == 10**12 and parse_id(" +7.000 ") == 7
    # int64's two ends are ids (found by mutation review: -2**63 refused passed every test)
    assert parse_id(str(-2**63)) == -2**63 and parse_id(str(2**63 - 1)) == 2**63 - 1
    for text, why in [("12.0000000000000000001", "is not an integer"),
                      ("12.5", "is not an integer"), ("1e-3", "is not an integer"),
                      ("nan", "is not an integer"), ("inf", "is not an integer"),
                      ("9.3e18", "outside the int64 range"),
                      (str(-2**63 - 1), "outside the int64 range"),
                      (str(2**63), "outside the int64 range"),
                      ("1e999999999", "outside the int64 range"), ("", "is not an integer"),
                      # (found by review: exponents beyond Decimal's were 'not an integer')
                      ("1e1000000000000000000", "outside the int64 range"),
                      ("-2.5E+99999999999999999999", "outside the int64 range"),
                      ("1e-1000000000000000000", "is not an integer"),
                      ("1" * 80, "outside the int64 range"), ("0x10", "is not an integer")]:
        with pytest.raises(BadValue) as err:
            parse_id(text)
        assert err.value.reason == "invalid_id" and why in str(err.value), (text, err.value)


@pytest.mark.parametrize("text", ["1e300", "99999999999999999999999999", "-9007199254740993",
                                  "1e400", "-1.5e99999", "1e1000000000000000000",
                                  "-.5E+99999999999999999999"])
def test_a_huge_finite_coordinate_is_outside_the_volume_not_a_non_number(text):
    """Found by review: finite numbers beyond 2**53 were 'not a finite coordinate'
    (not_a_number), which README keeps for text and infinities; they are outside any volume."""
    with pytest.raises(BadValue) as err:
        parse_row(_row(x=text), RowRef(0, 0), "id", None, BOUNDS)
    assert err.value.reason == "outside_volume"
    assert f"column 'x' is beyond any volume: {text!r}" in str(err.value)
