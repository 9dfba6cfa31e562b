import numpy as np
import pytest

from synanno_datagen.transforms.clean import keep_center_component


def test_center_component_kept_as_uint8_ones():
    labels = np.zeros((5, 9, 9), np.uint64)
    labels[1:4, 3:6, 3:6] = 7           # centred synapse with label 7
    labels[0, 0:2, 0:2] = 7             # same label, not touching: another component
    mask = keep_center_component(labels, (33, 4, 4))
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 27 and mask[0, 0, 0] == 0


def test_touching_synapses_with_different_labels_stay_apart():
    labels = np.zeros((3, 10, 10), np.uint32)
    labels[:, :, :5] = 1
    labels[:, :, 5:] = 2                 # touches label 1 along x = 4|5
    mask = keep_center_component(labels, (33, 8, 8))
    assert mask[1, 5, 5] == 1            # centre voxel (1, 5, 5) has label 2
    assert mask[:, :, 5:].all() and not mask[:, :, :5].any()


def test_off_center_picks_nearest_component():
    labels = np.zeros((5, 21, 21), np.uint8)
    labels[2, 10, 14] = 1               # 4 voxels away in x
    labels[2, 10, 0] = 1                # 10 voxels away
    mask = keep_center_component(labels, (1, 1, 1))
    assert mask[2, 10, 14] == 1 and mask[2, 10, 0] == 0 and mask.sum() == 1


def test_nearest_is_measured_in_nanometres_not_voxels():
    labels = np.zeros((9, 21, 21), np.uint8)
    labels[6, 10, 10] = 1                # 2 slices away in z: 66 nm at 33 nm per slice
    labels[4, 10, 15] = 2                # 5 voxels away in x: 20 nm at 4 nm
    mask = keep_center_component(labels, (33, 4, 4))
    assert mask[4, 10, 15] == 1 and mask[6, 10, 10] == 0
    isotropic = keep_center_component(labels, (1, 1, 1))
    assert isotropic[6, 10, 10] == 1 and isotropic[4, 10, 15] == 0


def test_tie_goes_to_the_larger_component():
    labels = np.zeros((5, 21, 21), np.uint8)
    labels[2, 10, 13] = 1                # single voxel 3 away
    labels[2, 10, 4:8] = 2               # nearest voxel (x=7) 3 away, 4 voxels big
    mask = keep_center_component(labels, (1, 1, 1))
    assert mask[2, 10, 4:8].all() and mask[2, 10, 13] == 0


def test_empty_crop_returns_none():
    assert keep_center_component(np.zeros((4, 8, 8), np.uint64), (33, 4, 4)) is None


