import numpy as np
import pytest

from synanno_datagen.transforms.geometry import (
    Box, crop_box, nearest_mip, padding, scale_box, scale_factors, upsample_nearest_zyx,
    xyzc_to_zyx,
)


def test_crop_box_is_exactly_the_crop_size_for_even_and_odd_sizes():
    box = crop_box((100, 50, 7), (128, 5, 16))
    assert box.start_xyz == (36, 48, -1)
    assert box.stop_xyz == (164, 53, 15)
    assert box.size_xyz == (128, 5, 16)


def test_scale_factors_h01_and_rejections():
    assert scale_factors((8, 8, 33), (4, 4, 33)) == (2, 2, 1)
    assert scale_factors((8, 8, 33), (8, 8, 33)) == (1, 1, 1)
    with pytest.raises(ValueError, match="on x .* not a positive integer"):
        scale_factors((8, 8, 33), (3, 4, 33))
    with pytest.raises(ValueError, match="on x"):
        scale_factors((8, 8, 33), (16, 16, 33))  # a coarser source mip


def test_scale_box_maps_target_voxels_to_source_voxels():
    box = scale_box(Box((10, -3, 5), (20, 7, 9)), (2, 2, 1))
    assert box == Box((20, -6, 5), (40, 14, 9))


@pytest.mark.parametrize("box, expected", [
    (Box((10, 10, 10), (20, 20, 20)), ((0, 0), (0, 0), (0, 0))),         # inside
    (Box((-5, 10, 10), (5, 20, 20)), ((5, 0), (0, 0), (0, 0))),          # low x border
    (Box((95, 10, 10), (105, 20, 20)), ((0, 5), (0, 0), (0, 0))),        # high x border
    (Box((10, -2, 10), (20, 8, 20)), ((0, 0), (2, 0), (0, 0))),          # low y
    (Box((10, 98, 10), (20, 108, 20)), ((0, 0), (0, 8), (0, 0))),        # high y
    (Box((10, 10, -3), (20, 20, 5)), ((0, 0), (0, 0), (3, 0))),          # low z
    (Box((10, 10, 38), (20, 20, 46)), ((0, 0), (0, 0), (0, 6))),         # high z
    (Box((-5, -5, -5), (105, 105, 45)), ((5, 5), (5, 5), (5, 5))),       # bigger than volume
    (Box((200, 10, 10), (210, 20, 20)), ((0, 10), (0, 0), (0, 0))),      # entirely outside
])
def test_padding_on_every_border(box, expected):
    bounds = Box((0, 0, 0), (100, 100, 40))
    assert padding(box, bounds) == expected


def test_padding_respects_a_non_zero_voxel_offset():
    bounds = Box((1000, 2000, 100), (1384, 2384, 148))
    assert padding(crop_box((1005, 2380, 101), (16, 16, 4)), bounds) == ((3, 0), (0, 4), (1, 0))


def test_intersect_and_contains():
    a = Box((0, 0, 0), (10, 10, 10))
    assert a.intersect(Box((5, 5, 5), (15, 15, 15))) == Box((5, 5, 5), (10, 10, 10))
    assert a.intersect(Box((10, 0, 0), (12, 5, 5))) is None
    assert a.contains((9, 0, 0)) and not a.contains((10, 0, 0))


def test_xyzc_to_zyx_and_upsampling():
    xyzc = np.arange(2 * 3 * 4).reshape(2, 3, 4, 1)
    zyx = xyzc_to_zyx(xyzc)
    assert zyx.shape == (4, 3, 2) and zyx.flags.c_contiguous
    assert zyx[3, 2, 1] == xyzc[1, 2, 3, 0]
    up = upsample_nearest_zyx(zyx, (2, 3, 1))
    assert up.shape == (4, 9, 4)
    assert up[3, 8, 3] == zyx[3, 2, 1] and up[0, 0, 1] == zyx[0, 0, 0]


def test_nearest_mip_is_the_coarsest_that_divides_the_target():
    h01_raw = [(4, 4, 33), (8, 8, 33), (16, 16, 33), (32, 32, 33)]
    assert nearest_mip((8, 8, 33), h01_raw) == 1
    assert nearest_mip((16, 16, 33), h01_raw) == 2
    assert nearest_mip((8, 8, 40), [(4, 4, 40), (6, 6, 40)]) == 0   # 8/6 is not whole
    with pytest.raises(ValueError, match="no mip of the source"):
        nearest_mip((8, 8, 33), [(16, 16, 33), (3, 3, 33)])


def test_target_voxels_inside_a_source_box_cover_only_source_voxels():
    from synanno_datagen.transforms.geometry import target_voxels_inside

    # source voxels [3, 17) x [0, 8) x [1, 5) at 2x2x1 per target voxel: target voxels 2..7 in
    # x (source 4..15), 0..3 in y, 1..4 in z
    assert target_voxels_inside(Box((3, 0, 1), (17, 8, 5)), (2, 2, 1)) == \
        Box((2, 0, 1), (8, 4, 5))
    assert target_voxels_inside(Box((3, 0, 0), (4, 8, 5)), (2, 2, 1)) is None   # none whole


def test_scale_factors_refuse_a_ratio_a_hundredth_from_whole():
    # 8 / 7.96 = 1.005: taken as 1, the raw would drift off the labels by a voxel every 200;
    # only float noise (1e-6) is forgiven
    with pytest.raises(ValueError, match="on x"):
        scale_factors((8, 8, 33), (7.96, 8, 33))
    with pytest.raises(ValueError, match="on z"):
        scale_factors((8, 8, 33), (4, 4, 32.9))


def test_nearest_mip_breaks_a_tie_by_the_lower_mip():
    # mips 1 and 2 divide 8x8x40 by the same number of source voxels (2): the first is taken
    assert nearest_mip((8, 8, 40), [(4, 4, 40), (8, 4, 40), (4, 8, 40)]) == 1
