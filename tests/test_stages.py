"""Each Beam stage on its own: TestPipeline + assert_that on small real volumes and tables."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import (BAD_ROWS, CROP, GOOD_IDS, SCALE, SYNAPSES, TARGET_OFFSET,
                            expected_crop_zyx, make_small_data)
from synanno_datagen.transforms.geometry import crop_box, scale_box, upsample_nearest_zyx
from synanno_datagen.transforms.records import (DEAD, Cleaned, DeadLetter, Fetched, Instance,
                                                RowRef, Varied)
from synanno_datagen.transforms.readers import describe_volume

SYNAPSE_CENTERS = {sid: center for sid, _, _, _, center in SYNAPSES}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_small_data(tmp_path_factory.mktemp("stages") / "data", layout="sharded")


@pytest.fixture(scope="module")
def fetch_config(data):
    from synanno_datagen.transforms.fetch import FetchConfig

    source, target = describe_volume(data.source_url, 0), describe_volume(data.target_url, 0)
    return FetchConfig(source, target, CROP, SCALE, 148, "grouped", (16, 16, 4), 64 << 20)


def instance(sid, center=None, split="train", group=0) -> Instance:
    c = center or SYNAPSE_CENTERS[sid]
    return Instance(sid, c, c, c, RowRef(0, sid), split=split, group=group)


def _fetched(data, fetch_config, sid) -> Fetched:
    from synanno_datagen.transforms.blocks import padded_crop
    from synanno_datagen.transforms.fetch import make_fetched
    from synanno_datagen.transforms.readers import open_reader

    inst = instance(sid)
    target_box = crop_box(inst.center_xyz, CROP)
    source_box = scale_box(target_box, SCALE)
    c = fetch_config
    return make_fetched(inst, target_box, source_box,
                        padded_crop(open_reader(data.source_url, 0, "tensorstore"), c.source,
                                    source_box, 148, "error"),
                        padded_crop(open_reader(data.target_url, 0, "tensorstore"), c.target,
                                    target_box, 0, "zero"), c)


def test_read_table_parses_rows_and_dead_letters_the_bad_ones(data):
    from synanno_datagen.transforms.table import ReadTable

    bounds = describe_volume(data.target_url).bounds
    with TestPipeline() as p:
        out = p | ReadTable([data.table_path], "id", bounds)
        assert_that(out["ok"] | beam.Map(lambda i: (i.instance_id, i.center_xyz)),
                    equal_to([(sid, SYNAPSE_CENTERS[sid]) for sid in GOOD_IDS]
                             + [(23, (106, 234, 12))]), label="Instances")
        assert_that(out[DEAD] | beam.Map(lambda d: (d.instance_id, d.reason)),
                    equal_to([(sid, reason) for sid, (_, reason) in BAD_ROWS.items()
                              if reason != "empty_target"]), label="DeadLetters")
        assert_that(out["rows"] | beam.combiners.Count.Globally(),
                    equal_to([len(GOOD_IDS) + len(BAD_ROWS)]), label="Rows")


def test_read_table_dead_letters_a_row_whose_cells_are_shifted_by_an_unquoted_comma(data,
                                                                                     tmp_path):
    from synanno_datagen.transforms.points import PointColumns, TableLayout
    from synanno_datagen.transforms.table import ReadTable

    layout = TableLayout(center=PointColumns(("x", "y", "z")), pre=None, post=None)
    sid = GOOD_IDS[0]
    x, y, z = SYNAPSE_CENTERS[sid]
    (tmp_path / "t.csv").write_text(f"id,x,y,z,note\n{sid},{x},{y},{z},a, b\n"
                                    f"{sid + 1000},{x},{y},{z},\n")
    bounds = describe_volume(data.target_url).bounds
    with TestPipeline() as p:
        out = p | ReadTable([str(tmp_path / "t.csv")], "id", bounds, layout=layout)
        assert_that(out["ok"] | beam.Map(lambda i: (i.instance_id, i.center_xyz)),
                    equal_to([(sid + 1000, (x, y, z))]), label="Instances")
        assert_that(out[DEAD] | beam.Map(lambda d: (d.instance_id, d.reason, d.row)),
                    equal_to([(sid, "extra_cells", (("id", str(sid)), ("note", "a"), ("x", str(x)),
                                                    ("y", str(y)), ("z", str(z))))]),
                    label="DeadLetters")


@pytest.mark.parametrize("select", [None, (7, 3)])
def test_read_table_numbers_rows_over_its_shards_without_an_id_column(data, tmp_path, select):
    """Row numbers are the ids without an id column: each shard's rows counted by a read of
    their own (a quoted cell over two lines and a blank line are no rows)."""
    from synanno_datagen.transforms.points import PointColumns, TableLayout
    from synanno_datagen.transforms.select import selection_key
    from synanno_datagen.transforms.table import ReadTable

    layout = TableLayout(center=PointColumns(("x", "y", "z")), pre=None, post=None)
    centers = [SYNAPSE_CENTERS[sid] for sid in GOOD_IDS[:5]]
    line = "{},{},{},{}\n".format
    (tmp_path / "a.csv").write_text("x,y,z,note\n" + line(*centers[0], '"two\nlines"') + "\n"
                                    + line(*centers[1], "") + line(*centers[2], ""))
    (tmp_path / "b.csv").write_text("x,y,z,note\n" + line(*centers[3], "") + line(*centers[4], ""))
    bounds = describe_volume(data.target_url).bounds
    expected = list(enumerate(centers))
    if select:
        expected = sorted(expected, key=lambda e: selection_key(select[0], e[0]))[:select[1]]
    with TestPipeline() as p:
        out = p | ReadTable([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], None, bounds,
                            select=select, layout=layout)
        assert_that(out["ok"] | beam.Map(lambda i: (i.instance_id, i.center_xyz)),
                    equal_to(expected))


def _shuffled_between(p, start: str, end: str) -> bool:
    """Whether a GroupByKey (a fusion break: a runner hands its output to any worker) lies on
    the way from the step named ``start`` to the step named ``end`` in ``p``'s graph."""
    transforms = p.to_runner_api().components.transforms
    leaves = [t for t in transforms.values() if not t.subtransforms]
    producer = {pc: t for t in leaves for pc in t.outputs.values()}
    [step] = [t for t in leaves if t.unique_name.split("/")[-1] == end]
    while True:
        [pc] = step.inputs.values()
        step = producer[pc]
        if start in step.unique_name.split("/"):
            return False
        if step.spec.urn == "beam:transform:group_by_key:v1":
            return True


@pytest.mark.parametrize("select", [None, (3, 2)])
def test_read_table_hands_each_part_of_a_shard_to_any_worker(select):
    """Found by mutation review: without the Reshuffle after ListParts every test passed, but a
    runner fuses the listing of a shard's parts with their reads (Create hands one shard to
    one worker), so a table of one large Parquet file was read by one thread again."""
    from synanno_datagen.transforms.geometry import Box
    from synanno_datagen.transforms.table import ReadTable

    p = beam.Pipeline()
    _ = p | ReadTable(["t.parquet"], "id", Box((0, 0, 0), (9, 9, 9)), select)
    for label in ["", "Again"] if select else [""]:
        assert _shuffled_between(p, f"ListParts{label}", f"ReadShards{label}")


def test_keep_new_instances_hands_the_earlier_index_shards_to_any_worker():
    """Found by mutation review: the earlier shards' paths come from one element now (listed in
    the job); without the Reshuffle every test passed, but one worker read every earlier index
    shard of the root."""
    from synanno_datagen.transforms.keep_new import KeepNewInstances

    p = beam.Pipeline()
    _ = ({"instances": p | beam.Create([instance(11)]), "rejected": p | "R" >> beam.Create([])}
         | KeepNewInstances(lambda: ["index.jsonl"]))
    assert _shuffled_between(p, "EarlierIndex", "EarlierPoints")