def test_components_at_label_resolution_equal_the_rule_on_upsampled_labels():
    """Finding the component on the labels and upsampling only the mask gives the same mask as
    the rule applied to labels upsampled first, on random crops (centre on background included)."""
    from synanno_datagen.transforms.geometry import upsample_nearest_zyx

    rng = np.random.default_rng(11)
    for trial in range(300):
        shape = tuple(int(v) for v in rng.integers(2, 8, size=3))
        scale_xyz = tuple(int(v) for v in rng.integers(1, 4, size=3))
        labels = rng.choice([0, 0, 0, 0, 1, 2, 5], size=shape).astype(np.uint64)
        if trial % 3 == 0:
            labels[tuple(n // 2 for n in shape)] = 0
        resolution = tuple(float(v) for v in rng.choice([4, 8, 33], size=3))
        fine = upsample_nearest_zyx(labels, scale_xyz)
        want = keep_center_component(fine, resolution)
        got = keep_center_component(labels, resolution, scale_xyz[::-1])
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


def test_labels_at_or_above_2_to_the_63_are_cleaned_like_small_ones():
    """cc3d raised OverflowError for uint64 labels >= 2**63 when the foreground is one x-row
    (a crop clipping a synapse's edge): the synapse was dead-lettered as unexpected_error."""
    for big in (2**63, 2**63 + 5, 2**64 - 1):
        row = np.zeros((3, 6, 8), np.uint64)
        row[1, 3, 2:6] = big
        small = np.where(row > 0, 7, 0).astype(np.uint64)
        np.testing.assert_array_equal(keep_center_component(row, (40, 8, 8)),
                                      keep_center_component(small, (40, 8, 8)))
        assert keep_center_component(row, (40, 8, 8)).sum() == 4
    touching = np.zeros((4, 8, 8), np.uint64)   # two big labels side by side stay apart
    touching[:, :, :4], touching[:, :, 4:] = 2**63 + 1, 2**63 + 2
    mask = keep_center_component(touching, (40, 8, 8))
    assert mask[:, :, 4:].all() and not mask[:, :, :4].any()
    full = np.full((2, 4, 4), 2**64 - 1, np.uint64)   # no background at all
    assert keep_center_component(full, (40, 8, 8)).all()


def test_a_synapse_touching_itself_only_at_an_edge_or_corner_is_one_component():
    """Components are 26-connected, as documented (found by mutation review: 6-connectivity
    passed every test and cut such voxels from the mask)."""
    labels = np.zeros((3, 5, 5), np.uint32)
    labels[1, 2, 2] = labels[1, 3, 3] = 7        # an edge apart (in-plane diagonal)
    labels[2, 4, 4] = 7                          # a corner apart from (1, 3, 3)
    mask = keep_center_component(labels, (1, 1, 1))
    assert mask.sum() == 3 and mask[1, 3, 3] == 1 and mask[2, 4, 4] == 1


def test_a_coarse_voxel_covers_exactly_its_fine_voxels_when_measuring_the_nearest():
    """Centre on background: coarse z 0 covers fine z 0..1 (3 slices from the fine centre 4),
    coarse z 3 fine z 6..7 (2 slices): the latter is kept (found by mutation review: a footprint
    one voxel too wide tied them and kept the larger, farther one)."""
    labels = np.zeros((4, 3, 3), np.uint8)
    labels[0] = 5                                # a whole slice: the larger component
    labels[3, 1, 1] = 6
    mask = keep_center_component(labels, (1, 1, 1), scale_zyx=(2, 1, 1))
    assert mask.shape == (8, 3, 3)
    assert np.unique(np.nonzero(mask)[0]).tolist() == [6, 7] and mask.sum() == 2


def test_the_clean_step_measures_with_the_resolution_in_z_y_x():
    """CleanTargetFn takes the resolution in x, y, z and measures in z, y, x (found by mutation
    review: unreversed, the anisotropic case below kept the wrong synapse and no test saw it)."""
    from synanno_datagen.transforms.clean import CleanTargetFn
    from synanno_datagen.transforms.records import Fetched

    labels = np.zeros((5, 9, 9), np.uint64)
    labels[3, 4, 4] = 1                          # one slice away: 40 nm
    labels[2, 4, 6] = 2                          # two x voxels away: 16 nm
    fetched = Fetched(instance=None, target_box=None, source_box=None, target_padding_xyz=None,
                      source_padding_xyz=((0, 0),) * 3, source_zyx=None, filled_chunks={},
                      labels_zyx=labels)
    (cleaned,) = CleanTargetFn(source_resolution_nm_xyz=(8, 8, 40)).process(fetched)
    assert cleaned.target_zyx[2, 4, 6] == 1 and cleaned.target_zyx.sum() == 1
    assert cleaned.center_distance_nm == 16.0   # the centre on no label: how far it is


def test_the_distance_from_the_centre_to_its_mask_is_zero_on_it_and_in_nm_off_it():
    """A centre on no label (a table in other units than given) is told by its distance to the
    synapse kept, measured on the fine grid, each coarse voxel covering its fine voxels."""
    from synanno_datagen.transforms.clean import center_component

    labels = np.zeros((5, 9, 9), np.uint8)
    labels[1:4, 3:6, 3:6] = 1
    mask, distance_nm = center_component(labels, (33, 4, 4))
    assert distance_nm == 0.0 and mask.sum() == 27
    labels[2, 4, 4] = 0                           # the centre voxel alone is background
    assert center_component(labels, (33, 4, 4))[1] == 4.0
    far = np.zeros((5, 9, 9), np.uint8)
    far[4, 1, 7] = 3                              # 2 slices, 3 rows, 3 columns away
    assert center_component(far, (33, 4, 4))[1] == pytest.approx(np.hypot(66, np.hypot(12, 12)))
    # on a grid twice as fine in y and x (centre fine voxel 9 of 18): coarse voxel 7 covers
    # fine 14 and 15, 5 fine voxels of 2 nm from the centre in x
    fine = np.zeros((5, 9, 9), np.uint8)
    fine[2, 4, 7] = 1
    mask, distance_nm = center_component(fine, (33, 2, 2), scale_zyx=(1, 2, 2))
    assert distance_nm == 10.0 and mask.shape == (5, 18, 18) and mask[2, 8:10, 14:16].all()


def test_the_distance_is_told_when_two_synapses_are_nearest_alike():
    """Found by mutation review: a centre on no label with two synapses at the same distance
    (the larger kept) could be told as on its label (0.0) and no test saw it; the distance is
    the one to the synapse kept."""
    from synanno_datagen.transforms.clean import center_component

    labels = np.zeros((5, 9, 9), np.uint8)
    labels[2, 4, 1] = 1                          # 3 columns left of the centre (2, 4, 4)
    labels[2, 3:6, 7] = 2                        # 3 columns right of it: the larger one
    mask, distance_nm = center_component(labels, (33, 4, 4))
    assert distance_nm == 12.0 and mask.sum() == 3 and mask[2, 3:6, 7].all()


def test_the_clean_step_counts_the_centres_on_no_label():
    """Found by mutation review: the Beam counter centers_off_label (the job's monitoring) could
    count the centres on their label instead and no test saw it."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from synanno_datagen.transforms.clean import CleanTargetFn
    from synanno_datagen.transforms.records import Fetched

    def fetched(z):
        labels = np.zeros((5, 9, 9), np.uint64)
        labels[z, 4, 4] = 1                      # on the centre (2, 4, 4), or off it
        return Fetched(instance=None, target_box=None, source_box=None,
                       target_padding_xyz=None, source_padding_xyz=((0, 0),) * 3,
                       source_zyx=None, filled_chunks={}, labels_zyx=labels)

    p = TestPipeline()
    _ = (p | beam.Create([fetched(2), fetched(3), fetched(2), fetched(2)])
         | beam.ParDo(CleanTargetFn(source_resolution_nm_xyz=(8, 8, 40))))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("centers_off_label"))["counters"]
    assert [c.committed for c in counters] == [1]   # one of the four


def test_a_big_label_off_the_centre_is_found_as_the_nearest_not_the_background():
    """With labels >= 2**63 renumbered, background must stay 0: an off-centre synapse is the
    nearest component, not the background around the centre."""
    for big in (2**63, 2**64 - 1):
        labels = np.zeros((4, 8, 8), np.uint64)
        labels[2, 1:3, 1:3] = big          # centre (2, 4, 4) is background
        small = np.where(labels > 0, 7, 0).astype(np.uint64)
        mask = keep_center_component(labels, (40, 8, 8))
        np.testing.assert_array_equal(mask, keep_center_component(small, (40, 8, 8)))
        assert mask.sum() == 4 and mask[2, 1:3, 1:3].all()


def test_labels_count_only_where_the_source_has_data():
    """Found by review: where the label volume reaches past the raw one, the mask (and seed
    slices drawn from it) lay on slices of flat padding. Label voxels wholly over the source's
    padding are background (an off-centre synapse there is not chosen), and the kept mask is 0
    on the fine voxels of padding."""
    labels = np.zeros((4, 6, 6), np.uint64)
    labels[1:4, 2:5, 2:5] = 5                    # centred, reaching the last slice
    labels[0, 2:4, 0] = 9
    # source grid 2x finer in x and y: z slice 3 and fine x 0..2 (label x 0 and half of 1) padding
    padding_zyx = ((0, 1), (0, 0), (3, 0))
    mask = keep_center_component(labels, (33, 4, 4), (1, 2, 2), padding_zyx)
    assert mask.shape == (4, 12, 12)
    assert not mask[3].any() and mask[1:3].sum() == 2 * 6 * 6
    centre_only = np.zeros_like(labels)
    centre_only[0, 2:4, 0] = 9                   # off centre, only over padding: not chosen
    assert keep_center_component(centre_only, (33, 4, 4), (1, 2, 2), padding_zyx) is None
    partly = np.zeros_like(labels)
    partly[1, 3, 1] = 9                          # fine x 2..3: x 3 has data
    kept = keep_center_component(partly, (33, 4, 4), (1, 2, 2), padding_zyx)
    assert kept.sum() == 2 and kept[1, 6:8, 3].all() and not kept[:, :, :3].any()
    unpadded = keep_center_component(labels, (33, 4, 4), (1, 2, 2))
    assert unpadded[3].sum() == 36                # no padding: as before


def test_a_mask_over_missing_raw_is_cut_end_to_end(tmp_path):
    """A label volume deeper than the raw (tensorstore-written, both): the records' target and
    seed slices keep off the slice with no raw under it, and a synapse only there is an
    ``empty_target`` saying so."""
    import json

    from synanno_datagen.pipeline.demo_data import write_precomputed
    from tests.test_pipeline import read_records, run_pipeline

    labels = np.zeros((16, 16, 12), np.uint64)
    labels[6:10, 6:10, 5:9] = 4                 # z 5..8 (centre z 6); raw ends before z 8
    labels[0:3, 0:3, 8:10] = 6                  # only beyond the raw, off row 3's centre
    source = np.random.default_rng(3).integers(1, 256, (32, 32, 8), np.uint8)
    target_url = write_precomputed(str(tmp_path / "t"), labels, resolution_nm_xyz=(8, 8, 33),
                                   chunk_size_xyz=(8, 8, 4), encoding="compressed_segmentation",
                                   layer_type="segmentation", writer="tensorstore")
    source_url = write_precomputed(str(tmp_path / "s"), source, resolution_nm_xyz=(4, 4, 33),
                                   chunk_size_xyz=(16, 16, 4), writer="tensorstore")
    table = tmp_path / "t.csv"
    table.write_text("id,x,y,z\n1,8,8,6\n2,8,8,7\n3,2,2,7\n")
    out = tmp_path / "out"
    run_pipeline(["--materialization", str(table), "--source-url", source_url,
                  "--target-url", target_url, "--output-dir", str(out),
                  "--crop-size", "8", "8", "4", "--variants", "3", "--max-seed-slices", "3"])
    records = read_records(out)
    assert {r["instance_id"] for r in records} == {1, 2}
    for r in records:
        z0 = r["target_box_xyz"][2]
        over_raw = [z - z0 for z in range(z0, z0 + 4) if z < 8]
        assert (r["source"][len(over_raw):] == 148).all()          # padding of the raw
        assert not r["target"][len(over_raw):].any() and r["target"][over_raw].any()
        assert set(r["seed_slices"]) <= set(over_raw)
    letters = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    assert [(d["instance_id"], d["reason"], d["details"]) for d in letters] == [
        (3, "empty_target", "no synapse voxel in the target crop where the source volume has data")]


def test_a_centre_over_the_raws_padding_is_measured_to_the_mask_it_is_off():
    """Found by mutation review: a centre whose coarse label voxel is kept while its own fine
    voxel lies over the raw's padding (cut from the mask) was told 0 nm, as if on the mask."""
    from synanno_datagen.transforms.clean import center_component

    labels = np.ones((3, 3, 3), np.uint8)
    # fine grid 3x6x6; the last 3 fine x-columns over padding, the centre (1, 3, 3) among them
    mask, distance_nm = center_component(labels, (40, 8, 8), (1, 2, 2), ((0, 0), (0, 0), (0, 3)))
    assert mask[1, 3, 3] == 0 and mask[:, :, :3].all() and not mask[:, :, 3:].any()
    assert distance_nm == 8.0   # to fine column 2, one 8 nm voxel away
