"""Each Beam stage on its own: TestPipeline + assert_that on small real volumes and tables."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import (BAD_ROWS, CROP, GOOD_IDS, SCALE, SYNAPSES, TARGET_OFFSET,
                            expected_crop_zyx, make_small_data)
from synanno_datagen.transforms.geometry import Box, crop_box, scale_box
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


def instance(sid, center=None, split="train", shard=0, num_shards=1) -> Instance:
    c = center or SYNAPSE_CENTERS[sid]
    return Instance(sid, c, c, c, RowRef(0, sid), split=split, shard=shard, num_shards=num_shards)


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


def test_keep_new_instances_drops_earlier_ids_and_reports_vanished_ones(tmp_path):
    from synanno_datagen.transforms.keep_new import KeepNewInstances

    earlier = tmp_path / "index.jsonl"
    earlier.write_text("".join(json.dumps({"instance_id": i}) + "\n" for i in (11, 12, 99)))
    with TestPipeline() as p:
        out = (p | beam.Create([instance(i) for i in (11, 12, 13)])
               | KeepNewInstances([str(earlier)]))
        assert_that(out["ok"] | beam.Map(lambda i: i.instance_id), equal_to([13]), label="New")
        assert_that(out["vanished"], equal_to([99]), label="Vanished")


def test_select_and_assign_shards_are_pure_functions_of_seed_and_id():
    from synanno_datagen.transforms.select import (AssignShards, SelectInstances,
                                                   assign_split, selection_key, shard_index)

    ids = list(range(100, 140))
    picked = sorted(ids, key=lambda i: selection_key(3, i))[:10]
    splits = (("train", 0.5), ("val", 0.5))
    with TestPipeline() as p:
        chosen = p | beam.Create([instance(i, (1, 2, 3)) for i in ids]) | SelectInstances(3, 10)
        assigned = chosen | AssignShards(3, splits, 100, 250)   # 2-3 instances per shard
        assert_that(assigned["ok"] | beam.Map(lambda i: (i.instance_id, i.split, i.shard)),
                    equal_to([(i, assign_split(3, i, splits),
                               shard_index(assign_split(3, i, splits), i, 2)) for i in picked]),
                    label="Assigned")
        counts = {s: sum(assign_split(3, i, splits) == s for i in picked) for s, _ in splits}
        assert_that(assigned["split_counts"], equal_to([counts]), label="SplitCounts")
        assert_that(assigned["shard_keys"], equal_to(
            [(s, k, -(-counts[s] * 100 // 250)) for s, _ in splits
             for k in range(-(-counts[s] * 100 // 250))]), label="ShardKeys")


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
        ok = (np.array_equal(fetched.source_zyx, want) and np.array_equal(
            fetched.labels_zyx, np.repeat(np.repeat(labels, 2, axis=1), 2, axis=2)))
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


def test_clean_targets_keeps_the_centred_synapse_and_dead_letters_empty_crops(data,
                                                                             fetch_config):
    from synanno_datagen.transforms.clean import CleanTargets

    touching = _fetched(data, fetch_config, 11)       # 12 touches it with another label
    empty = _fetched(data, fetch_config, 11)
    empty = Fetched(**{**empty.crop_fields(), "instance": instance(23, (106, 234, 12))},
                    labels_zyx=np.zeros_like(empty.labels_zyx))
    with TestPipeline() as p:
        out = p | beam.Create([touching, empty]) | CleanTargets((4, 4, 33))
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
    mask = (fetched.labels_zyx == 1).astype(np.uint8)
    cleaned = Cleaned(**fetched.crop_fields(), target_zyx=mask)
    want = tuple(variant_seed_slices(mask, run_seed=5, instance_id=11, n_variants=3,
                                     model=SeedModel()))
    with TestPipeline() as p:
        out = p | beam.Create([cleaned]) | MakeVariants(5, 3, SeedModel())
        assert_that(out["ok"] | beam.Map(lambda v: (type(v).__name__, v.seed_slices)),
                    equal_to([("Varied", want)]))
    assert len(set(want)) == 3 and all(mask[list(s)].any() for s in want)


def test_write_examples_and_finalize_shards_write_sorted_shards_and_index(data, fetch_config,
                                                                         tmp_path):
    from tfrecord.reader import tfrecord_loader

    from synanno_datagen.transforms.write import FinalizeShards, WriteExamples

    varied = []
    for sid in (14, 11):
        fetched = _fetched(data, fetch_config, sid)
        mask = (fetched.labels_zyx != 0).astype(np.uint8)
        varied.append(Varied(**fetched.crop_fields(), target_zyx=mask,
                             seed_slices=((1,), (1, 2))))
    out = tmp_path / "out"
    with TestPipeline() as p:
        written = p | beam.Create(varied) | WriteExamples(str(out), ("tfrecord", "npy"))
        keys = p | "Keys" >> beam.Create([("train", 0, 1)])
        files = written["ok"] | FinalizeShards(str(out), ("tfrecord", "npy"), keys)
        assert_that(files | beam.Map(lambda f: (f["kind"], f["path"], f["records"])),
                    equal_to([("tfrecord", "tfrecord/train-00000-of-00001.tfrecord", 4),
                              ("index", "index/train-00000-of-00001.jsonl", 2)]))
    records = list(tfrecord_loader(str(out / "tfrecord" / "train-00000-of-00001.tfrecord"),
                                   None, {"instance_id": "int", "variant": "int"}))
    assert [(int(r["instance_id"][0]), int(r["variant"][0])) for r in records] == \
        [(11, 0), (11, 1), (14, 0), (14, 1)]
    lines = (out / "index" / "train-00000-of-00001.jsonl").read_text().splitlines()
    assert [json.loads(line)["instance_id"] for line in lines] == [11, 14]
    np.testing.assert_array_equal(np.load(out / "npy" / "gt" / "target_11.npy"),
                                  varied[1].target_zyx)


def test_count_run_adds_up_rows_instances_variants_and_failures():
    from synanno_datagen.transforms.counts import count_run
    from synanno_datagen.transforms.records import WrittenInstance

    def written(i, records, filled_target):
        return (("train", 0, 1), WrittenInstance(i, "train", 0, 1, None, records, 0,
                                                 {"filled_chunks": {"target": filled_target}}))

    with TestPipeline() as p:
        rows = p | "Rows" >> beam.Create([(RowRef(0, i), {}) for i in range(6)])
        selected = p | "Selected" >> beam.Create([instance(i, (1, 2, 3)) for i in (1, 2, 3)])
        done = p | "Written" >> beam.Create([written(1, 2, 1), written(2, 2, 0)])
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
            "filled_chunks": {"source": 0, "target": 1}}]))