def test_keep_new_instances_drops_earlier_ids_and_reports_vanished_ones(tmp_path):
    from synanno_datagen.transforms.keep_new import KeepNewInstances

    earlier = tmp_path / "index.jsonl"
    earlier.write_text("".join(json.dumps({"instance_id": i}) + "\n" for i in (11, 12, 98, 99)))
    with TestPipeline() as p:
        rejected = p | "Rejected" >> beam.Create([
            DeadLetter("missing_coordinate", "", "ReadTable", 98),   # still in the table
            DeadLetter("invalid_id", "", "ReadTable", None)])
        out = ({"instances": p | beam.Create([instance(i) for i in (11, 12, 13)]),
                "rejected": rejected}
               | KeepNewInstances([str(earlier)]))
        assert_that(out["ok"] | beam.Map(lambda i: i.instance_id), equal_to([13]), label="New")
        assert_that(out["vanished"], equal_to([99]), label="Vanished")


def test_keep_new_instances_report_an_earlier_id_whose_pre_or_post_point_alone_moved(tmp_path):
    """Found by mutation review: comparing the centres only passed every test, and a night
    whose table moved only a pre or post point kept the stale points in the records."""
    from synanno_datagen.transforms.keep_new import KeepNewInstances
    from synanno_datagen.transforms.records import Instance, RowRef

    earlier = tmp_path / "index.jsonl"
    earlier.write_text("".join(json.dumps(
        {"instance_id": i, "center_xyz": [10, 10, 2], "pre_pt_xyz": [9, 10, 2],
         "post_pt_xyz": [11, 10, 2]}) + "\n" for i in (5, 6, 7)))
    same = Instance(5, (10, 10, 2), (9, 10, 2), (11, 10, 2), RowRef(0, 5))
    with TestPipeline() as p:
        out = ({"instances": p | beam.Create([
                    same, same.replace(instance_id=6, pre_pt_xyz=(8, 10, 2)),
                    same.replace(instance_id=7, post_pt_xyz=(11, 9, 2))]),
                "rejected": p | "Rejected" >> beam.Create([])}
               | KeepNewInstances([str(earlier)]))
        assert_that(out[DEAD] | beam.Map(lambda d: (d.instance_id, d.reason)),
                    equal_to([(6, "changed_since_written"), (7, "changed_since_written")]))
        assert_that(out["ok"], equal_to([]), label="NothingNew")


def test_keep_new_instances_keeps_the_repeat_whose_points_the_dataset_holds(tmp_path):
    """An incremental run chooses among an id's rows in KeepNewInstances: the earliest row with
    the points the dataset holds (5: a later row), else the row whose fetch is remembered as
    failed (8; a row entry is no fetch, 6), else the earliest (6, new; 7, moved); the others
    are duplicate_id, saying "first seen" only when the first row is kept."""
    from synanno_datagen.transforms.keep_new import KeepNewInstances
    from synanno_datagen.transforms.records import Instance, RowRef
    from synanno_datagen.transforms.remembered import fingerprint

    earlier = tmp_path / "index.jsonl"
    earlier.write_text("".join(json.dumps(
        {"instance_id": i, "center_xyz": [10, 10, 2]}) + "\n" for i in (5, 7)))
    held = Instance(5, (10, 10, 2), None, None, RowRef(0, 3))
    other = held.replace(center_xyz=(11, 10, 2))
    tried = held.replace(instance_id=8, ref=RowRef(0, 9), row=(("id", "8"), ("x", "10")))
    rows = [held, other.replace(ref=RowRef(0, 1)), held.replace(ref=RowRef(1, 0)),
            other.replace(instance_id=6, ref=RowRef(0, 8), row=(("id", "6"),)),
            held.replace(instance_id=6),
            other.replace(instance_id=7, ref=RowRef(0, 4)), other.replace(instance_id=7),
            tried, tried.replace(ref=RowRef(0, 2), row=(("id", "8"), ("x", "11")))]
    failed = {"kind": "instance", "fingerprint": fingerprint(tried.row), "instance_id": 8,
              "reason": "empty_target", "first_run": 1}
    with TestPipeline() as p:
        out = ({"instances": p | beam.Create(rows), "rejected": p | "Rejected" >> beam.Create([]),
                "remembered": p | "Memory" >> beam.Create([failed, {
                    **failed, "kind": "row", "instance_id": 6,
                    "fingerprint": fingerprint((("id", "6"),))}])}
               | KeepNewInstances([str(earlier)]))
        assert_that(out["ok"] | beam.Map(lambda i: (i.instance_id, i.ref)),
                    equal_to([(6, RowRef(0, 3)), (8, RowRef(0, 9))]), label="New")
        assert_that(out[DEAD] | beam.Map(
            lambda d: (d.instance_id, d.ref, d.reason, d.stage, d.details)), equal_to([
                (5, RowRef(0, 1), "duplicate_id", "KeepNewInstances",
                 "id 5 is in the dataset with the points of table shard 0 row 3"),
                (5, RowRef(1, 0), "duplicate_id", "KeepNewInstances",
                 "id 5 is in the dataset with the points of table shard 0 row 3"),
                (6, RowRef(0, 8), "duplicate_id", "ReadTable",
                 "id 6 first seen in table shard 0 row 3"),
                (7, RowRef(0, 4), "duplicate_id", "ReadTable",
                 "id 7 first seen in table shard 0 row 3"),
                (7, RowRef(0, 3), "changed_since_written", "KeepNewInstances",
                 "id 7 is in the dataset with center [10, 10, 2] (target voxels); the table now "
                 "has center [11, 10, 2]: its records are not rebuilt (a new root rebuilds "
                 "every instance)"),
                (8, RowRef(0, 2), "duplicate_id", "KeepNewInstances",
                 "id 8 was tried as table shard 0 row 9 (remembered as failed)")]), label="Dead")


def test_block_splits_and_group_order_follow_the_seed_not_the_input_order():
    """Found by mutation review (each passed every test): block splits ignoring --seed (every
    seed the same held-out regions), and a block's members in the order they came."""
    import random

    from synanno_datagen.transforms.records import Instance, RowRef
    from synanno_datagen.transforms.shards import group_members, split_of

    splits = (("train", 0.5), ("val", 0.5))
    blocks = [(x, y, 0) for x in range(8) for y in range(8)]
    assert [split_of(1, 0, b, splits, "block") for b in blocks] != \
        [split_of(2, 0, b, splits, "block") for b in blocks]
    members = [Instance(i, (i % 16, (i * 5) % 16, 1), None, None, RowRef(0, i))
               for i in range(40)]
    shuffled = members[:]
    random.Random(4).shuffle(shuffled)
    order = [[i.instance_id for i in block]
             for _, block in group_members(members, (0, 0, 0), (8, 8, 4))]
    assert order == [[i.instance_id for i in block]
                     for _, block in group_members(shuffled, (0, 0, 0), (8, 8, 4))]
    assert all(ids == sorted(ids) for ids in order) and len(order) == 4


