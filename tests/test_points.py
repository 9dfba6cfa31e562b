"""Point columns and cell rules, without Beam: list cells, prefixes, units -> voxels."""
from fractions import Fraction

import pytest

from synanno_datagen.transforms.points import (
    BadValue, PointColumns, TableLayout, find_point, parse_point, to_target_factors, to_voxel,
)

CTR = PointColumns(("ctr_pt_position",))
CTR_XYZ = PointColumns(("ctr_pt_position_x", "ctr_pt_position_y", "ctr_pt_position_z"))


@pytest.mark.parametrize("text", ["[120, 220, 14]", "[120 220 14]", " [ 120 , 220 , 14 ] ",
                                  "[120.  220.  14.]", "[1.2e+02 2.2e+02\n 1.4e+01]",
                                  "[120.9, 220.5, 14.0]",
                                  # a list of numpy 2 scalars, as str() of it prints them
                                  "[np.int64(120), np.int64(220), np.int64(14)]",
                                  "[np.float64(120.9), np.float32(220.5), np.uint32(14)]",
                                  "[np.longdouble('120.5'), np.longdouble('220.0'), "
                                  "np.longdouble('14.0')]"])
def test_list_cells_in_csv_and_numpy_text(text):
    assert parse_point({"ctr_pt_position": text}, CTR) == (120, 220, 14)


@pytest.mark.parametrize("text, reason", [
    ("", "missing_coordinate"),
    ("nan", "missing_coordinate"),
    ("[120, null, 14]", "missing_coordinate"),     # a Parquet list with a null element
    ("[120, NaN, 14]", "missing_coordinate"),      # ... with a NaN element
    ("[120, , 14]", "missing_coordinate"),
    ("[120 nan 14]", "missing_coordinate"),
    ("[120, 220]", "missing_coordinate"),
    ("[]", "missing_coordinate"),
    ("[120, 220, 14, 1]", "not_a_number"),
    ("[120, abc, 14]", "not_a_number"),
    ("[120, inf, 14]", "not_a_number"),
    ("[120, 1." + "0" * 200 + ", 14]", "not_a_number"),   # no coordinate is that long
    ("120", "not_a_number"),
    ("{'x': 1}", "not_a_number"),
    ("[np.int64(120), np.int64(), np.int64(14)]", "missing_coordinate"),
    ("[np.int64(120), np.str_('a'), np.int64(14)]", "not_a_number"),
    ("[np.int64(120), np.float64(nan), np.int64(14)]", "missing_coordinate"),
])
def test_bad_list_cells_name_their_reason(text, reason):
    with pytest.raises(BadValue) as err:
        parse_point({"ctr_pt_position": text}, CTR)
    assert err.value.reason == reason
    assert "ctr_pt_position" in str(err.value)


@pytest.mark.parametrize("text", ["(120, 220, 14)", " ( 120 , 220 , 14 ) ", "(120.9, 220.5, 14.0)",
                                  # to_csv of a column of tuples of numpy 2 scalars
                                  "(np.int32(120), np.int32(220), np.int32(14))",
                                  "(np.float64(120.9), np.float32(220.5), np.uint32(14))"])
def test_tuple_cells_as_pandas_to_csv_writes_them_read_as_lists(text):
    """Found by review: pandas' to_csv of a column of tuples writes "(72680, 75560, 15485)",
    and every row was not_a_number (the same frame to Parquet was read)."""
    assert parse_point({"ctr_pt_position": text}, CTR) == (120, 220, 14)
    um = to_target_factors((1000, 1000, 1000), (8, 8, 40))   # exact, as in brackets
    assert parse_point({"p": "(8.008, 0.016, 0.033)"}, PointColumns(("p",)), um) == (1001, 2, 0)


@pytest.mark.parametrize("text, reason", [
    ("(120, 220, 14]", "not_a_number"), ("[120, 220, 14)", "not_a_number"),
    ("(120, 220, 14", "not_a_number"), ("((120, 220, 14))", "not_a_number"),
    ("(120, abc, 14)", "not_a_number"), ("(120, 220, 14, 1)", "not_a_number"),
    ("(120, inf, 14)", "not_a_number"), ("(120, 220)", "missing_coordinate"),
    ("()", "missing_coordinate"), ("(120, None, 14)", "missing_coordinate"),
    ("(np.int32(120), np.int32(), np.int32(14))", "missing_coordinate"),
])
def test_bad_tuple_cells_are_refused_as_bad_lists_are(text, reason):
    with pytest.raises(BadValue) as err:
        parse_point({"ctr_pt_position": text}, CTR)
    assert err.value.reason == reason


def test_prefix_columns_and_the_cell_rules_of_today():
    row = {"ctr_pt_position_x": "46.0", "ctr_pt_position_y": "46.7", "ctr_pt_position_z": " 3 "}
    assert parse_point(row, CTR_XYZ) == (46, 46, 3)
    with pytest.raises(BadValue) as err:
        parse_point({**row, "ctr_pt_position_y": "nan"}, CTR_XYZ)
    assert err.value.reason == "missing_coordinate"
    assert "ctr_pt_position_y" in str(err.value)


def test_a_column_named_exactly_wins_over_the_prefix():
    both = ["id", "ctr_pt_position", "ctr_pt_position_x", "ctr_pt_position_y",
            "ctr_pt_position_z"]
    assert find_point("ctr_pt_position", both) == CTR
    assert find_point("ctr_pt_position", both[:1] + both[2:]) == CTR_XYZ
    assert find_point("pre_pt", ["id", "x", "y", "z"]) is None
    with pytest.raises(ValueError, match="has ctr_pt_position_x, ctr_pt_position_y but not "
                                         "ctr_pt_position_z"):
        find_point("ctr_pt_position", both[2:4])