def test_select_and_plan_shards_are_pure_functions_of_seed_block_and_id():
    from synanno_datagen.transforms.select import SelectInstances, selection_key
    from synanno_datagen.transforms.shards import PlanShards, block_key, plan_groups, split_of

    ids = list(range(100, 140))
    centers = {i: ((i * 7) % 40, (i * 3) % 40, i % 8) for i in ids}
    picked = sorted(ids, key=lambda i: selection_key(3, i))[:10]
    splits = (("train", 0.5), ("val", 0.5))
    block = {i: block_key(centers[i], (0, 0, 0), (8, 8, 4)) for i in picked}
    for split_by in ("block", "instance"):
        split = {i: split_of(3, i, block[i], splits, split_by) for i in picked}
        counts = {}
        for i in picked:
            counts[(block[i], split[i])] = counts.get((block[i], split[i]), 0) + 1
        groups = plan_groups(counts, 100, 250, split_by)
        with TestPipeline() as p:
            chosen = (p | beam.Create([instance(i, centers[i]) for i in ids])
                      | SelectInstances(3, 10))
            planned = chosen | PlanShards(3, splits, split_by, (0, 0, 0), (8, 8, 4), 100, 250)
            assert_that(planned["ok"] | beam.Map(lambda i: (i.instance_id, i.split, i.group)),
                        equal_to([(i, split[i], groups[block[i]]) for i in picked]))
        if split_by == "block":   # a block, and so a group, lies in one split
            assert all(len({split[i] for i in picked if groups[block[i]] == g}) == 1
                       for g in set(groups.values()))


@pytest.mark.parametrize("split_by", ["block", "instance"])
def test_plan_shards_packs_blocks_of_many_tiles_as_plan_groups_does(split_by):
    """Tiles are planned apart and their pieces numbered together: the groups PlanShards gives
    in parallel are plan_groups' over the whole table, a group may span tiles."""
    from synanno_datagen.transforms.shards import (PlanShards, block_key, plan_groups, split_of,
                                                   tile_of)

    splits, size = (("train", 0.7), ("val", 0.3)), (2, 2, 1)
    centers = {i: ((i * 37) % 90, (i * 53) % 70, (i * 11) % 40) for i in range(300)}
    block = {i: block_key(c, (0, 0, 0), size) for i, c in centers.items()}
    split = {i: split_of(5, i, block[i], splits, split_by) for i in centers}
    counts = {}
    for i in centers:
        counts[(block[i], split[i])] = counts.get((block[i], split[i]), 0) + 1
    groups = plan_groups(counts, 100, 450, split_by)
    tiles = {}
    for b, g in groups.items():
        tiles.setdefault(g, set()).add(tile_of(b))
    assert len({t for ts in tiles.values() for t in ts}) > 8
    assert any(len(ts) > 1 for ts in tiles.values())      # a group across tiles
    with TestPipeline() as p:
        planned = (p | beam.Create([instance(i, c) for i, c in centers.items()])
                   | PlanShards(5, splits, split_by, (0, 0, 0), size, 100, 450))
        assert_that(planned["ok"] | beam.Map(lambda i: (i.instance_id, i.split, i.group)),
                    equal_to([(i, split[i], groups[block[i]]) for i in centers]))


def test_plan_shards_with_splits_on_another_grid_packs_whole_work_blocks():
    """An incremental root keeps its own split grid while this run's work blocks differ: a work
    block then holds instances of several splits, and groups are packed as for instance splits,
    of whole work blocks (a block split between groups is fetched by two workers)."""
    from synanno_datagen.transforms.shards import PlanShards, block_key, plan_groups, split_of

    splits, size, grid = (("train", 0.5), ("val", 0.5)), (4, 4, 2), (3, 3, 3)
    centers = {i: ((i * 37) % 40, (i * 53) % 30, (i * 11) % 12) for i in range(300)}
    block = {i: block_key(c, (0, 0, 0), size) for i, c in centers.items()}
    split = {i: split_of(5, i, block_key(c, (0, 0, 0), grid), splits, "block")
             for i, c in centers.items()}
    counts = {}
    for i in centers:
        counts[(block[i], split[i])] = counts.get((block[i], split[i]), 0) + 1
    assert len({b for b, _ in counts}) < len(counts)   # some work blocks hold two splits
    groups = plan_groups(counts, 100, 450, "instance")
    assert len(set(groups.values())) > 5
    with TestPipeline() as p:
        planned = (p | beam.Create([instance(i, c) for i, c in centers.items()])
                   | PlanShards(5, splits, "block", (0, 0, 0), size, 100, 450, grid))
        assert_that(planned["ok"] | beam.Map(lambda i: (i.instance_id, i.split, i.group)),
                    equal_to([(i, split[i], groups[block[i]]) for i in centers]))


def test_plan_groups_packs_blocks_in_order_up_to_the_shard_size():
    from synanno_datagen.transforms.shards import plan_groups

    counts = {((0, 0, 0), "train"): 2, ((1, 0, 0), "train"): 2, ((0, 1, 0), "train"): 3,
              ((5, 5, 5), "val"): 1}
    assert plan_groups(counts, 10, 40, "block") == {(0, 0, 0): 0, (1, 0, 0): 0, (0, 1, 0): 1,
                                                    (5, 5, 5): 2}
    assert plan_groups(counts, 10, 1000, "instance") == dict.fromkeys(
        [(0, 0, 0), (1, 0, 0), (0, 1, 0), (5, 5, 5)], 0)


@pytest.mark.parametrize("strategy", ["grouped", "per-instance"])
def test_fetch_subvolumes_cuts_both_crops_and_dead_letters_what_it_cannot_read(
        data, fetch_config, strategy, tmp_path):
    import dataclasses

    from synanno_datagen.transforms.fetch import FetchSubvolumes

    config = dataclasses.replace(fetch_config, strategy=strategy)
    outside = instance(30, (20, 20, 1))   # no voxel of either volume: padding only
    source_offset = tuple(o * s for o, s in zip(TARGET_OFFSET, SCALE))

    def check(fetched: Fetched):
        start = fetched.source_box.start_xyz
        want = expected_crop_zyx(data.source_xyz, source_offset, start,
                                 fetched.source_box.size_xyz, 148)
        labels = expected_crop_zyx(data.labels_xyz, TARGET_OFFSET,
                                   fetched.target_box.start_xyz, CROP, 0)
        ok = np.array_equal(fetched.source_zyx, want) and np.array_equal(fetched.labels_zyx,
                                                                          labels)
        return fetched.instance.instance_id, ok, fetched.filled_chunks["source"]

    with TestPipeline() as p:
        out = (p | beam.Create([instance(sid) for sid in (11, 12, 14)] + [outside])
               | FetchSubvolumes(config))
        assert_that(out["ok"] | beam.Map(check),
                    equal_to([(11, True, 0), (12, True, 0), (14, True, 0), (30, True, 0)]),
                    label="Crops")
        assert_that(out[DEAD], equal_to([]), label="NoDeadLetters")
        assert_that(out["io"] | beam.Map(lambda io: io["source"]["distinct_chunks"] > 0),
                    equal_to([True]), label="Io")


def _fetch_directly(config, ids):
    """FetchShardFn called without Beam on one shard group of ``ids``: ({id: Fetched},
    {id: DeadLetter})."""
    from synanno_datagen.transforms.fetch import FetchShardFn

    fn = FetchShardFn(config)
    fn.setup()
    fetched, dead = {}, {}
    for out in fn.process((0, [instance(sid) for sid in ids])):
        if isinstance(out, Fetched):
            fetched[out.instance.instance_id] = out
        elif out.tag == DEAD:
            dead[out.value.instance_id] = out.value
    return fetched, dead


def _assert_crops(data, fetched, source_xyz=None):
    """Each Fetched holds its crops of the volumes as written (``source_xyz``: the source's
    voxels as they should read), padded with 148 and 0."""
    source_offset = tuple(o * s for o, s in zip(TARGET_OFFSET, SCALE))
    for sid, f in fetched.items():
        np.testing.assert_array_equal(f.source_zyx, expected_crop_zyx(
            data.source_xyz if source_xyz is None else source_xyz, source_offset,
            f.source_box.start_xyz, f.source_box.size_xyz, 148), err_msg=str(sid))
        np.testing.assert_array_equal(f.labels_zyx, expected_crop_zyx(
            data.labels_xyz, TARGET_OFFSET, f.target_box.start_xyz, CROP, 0), err_msg=str(sid))


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
def test_absent_label_chunks_are_zeros_or_dead_letter_the_crops_they_touch_by_the_target_mode(
        data, fetch_config, engine):
    """The sharded labels store no all-zero chunk. target=zero: every crop is cut and counts the
    absent chunks it touches; target=error: the crops touching any are dead letters naming
    those chunks (only the crop's own, not its region's) under "target", the others are cut."""
    from synanno_datagen.transforms.volumes import chunk_names
    from tests.test_readers import _all_zero_chunks

    target = fetch_config.target
    zero = _all_zero_chunks(target, data.labels_xyz)
    absent = {sid: [n for n in chunk_names(target, crop_box(c, CROP)) if n in zero]
              for sid, c in SYNAPSE_CENTERS.items()}
    assert {sid: len(names) for sid, names in absent.items()} == {11: 4, 12: 1, 13: 0, 14: 3,
                                                                   15: 2}
    fetched, dead = _fetch_directly(dataclasses.replace(
        fetch_config, missing_chunks=("error", "zero"), engine=engine), GOOD_IDS)
    assert sorted(fetched) == GOOD_IDS and not dead
    _assert_crops(data, fetched)
    assert {sid: f.filled_chunks for sid, f in fetched.items()} == {
        sid: {"source": 0, "target": len(names)} for sid, names in absent.items()}
    fetched, dead = _fetch_directly(dataclasses.replace(
        fetch_config, missing_chunks=("error", "error"), engine=engine), GOOD_IDS)
    assert sorted(fetched) == [13] and sorted(dead) == [11, 12, 14, 15]
    _assert_crops(data, fetched)
    for sid, letter in dead.items():
        names = absent[sid]
        assert (letter.reason, letter.stage) == ("missing_chunks", "FetchSubvolumes")
        assert letter.details == (f"target: {len(names)} chunk(s) missing in {target.url}: "
                                  + ", ".join(names[:3]) + (" and 1 more" if sid == 11 else ""))
    assert dead[11].details.endswith(": 8_8_33/100-116_200-216_14-18, 8_8_33/100-116_216-232_10-14"
                                     ", 8_8_33/100-116_216-232_14-18 and 1 more")


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
def test_an_absent_raw_chunk_dead_letters_or_zero_fills_the_crop_touching_it_by_the_source_mode(
        tmp_path, engine):
    """A source chunk file deleted from an unsharded volume: source=error dead-letters the one
    crop touching it under "source"; source=zero cuts it with that chunk's voxels 0 (the
    pad value only outside the volume) and counts it."""
    from synanno_datagen.transforms.fetch import FetchConfig
    from tests.test_faults import LONE_BOX, LONE_ID, LONE_SOURCE_CHUNK

    data = make_small_data(tmp_path / "data", layout="tensorstore")
    (data.root / "source" / "4_4_33" / LONE_SOURCE_CHUNK).unlink()
    source, target = describe_volume(data.source_url), describe_volume(data.target_url)
    config = FetchConfig(source, target, CROP, SCALE, 148, "grouped", (16, 16, 4), 64 << 20,
                         ("error", "zero"), engine)
    fetched, dead = _fetch_directly(config, GOOD_IDS)
    assert sorted(fetched) == [i for i in GOOD_IDS if i != LONE_ID] and list(dead) == [LONE_ID]
    _assert_crops(data, fetched)
    assert (dead[LONE_ID].reason, dead[LONE_ID].details) == (
        "missing_chunks", f"source: 1 chunk(s) missing in {source.url}: 4_4_33/{LONE_SOURCE_CHUNK}")
    fetched, dead = _fetch_directly(dataclasses.replace(config, missing_chunks=("zero", "zero")),
                                    GOOD_IDS)
    assert sorted(fetched) == GOOD_IDS and not dead
    zeroed = data.source_xyz.copy()
    offset = [o * s for o, s in zip(TARGET_OFFSET, SCALE)]
    zeroed[tuple(slice(a - o, b - o) for a, b, o in zip(*LONE_BOX, offset))] = 0
    _assert_crops(data, fetched, zeroed)
    crop = fetched[LONE_ID].source_zyx
    assert (crop == 0).sum() >= 18 * 16 * 2 and (crop == 148).any()   # the chunk's part, pad
    assert [f.filled_chunks["source"] for f in fetched.values()] == [
        int(sid == LONE_ID) for sid in fetched]


def test_clean_targets_keeps_the_centred_synapse_and_dead_letters_empty_crops(data,
                                                                             fetch_config):
    from synanno_datagen.transforms.clean import CleanTargets

    touching = _fetched(data, fetch_config, 11)       # 12 touches it with another label
    empty = _fetched(data, fetch_config, 11)
    empty = Fetched(**{**empty.crop_fields(), "instance": instance(23, (106, 234, 12))},
                    labels_zyx=np.zeros_like(empty.labels_zyx))
    with TestPipeline() as p:
        out = p | beam.Create([touching, empty]) | CleanTargets((4, 4, 33), SCALE)
        assert_that(out["ok"] | beam.Map(lambda c: (type(c).__name__, c.instance.instance_id,
                                                    int(c.target_zyx.sum()),
                                                    c.target_zyx.dtype.name)),
                    equal_to([("Cleaned", 11, 5 * 5 * 3 * 4, "uint8")]), label="Cleaned")
        assert_that(out[DEAD] | beam.Map(lambda d: (d.instance_id, d.reason)),
                    equal_to([(23, "empty_target")]), label="Empty")
    assert touching.labels_zyx.any()    # the input is left as it was


def test_make_variants_draws_distinct_seed_slices_on_foreground(data, fetch_config):
    from synanno_datagen.transforms.seeds import SeedModel, variant_seed_slices
    from synanno_datagen.transforms.variants import MakeVariants

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx == 1).astype(np.uint8), SCALE)
    cleaned = Cleaned(**fetched.crop_fields(), target_zyx=mask)
    want = tuple(variant_seed_slices(mask, run_seed=5, instance_id=11, n_variants=3,
                                     model=SeedModel()))
    with TestPipeline() as p:
        out = p | beam.Create([cleaned]) | MakeVariants(5, 3, SeedModel())
        assert_that(out["ok"] | beam.Map(lambda v: (type(v).__name__, v.seed_slices)),
                    equal_to([("Varied", want)]))
    assert len(set(want)) == 3 and all(mask[list(s)].any() for s in want)


@pytest.mark.parametrize("layout, compression", [("instance", "none"), ("variant", "gzip")])
def test_write_shards_writes_each_group_once_and_finalize_names_them(data, fetch_config,
                                                                    tmp_path, layout,
                                                                    compression):
    from tfrecord.reader import tfrecord_loader

    from synanno_datagen.transforms.write import FinalizeShards, WriteShards

    varied = []
    for sid, group in ((14, 3), (11, 1), (12, 1)):   # group 1 before 3 after numbering
        fetched = _fetched(data, fetch_config, sid)
        fetched = Fetched(**{**fetched.crop_fields(),
                             "instance": instance(sid, group=group)},
                          labels_zyx=fetched.labels_zyx)
        mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
        varied.append(Varied(**fetched.crop_fields(), target_zyx=mask,
                             seed_slices=((1,), (1, 2))))
    out = tmp_path / "out"
    records = {"instance": 1, "variant": 2}[layout]
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    with TestPipeline() as p:
        written = (p | beam.Create(varied)
                   | WriteShards(str(out), ("tfrecord", "npy"), layout, compression))
        files = written["ok"] | FinalizeShards(str(out), compression)
        assert_that(files | beam.Map(lambda f: (f["kind"], f["path"], f["records"])),
                    equal_to([("tfrecord", f"tfrecord/train-00000-of-00002{suffix}",
                               2 * records),
                              ("index", "index/train-00000-of-00002.jsonl", 2),
                              ("tfrecord", f"tfrecord/train-00001-of-00002{suffix}", records),
                              ("index", "index/train-00001-of-00002.jsonl", 1)]))
    first = out / "tfrecord" / f"train-00000-of-00002{suffix}"
    if compression == "gzip":   # no name, no time in the header: the same bytes on every run
        assert first.read_bytes()[3:8] == bytes(5)   # found by mutation review
    got = [int(r["instance_id"][0]) for r in tfrecord_loader(
        str(first), None, {"instance_id": "int"},
        compression_type="gzip" if compression == "gzip" else None)]
    assert got == [11] * records + [12] * records          # in the order they arrived
    lines = (out / "index" / "train-00001-of-00002.jsonl").read_text().splitlines()
    assert [(json.loads(x)["instance_id"], json.loads(x)["shard"]) for x in lines] == [(14, 1)]
    assert not any((out / "_tmp").rglob("*.tfrecord*"))      # renamed, not copied
    np.testing.assert_array_equal(np.load(out / "npy" / "gt" / "target_11.npy"),
                                  varied[1].target_zyx)