def test_the_default_layout_is_todays_columns():
    layout = TableLayout()
    assert layout.center.columns == ("x", "y", "z")
    assert layout.pre.columns == ("pre_pt_x", "pre_pt_y", "pre_pt_z")
    assert layout.post.columns == ("post_pt_x", "post_pt_y", "post_pt_z")
    assert layout.point_features() == ("center_xyz", "pre_pt_xyz", "post_pt_xyz")
    assert TableLayout(pre=None, post=None).point_features() == ("center_xyz",)


def test_units_become_target_voxels_with_floor():
    half = to_target_factors((4, 4, 33), (8.0, 8.0, 33.0))   # source voxels of H01
    assert half == (Fraction(1, 2), Fraction(1, 2), Fraction(1))
    assert parse_point({"p": "[241, 441, 14]"}, PointColumns(("p",)), half) == (120, 220, 14)
    assert parse_point({"p": "[240, 440.0, 14.9]"}, PointColumns(("p",)), half) == (120, 220, 14)
    nm = to_target_factors((1, 1, 1), (8, 8, 33))
    assert parse_point({"p": "[967.9, 1760, 494]"}, PointColumns(("p",)), nm) == (120, 220, 14)
    assert to_voxel(-1, Fraction(1, 2)) == -1 and to_voxel(-0.5, Fraction(1)) == -1
    assert to_target_factors((4.5, 0.1, 40), (9, 0.3, 40)) == (
        Fraction(1, 2), Fraction(1, 3), Fraction(1))
    # 3 units of 0.1 nm on a 0.3 nm grid is exactly voxel 1 (no 0.999... from binary floats)
    assert to_voxel(3, Fraction(1, 3)) == 1 and to_voxel(3.0, Fraction(1, 3)) == 1
    # Decimals as written: 8.008 um on an 8 nm grid is voxel 1001 exactly (binary floats
    # floor 8.008 * 1000 / 8 to 1000)
    um = to_target_factors((1000, 1000, 1000), (8, 8, 33))
    assert parse_point({"p": "[8.008, 0.016, 0.033]"}, PointColumns(("p",)), um) == (1001, 2, 1)
    # an absurd exponent is no work, and still floors exactly: a negative value too small for
    # a float is voxel -1, not the float's -0.0
    assert parse_point({"p": "[1e-100000000, 0e999999999, 2.5e1]"}, PointColumns(("p",))) == (
        0, 0, 25)
    assert parse_point({"p": "[-1e-400, -1e-100000000, -0e-400]"}, PointColumns(("p",)),
                       um) == (0, 0, 0)   # within a millionth of a voxel below 0: voxel 0
    # beyond Decimal's exponents as well (10**18: found by review)
    huge = "[1e-1000000000000000000, -2e-99999999999999999999, 0e9999999999999999999]"
    assert parse_point({"p": huge}, PointColumns(("p",)), um) == (0, 0, 0)
    assert parse_point({"p": "[-1e-9, -0.0001, 0]"}, PointColumns(("p",)), um) == (0, -1, 0)


def test_binary_float_noise_just_below_a_voxel_boundary_is_that_voxel():
    # CAVE's desired_resolution: a table of 33 nm z asked for in 40 nm holds z * 0.825 in
    # binary floats, so 63 becomes 51.974999999999994 (a third of all z do so): read back with
    # --coordinate-resolution 4 4 40 it is 62.99999999999999..., voxel 63, not 62.
    to_33 = to_target_factors((4, 4, 40), (8, 8, 33))
    point = PointColumns(("p",))
    assert parse_point({"p": f"[2, 2, {63 * 0.825!r}]"}, point, to_33) == (1, 1, 63)
    assert all(parse_point({"p": f"[0, 0, {z * 0.825!r}]"}, point, to_33)[2] == z
               for z in range(6000))
    to_40 = to_target_factors((4, 4, 33), (8, 8, 40))   # and back (40 nm z in 33 nm units)
    assert all(parse_point({"p": f"[0, 0, {z * (40 / 33)!r}]"}, point, to_40)[2] == z
               for z in range(6000))
    # split columns (pandas writes a float column's repr) and Parquet doubles alike
    xyz = PointColumns(("a", "b", "c"))
    assert parse_point({"a": "0", "b": "0", "c": repr(63 * 0.825)}, xyz, to_33) == (0, 0, 63)
    # Only noise: a hundred-thousandth of a voxel short is still the voxel below.
    assert parse_point({"p": "[0, 0, 62.99999]"}, point) == (0, 0, 62)
    assert to_voxel(10**5 - 1, Fraction(1, 10**5)) == 0   # integers by the same rule
    assert to_voxel(10**7 - 1, Fraction(1, 10**7)) == 1


def test_integers_stay_exact():
    big = 2**53 - 1
    assert to_voxel(big, Fraction(1)) == big
    assert parse_point({"p": f"[{big}, 1, 2]"}, PointColumns(("p",))) == (big, 1, 2)
    with pytest.raises(BadValue) as err:
        parse_point({"p": f"[{2**53 + 1}, 1, 2]"}, PointColumns(("p",)))
    assert err.value.reason == "outside_volume"   # beyond any volume, not read inexactly