def test_a_storage_failure_while_writing_fails_the_bundle_not_the_instance(data, fetch_config,
                                                                          tmp_path):
    """Bytes already written for an instance (a part of a record, some npy files) cannot be
    taken back: a write that fails fails the bundle, which a runner retries from the start
    (its files rewritten), instead of leaving them beside a dead letter."""
    from synanno_datagen.transforms.write import WriteShards

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    varied = Varied(**fetched.crop_fields(), target_zyx=mask, seed_slices=((1,),))
    out = tmp_path / "out"
    (out / "npy").mkdir(parents=True)
    (out / "npy" / "gt").write_text("a file where the writer needs a folder")
    with pytest.raises(Exception, match="gt"):
        with TestPipeline() as p:
            _ = p | beam.Create([varied]) | WriteShards(str(out), ("tfrecord", "npy"))


def test_a_writer_whose_lease_was_broken_since_its_last_look_writes_no_npy_file(
        data, fetch_config, tmp_path):
    """Found by review: npy files go straight to their final names, and the writer's look at
    the lease before each instance is rate-limited: a run whose lease was broken (another run
    then committed the same run folder) wrote its npy files over the other run's. With npy
    files the writer looks before each instance's."""
    from synanno_datagen.pipeline.lease import Heartbeat, LeaseLost, acquire
    from synanno_datagen.transforms.write import WriteShards

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    varied = Varied(**fetched.crop_fields(), target_zyx=mask, seed_slices=((1,),))
    out = tmp_path / "out"
    heartbeat = Heartbeat(acquire(str(out), hours=2, process_bound=False), hours=2)
    heartbeat.beat()                    # a look just now: the next is hours away, unforced
    (out / "LEASE").unlink()            # --break-lease by another run
    with pytest.raises(Exception) as raised:
        with TestPipeline() as p:
            _ = p | beam.Create([varied]) | WriteShards(str(out), ("npy",),
                                                        keepalive=heartbeat)
    assert isinstance(raised.value, LeaseLost) or "LeaseLost" in str(raised.value)
    assert not (out / "npy").exists()


def test_what_a_shard_group_sends_on_does_not_grow_with_its_instances(data, fetch_config,
                                                                      tmp_path):
    """Only a group's file names, sizes and counts cross the shuffle that numbers the shards;
    its index lines wait in a file beside its records (found by review: they all went to the
    one step that numbers the shards, some KB per instance, GBs for a million). The index
    shards still hold every line, with its shard number."""
    from synanno_datagen.transforms.write import FinalizeShardFn, WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    sizes = {}
    for n in (1, 40):
        out = tmp_path / f"out{n}"
        writer = WriteShardsFn(str(out), ("tfrecord", "npy"), "instance", "none")
        writer.start_bundle()
        for i in range(n):
            instance = dataclasses.replace(fetched.instance, instance_id=1000 + i)
            varied = Varied(**{**fetched.crop_fields(), "instance": instance},
                            target_zyx=mask, seed_slices=((1,), (0, 2)))
            assert list(writer.process(varied)) == []
        (written,) = [w.value for w in writer.finish_bundle()]
        sizes[n] = len(pickle.dumps(written))
        infos = list(FinalizeShardFn(str(out), "none").process((written, 0, 1)))
        (index,) = [i for i in infos if i["kind"] == "index"]
        lines = [json.loads(line) for line in (out / index["path"]).read_text().splitlines()]
        assert [e["instance_id"] for e in lines] == [1000 + i for i in range(n)]
        assert {e["shard"] for e in lines} == {0} and index["records"] == n
        assert all(e["seed_slices"] == [[1], [0, 2]] and "records" not in e for e in lines)
    assert sizes[1] <= sizes[40] < min(sizes[1] + 16, 1000)   # larger counts, no more


def test_a_writer_holds_one_groups_index_lines_and_files_whatever_its_bundle_holds(
        data, fetch_config, tmp_path):
    """A bundle of many shard groups (the DirectRunner's is the whole run): each group's files
    are closed and its WrittenShard given out as the next group begins, not at the bundle's end
    (found by measuring a run's memory: every index line of the run, about 1.5 KB per
    instance, and an open file per group waited for the bundle's end)."""
    from synanno_datagen.transforms.write import FinalizeShardFn, WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    out = tmp_path / "out"
    writer = WriteShardsFn(str(out), ("tfrecord",), "instance", "none")
    writer.start_bundle()
    given, most_open = [], 0
    for group in range(30):
        for i in range(3):
            instance = dataclasses.replace(fetched.instance, instance_id=1000 + 3 * group + i,
                                           group=group, split="train")
            given += writer.process(Varied(**{**fetched.crop_fields(), "instance": instance},
                                           target_zyx=mask, seed_slices=((1,),)))
            most_open = max(most_open, len(writer._open),
                            sum(len(g.entries) for g in writer._open.values()))
        assert [w.group for w in given] == list(range(group))   # the groups before, closed
    given += [w.value for w in writer.finish_bundle()]
    assert most_open == 3 and writer._open == {}
    assert [(w.group, w.counts["instances"], w.records) for w in given] == [
        (g, 3, 3) for g in range(30)]
    for shard, w in enumerate(given):
        infos = list(FinalizeShardFn(str(out), "none").process((w, shard, 30)))
        (index,) = [i for i in infos if i["kind"] == "index"]
        lines = [json.loads(line) for line in (out / index["path"]).read_text().splitlines()]
        assert [e["instance_id"] for e in lines] == [1000 + 3 * shard + i for i in range(3)]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_failed_writer_attempt_cannot_touch_the_retrys_shard(data, fetch_config, tmp_path,
                                                                compression):
    """Found by review: a failed bundle's open shard file, closed later (on GCS, garbage
    collection finishes its upload), replaced the retry's complete file under their one
    temporary name, and the run committed the partial shard. Each attempt writes its own file;
    a bundle started after a failed one on the same writer removes that one's files; and a
    temporary file of another size than its writer closed is not renamed into place."""
    from synanno_datagen.transforms.write import FinalizeShardFn, WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    items = [Varied(**{**fetched.crop_fields(), "instance": dataclasses.replace(
        fetched.instance, instance_id=1000 + i)}, target_zyx=mask, seed_slices=((1,), (0, 2)))
        for i in range(3)]
    out = tmp_path / "out"
    failed = WriteShardsFn(str(out), ("tfrecord",), "instance", compression)
    failed.start_bundle()
    list(failed.process(items[0]))                      # then the bundle fails: left open
    zombie = [g.shard for g in failed._open.values()]
    retry = WriteShardsFn(str(out), ("tfrecord",), "instance", compression)
    retry.start_bundle()
    for varied in items:
        list(retry.process(varied))
    (written,) = [w.value for w in retry.finish_bundle()]
    for shard in zombie:                                 # the failed attempt's file, closed late
        shard.close()
    assert zombie[0].path != written.path
    (info,) = [i for i in FinalizeShardFn(str(out), compression).process((written, 0, 1))
               if i["kind"] == "tfrecord"]
    final = (out / info["path"]).read_bytes()
    assert (len(final), hashlib.sha256(final).hexdigest()) == (written.bytes, written.sha256)
    # the same writer retried: the failed attempt's file is removed as the next bundle starts
    retry.start_bundle()
    list(retry.process(items[0]))
    (left,) = [g.shard.path for g in retry._open.values()]
    retry.start_bundle()
    assert not os.path.exists(left) and retry._open == {}
    # a temporary file that is not what its writer closed stays where it is, loudly
    list(retry.process(items[1]))
    (again,) = [w.value for w in retry.finish_bundle()]
    with open(again.path, "ab") as f:
        f.write(b"late bytes of another attempt")
    with pytest.raises(RuntimeError, match="not the file its writer closed"):
        list(FinalizeShardFn(str(out), compression).process((again, 0, 1)))


def test_two_attempts_of_a_bundle_at_once_each_write_their_own_index_lines(data, fetch_config,
                                                                           tmp_path):
    """Found by review: a group's index lines went to one temporary name for every attempt, so
    an attempt still running (a runner may run a bundle twice) that finished after the
    committed one replaced its index: the shard held the committed attempt's records, the index
    the other's instances. Each attempt's index lines are its own, as its records are."""
    from synanno_datagen.transforms.write import FinalizeShardFn, WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    items = {i: Varied(**{**fetched.crop_fields(), "instance": dataclasses.replace(
        fetched.instance, instance_id=i)}, target_zyx=mask, seed_slices=((1,),))
        for i in (1001, 1002)}
    out = tmp_path / "out"

    def attempt(ids):
        writer = WriteShardsFn(str(out), ("tfrecord",), "instance", "none")
        writer.start_bundle()
        for i in ids:
            assert list(writer.process(items[i])) == []
        (written,) = [w.value for w in writer.finish_bundle()]
        return written

    committed = attempt([1002])        # 1001 failed to read in this attempt (fetch_error)
    late = attempt([1001, 1002])       # another attempt of the bundle, finished after it
    assert late.index != committed.index
    infos = {i["kind"]: i for i in FinalizeShardFn(str(out), "none").process((committed, 0, 1))}
    lines = (out / infos["index"]["path"]).read_text().splitlines()
    assert [json.loads(line)["instance_id"] for line in lines] == [1002]
    assert infos["index"]["records"] == infos["tfrecord"]["records"] == 1


def test_a_writers_finished_shards_outlive_its_next_bundle_and_teardown(data, fetch_config,
                                                                      tmp_path):
    """A runner reuses a writer for bundle after bundle (Dataflow does): what a bundle finished
    and handed on is no longer its to discard when the next one starts or the writer is torn
    down (found by mutation review: keeping it among the open groups passed every test, and
    such a run would fail as it names its shards, after all its work)."""
    from synanno_datagen.transforms.write import FinalizeShardFn, WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    out = tmp_path / "out"
    writer = WriteShardsFn(str(out), ("tfrecord",), "instance", "none")
    written = []
    for group in (0, 1):
        writer.start_bundle()
        instance = dataclasses.replace(fetched.instance, instance_id=1000 + group, group=group)
        list(writer.process(Varied(**{**fetched.crop_fields(), "instance": instance},
                                   target_zyx=mask, seed_slices=((1,),))))
        written += [w.value for w in writer.finish_bundle()]
    writer.teardown()
    assert [w.group for w in written] == [0, 1]
    for shard, w in enumerate(written):
        infos = list(FinalizeShardFn(str(out), "none").process((w, shard, 2)))
        (info,) = [i for i in infos if i["kind"] == "tfrecord"]
        assert (out / info["path"]).stat().st_size == w.bytes > 0


def test_the_writer_looks_at_the_lease_between_the_instances_of_a_bundle(data, fetch_config,
                                                                       tmp_path):
    """A bundle that stalls (a stopped process) past the lease's expiry, while another run
    takes the output: at its next instance the writer looks at the lease again (once the
    heartbeat's interval has passed) and stops before writing that instance's files."""
    from synanno_datagen.pipeline.lease import Heartbeat, LeaseLost, acquire
    from synanno_datagen.transforms.write import WriteShardsFn

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    varied = Varied(**fetched.crop_fields(), target_zyx=mask, seed_slices=((1,),))
    out = tmp_path / "out"
    lease = acquire(str(out), hours=1e-9, process_bound=False)   # an interval of microseconds
    writer = WriteShardsFn(str(out), ("tfrecord", "npy"), "instance", "none",
                           Heartbeat(lease, hours=1e-9))
    writer.start_bundle()                                        # the lease is the run's
    (out / "LEASE").unlink()                                     # taken, finished, released
    with pytest.raises(LeaseLost, match="it is gone"):
        list(writer.process(varied))
    assert not (out / "npy").exists() and not (out / "_tmp").exists()


def test_count_run_adds_up_rows_instances_variants_and_failures():
    from synanno_datagen.transforms.counts import count_run
    from synanno_datagen.transforms.records import WrittenShard

    def written(i, variants, filled_target, off_label=0):
        counts = {"instances": 1, "variants": variants, "npy_files": 0, "npy_bytes": 0,
                  "filled_source": 0, "filled_target": filled_target,
                  "centers_off_label": off_label}
        return WrittenShard(i, "train", None, 0, 0, "", f"index{i}", counts)

    with TestPipeline() as p:
        rows = p | "Rows" >> beam.Create([(RowRef(0, i), {}) for i in range(6)])
        selected = p | "Selected" >> beam.Create([instance(i, (1, 2, 3)) for i in (1, 2, 3)])
        done = p | "Written" >> beam.Create([written(1, 2, 1), written(2, 2, 0, 1)])
        dead = p | "Dead" >> beam.Create([
            DeadLetter("empty_target", "", "CleanTargets", 3),
            DeadLetter("not_a_number", "", "ReadTable", 4),
            DeadLetter("duplicate_id", "", "ReadTable", 1),
            DeadLetter("missing_coordinate", "", "ReadTable", None)])
        counts = count_run(rows, selected, done, dead)
        assert_that(counts, equal_to([{
            "rows_read": 6, "rows_rejected": 3, "rows_not_selected": 0,
            "instances_selected": 3, "instances_written": 2, "variants_written": 4,
            "failures": {"duplicate_id": 1, "empty_target": 1, "missing_coordinate": 1,
                         "not_a_number": 1},
            "failed": 4, "vanished_instances": 0, "remembered_failures": {},
            "filled_chunks": {"source": 0, "target": 1}, "centers_off_label": 1}]))


def test_a_shard_group_written_by_two_bundles_fails_loudly():
    """The writer writes a group's file under one temporary name; a group that reached it in two
    bundles would lose the first file's records, so numbering refuses it instead."""
    from synanno_datagen.transforms.records import WrittenShard
    from synanno_datagen.transforms.write import number_shards

    def written(group, split, path):
        return WrittenShard(group, split, path, 1, 10, "", f"index{group}", {"instances": 1})

    numbered = number_shards([written(2, "val", "b"), written(1, "train", "a"),
                              written(3, "train", "c")])
    assert [(w.group, shard, n) for w, shard, n in numbered] == [(1, 0, 2), (3, 1, 2), (2, 0, 1)]
    with pytest.raises(RuntimeError, match="shard group 1 of split train reached the writer "
                                           "twice"):
        number_shards([written(1, "train", "a"), written(1, "train", "a")])


def test_a_shard_group_that_comes_back_after_another_fails_loudly(data, fetch_config, tmp_path):
    """The writer closes a group's file as the next group begins: a group whose instances came
    back after another group's (a runner that did not keep them together) would replace its
    closed file under the same temporary name, so numbering refuses the run instead."""
    from synanno_datagen.transforms.write import WriteShardsFn, number_shards

    fetched = _fetched(data, fetch_config, 11)
    mask = upsample_nearest_zyx((fetched.labels_zyx != 0).astype(np.uint8), SCALE)
    writer = WriteShardsFn(str(tmp_path / "out"), ("tfrecord",), "instance", "none")
    writer.start_bundle()
    given = []
    for i, group in enumerate([0, 1, 0]):
        instance = dataclasses.replace(fetched.instance, instance_id=1000 + i, group=group,
                                       split="train")
        given += writer.process(Varied(**{**fetched.crop_fields(), "instance": instance},
                                       target_zyx=mask, seed_slices=((1,),)))
    given += [w.value for w in writer.finish_bundle()]
    assert [w.group for w in given] == [0, 1, 0]
    with pytest.raises(RuntimeError, match="shard group 0 of split train reached the writer "
                                           "twice"):
        number_shards(given)


def test_finalizing_again_after_a_failure_gives_the_same_files(tmp_path):
    """A runner retries a failed step with the same input: shards an earlier attempt already
    moved to their final names are left as they are, so the retry ends as the first attempt
    would have. A shard that is neither under its temporary nor its final name fails loudly."""
    from synanno_datagen.transforms.records import WrittenShard
    from synanno_datagen.transforms.write import FinalizeShardFn, number_shards

    out = tmp_path / "out"
    (out / "_tmp").mkdir(parents=True)
    written = []
    for group, split in ((1, "train"), (2, "train"), (3, "val")):
        path = out / "_tmp" / f"{split}-group{group:06d}.tfrecord"
        path.write_bytes(bytes([group]) * (10 + group))
        index = out / "_tmp" / f"{split}-group{group:06d}.jsonl"
        index.write_text(json.dumps({"instance_id": group}) + "\n")
        written.append(WrittenShard(group, split, str(path), 1, 10 + group, f"h{group}",
                                    str(index), {"instances": 1}))
    fn = FinalizeShardFn(str(out), "none")

    def finalize():   # one bundle of every shard
        fn.start_bundle()
        return [info for numbered in number_shards(written) for info in fn.process(numbered)]

    first = finalize()
    final = {p.name: p.read_bytes() for p in (out / "tfrecord").iterdir()}
    assert sorted(final) == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                             "val-00000-of-00001.tfrecord"]
    assert finalize() == first          # the retry
    assert {p.name: p.read_bytes() for p in (out / "tfrecord").iterdir()} == final
    (out / "tfrecord" / "val-00000-of-00001.tfrecord").unlink()
    with pytest.raises(Exception, match="val-group000003"):
        finalize()


CALLS = []   # make_fetched calls so far, seen by the stage after the fetch (one process)


def _calls_so_far(_) -> int:
    """Module-level, so Beam pickles it by reference and it reads this process's CALLS."""
    return len(CALLS)


def test_fetched_crops_flow_on_one_at_a_time(data, fetch_config, monkeypatch):
    """A shard group's crops reach the next stage as each is cut, so a worker holds about one
    instance's arrays, not its whole group's (Beam's with_exception_handling held every output
    of an element until the element was done: peak memory grew with --shard-size-mb)."""
    from synanno_datagen.transforms import fetch

    make = fetch.make_fetched

    def counted(*args):
        CALLS.append(1)
        return make(*args)

    monkeypatch.setattr(fetch, "make_fetched", counted)
    CALLS.clear()
    with TestPipeline() as p:
        out = (p | beam.Create([instance(sid) for sid in (11, 12, 14)])
               | fetch.FetchSubvolumes(fetch_config))
        assert_that(out["ok"] | beam.Map(_calls_so_far), equal_to([1, 2, 3]))


def test_an_error_outside_one_instance_dead_letters_only_the_members_not_given_out(
        data, fetch_config, monkeypatch):
    """Crops already given out have gone on (to be written): they must not be dead-lettered
    too, and no member may be lost."""
    import dataclasses

    from synanno_datagen.transforms import fetch

    real = fetch.BlockReader

    def second_fails(*args):
        CALLS.append(1)
        if len(CALLS) == 3:      # per-instance: two readers per member, the 2nd member's source
            raise RuntimeError("storage went away")
        return real(*args)

    monkeypatch.setattr(fetch, "BlockReader", second_fails)
    CALLS.clear()
    config = dataclasses.replace(fetch_config, strategy="per-instance")
    ids = (11, 12, 14)
    with TestPipeline() as p:
        out = (p | beam.Create([instance(sid) for sid in ids]) | fetch.FetchSubvolumes(config))
        assert_that(out["ok"] | beam.Map(lambda f: f.instance.instance_id), equal_to([11]),
                    label="GivenOut")
        assert_that(out[DEAD] | beam.Map(lambda d: (d.instance_id, d.reason,
                                                    "storage went away" in d.details)),
                    equal_to([(12, "fetch_error", True), (14, "fetch_error", True)]),
                    label="TheRest")


def _dead_letters():
    """Dead letters whose sort keys cover the edges: no table row, no id, ids at both ends of
    their range, reasons that prefix one another, equal keys told apart by their lines, shard
    and row numbers of different lengths (found by mutation review: shards 0 to 2 only passed a
    prefix with the shard unpadded)."""
    from synanno_datagen.transforms.records import RowRef

    letters = []
    rng = np.random.default_rng(5)
    for i in range(60):
        ref = None if i % 7 == 0 else RowRef(int(rng.choice([0, 2, 10, 123])),
                                             int(rng.choice([0, 3, 10, 4567])))
        instance_id = [None, 0, 2**64 - 1, 2**63, 17][i % 5]
        reason = ["a", "ab", "outside_volume", "b"][i % 4]
        letters.append(DeadLetter(reason, f"details {i % 3}", "ReadTable", instance_id, ref,
                                  (("x", str(i)),)))
    return letters


def test_the_dead_letter_file_is_merged_from_sorted_runs_in_the_order_of_the_sort_key(tmp_path):
    """Dead letters are written by each worker in sorted runs and merged in one step (no step
    holds them all); the file is what sorting every (sort key, line) in one place gave, also
    when runs are merged in several passes."""
    from synanno_datagen.transforms.dead_letter_file import WriteDeadLetterFile, sortable_line
    from synanno_datagen.layout import json_line

    letters = _dead_letters()
    expected = b"".join(line for _, line in sorted(
        (d.sort_key(), json_line(d.to_json())) for d in letters))
    assert sorted(sortable_line(d) for d in letters) == sorted(
        sortable_line(d) for d in letters)   # total order, as bytes
    assert [line.split(b"\t", 1)[1] for line in sorted(sortable_line(d) for d in letters)] \
        == expected.splitlines(keepends=True)
    for run_lines, fan_in in ((50_000, 128), (3, 2), (1, 3)):
        out = tmp_path / f"out-{run_lines}-{fan_in}"
        with TestPipeline() as p:
            info = (p | beam.Create(letters)
                    | WriteDeadLetterFile(str(out), run_lines=run_lines, fan_in=fan_in))
            assert_that(info | beam.Map(lambda i: (i["records"], i["bytes"])),
                        equal_to([(len(letters), len(expected))]))
        assert (out / "dead_letter.jsonl").read_bytes() == expected


def test_shards_renamed_at_once_into_a_new_folder_all_get_there(tmp_path):
    """Found by review: since shards are named in parallel bundles, two of them could both find
    tfrecord/ missing and both create it; the second failed the run (File exists)."""
    import threading

    from synanno_datagen.transforms.files import move_once

    for trial in range(30):
        out = tmp_path / f"trial{trial}"
        (out / "_tmp").mkdir(parents=True)
        names = [f"s{i}" for i in range(4)]
        for name in names:
            (out / "_tmp" / name).write_bytes(name.encode())
        start, errors = threading.Barrier(len(names)), []

        def move(name):
            start.wait()
            try:
                move_once(str(out / "_tmp" / name), str(out / "tfrecord" / name), 2)
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=move, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(p.name for p in (out / "tfrecord").iterdir()) == names


def test_delete_file_deletes_on_beams_other_filesystems_and_takes_gone_as_done(tmp_path):
    """Found by review: on a filesystem of Beam's other than gs:// (s3://, azfs://) the write
    probe was taken for a local path and never deleted. A filesystem of a scheme of its own
    (Beam's local one under tmp_path) stands in for them."""
    from apache_beam.io.localfilesystem import LocalFileSystem

    from synanno_datagen.transforms.files import delete_file

    root = str(tmp_path)

    class ElsewhereFileSystem(LocalFileSystem):
        @classmethod
        def scheme(cls):
            return "elsewhere"

        def _local(self, path):
            prefix = "elsewhere://"
            return root + "/" + path[len(prefix):] if path.startswith(prefix) else path

        def delete(self, paths):
            return super().delete([self._local(p) for p in paths])

        def exists(self, path):
            return super().exists(self._local(path))

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_write_probe").write_bytes(b"probe")
    delete_file("elsewhere://out/_write_probe")
    assert not (tmp_path / "out" / "_write_probe").exists()
    delete_file("elsewhere://out/_write_probe")   # gone: nothing to do, no error
    assert ElsewhereFileSystem.scheme() == "elsewhere"


def test_renaming_onto_a_local_file_replaces_it_in_one_step(tmp_path):
    """Found by review: rename deleted the destination, then moved the file: a reader of LATEST
    could find no LATEST (and a run killed then left a root without one). A reader looking all
    the while never finds it missing."""
    import threading

    from synanno_datagen.transforms.files import write_atomic

    latest = tmp_path / "LATEST"
    latest.write_text("runs/00001/manifest.json")
    missing, done = [], threading.Event()

    def look():
        while not done.is_set():
            if not latest.exists():
                missing.append(1)

    reader = threading.Thread(target=look)
    reader.start()
    try:
        for n in range(300):
            write_atomic(str(latest), [f"runs/{n:05d}/manifest.json".encode()])
    finally:
        done.set()
        reader.join()
    assert not missing and latest.read_text() == "runs/00299/manifest.json"


def test_counts_from_sums_add_up_rows_without_beam():
    """The manifest's counts from summed pairs, a pure function: table reasons (a changed row's
    included) are rejected rows, the rest of the failures are instances'; rows not selected
    are what is left once remembered failures are taken out."""
    from synanno_datagen.transforms.counts import FAILED, counts_from_sums

    sums = {"rows": 20, "selected": 9, "written": 7, "variants": 14, "vanished": 1,
            FAILED + "outside_volume": 2, FAILED + "changed_since_written": 1,
            FAILED + "empty_target": 2, "filled_target": 3}
    counts = counts_from_sums(sums, {"remembered": {"missing_chunks": 4}})
    assert (counts["rows_rejected"], counts["rows_not_selected"], counts["failed"]) == (3, 4, 5)
    assert counts["rows_read"] == counts["rows_rejected"] + counts["rows_not_selected"] + \
        counts["instances_selected"] + sum(counts["remembered_failures"].values())
    assert counts["failures"] == {"changed_since_written": 1, "empty_target": 2,
                                  "outside_volume": 2}
    assert counts["filled_chunks"] == {"source": 0, "target": 3}
    assert counts["vanished_instances"] == 1 and counts["variants_written"] == 14


# Found by mutation review: each of the mutants these tests name passed every test (guarded
# steps losing their exceptions, the npy bytes of several shards not summed, a file of another
# size at a shard's final name taken for its own earlier move).

class _Boom(beam.DoFn):
    def process(self, crop):
        if crop.instance.instance_id == 8:
            raise ZeroDivisionError("no luck")
        yield crop.instance.instance_id


def test_a_guarded_step_turns_an_exception_into_a_dead_letter_of_its_stage():
    from synanno_datagen.transforms.dead_letters import guarded_pardo

    crops = [dataclasses.make_dataclass("C", ["instance"])(instance(i, (1, 2, 3))) for i in (7, 8)]
    with TestPipeline() as p:
        ok, dead = guarded_pardo(p | beam.Create(crops), "Boom", _Boom(), "unexpected_error",
                                 "MakeVariants")
        assert_that(ok, equal_to([7]), label="Ok")
        assert_that(dead | beam.Map(lambda d: (d.instance_id, d.reason, d.stage)),
                    equal_to([(8, "unexpected_error", "MakeVariants")]), label="Dead")


def test_npy_totals_add_every_shards_files_and_bytes():
    from synanno_datagen.transforms.counts import npy_totals
    from synanno_datagen.transforms.records import WrittenShard

    def shard(group, split, files, nbytes):
        return WrittenShard(group, split, None, 0, 0, "", "index", {
            "instances": 1, "variants": 1, "npy_files": files, "npy_bytes": nbytes,
            "filled_source": 0, "filled_target": 0, "centers_off_label": 0})

    with TestPipeline() as p:
        written = p | beam.Create([shard(0, "train", 4, 1000), shard(1, "train", 4, 3000),
                                   shard(0, "val", 8, 500)])
        assert_that(npy_totals(written), equal_to([{"files": 16, "bytes": 4500}]))


def test_a_file_of_another_size_at_the_final_name_is_not_taken_for_an_earlier_move(tmp_path):
    from synanno_datagen.transforms.files import move_once

    (tmp_path / "final").write_bytes(b"another run's shard")
    with pytest.raises(Exception):
        move_once(str(tmp_path / "gone"), str(tmp_path / "final"), 5)
    assert (tmp_path / "final").read_bytes() == b"another run's shard"


def test_only_a_failure_an_attempt_may_not_repeat_deletes_an_instances_npy_files(tmp_path):
    """An instance dead-lettered for a reason every attempt meets (empty_target, missing chunks)
    was never written by one: its files, and a table row's without an id, are not looked for;
    a fetch_error's or unexpected_error's are deleted where an earlier attempt left them."""
    from synanno_datagen.layout import npy_paths
    from synanno_datagen.transforms.write import DeleteLeftoverNpyFn

    def files_of(instance_id):
        paths = npy_paths(instance_id, 2)
        made = [paths["source"], paths["target"], *paths["seed_target"]]
        for rel in made:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(b"x")
        return made

    fn = DeleteLeftoverNpyFn(str(tmp_path), 2)
    for instance_id, reason in ((1, "empty_target"), (2, "missing_chunks"), (None, "not_a_number")):
        made = files_of(instance_id)
        assert list(fn.process(DeadLetter(reason, "", "stage", instance_id))) == []
        assert all((tmp_path / rel).exists() for rel in made)
    for instance_id, reason in ((3, "fetch_error"), (4, "unexpected_error")):
        made = files_of(instance_id)
        assert list(fn.process(DeadLetter(reason, "", "stage", instance_id))) == made
        assert not any((tmp_path / rel).exists() for rel in made)
    assert list(fn.process(DeadLetter("fetch_error", "", "stage", 5))) == []   # none there
