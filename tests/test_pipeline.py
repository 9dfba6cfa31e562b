"""End to end on the DirectRunner: real volumes, the real build(), readers other than ours."""
from __future__ import annotations

import hashlib
import math
import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tfrecord.reader import tfrecord_loader

from synanno_datagen.pipeline.build import build
from synanno_datagen.pipeline.config import parse
from tests.conftest import (BAD_ROWS, CROP, GENERATED_FLAGS, GOOD_IDS, SCALE, TARGET_OFFSET,
                            expected_crop_zyx, make_small_data)
from synanno_datagen.transforms.clean import keep_center_component
from synanno_datagen.transforms.geometry import upsample_nearest_zyx

COMMON = {"source": "byte", "target": "byte", "shape": "int", "seed_slices": "int",
          "instance_id": "int", "source_box_xyz": "int", "target_box_xyz": "int"}
LAYOUTS = {"variant": {**COMMON, "seed_target": "byte", "variant": "int"},
           "instance": {**COMMON, "seed_slice_counts": "int"}}


def run_pipeline(argv):
    config, beam_args = parse(argv)
    with TestPipeline(argv=beam_args, blocking=True) as p:
        build(p, config)
    return config, json.loads((Path(config.output_dir) / "manifest.json").read_text())


def read_records(out: Path):
    """Every sample of a dataset's TFRecord shards, read with the tfrecord package (not our
    decoder): a variant record as it is; an instance record as its variants, each seed mask made
    here from the target and the variant's slices. In shard order, then record order."""
    records = []
    shards = sorted((out / "tfrecord").glob("*.tfrecord*"))
    for shard in shards:
        gz = "gzip" if shard.name.endswith(".gz") else None
        layout = _layout_of(shard, gz)
        for r in tfrecord_loader(str(shard), None, LAYOUTS[layout], compression_type=gz):
            shape = tuple(int(v) for v in r["shape"])
            base = {
                "shard": shard.name, "layout": layout, "instance_id": int(r["instance_id"][0]),
                "source": np.frombuffer(r["source"], np.uint8).reshape(shape),
                "target": np.frombuffer(r["target"], np.uint8).reshape(shape),
                "source_box_xyz": [int(v) for v in r["source_box_xyz"]],
                "target_box_xyz": [int(v) for v in r["target_box_xyz"]],
            }
            if layout == "variant":
                records.append({**base, "variant": int(r["variant"][0]),
                                "seed_slices": tuple(int(v) for v in r["seed_slices"]),
                                "seed_target": np.frombuffer(r["seed_target"],
                                                             np.uint8).reshape(shape)})
                continue
            flat, start = [int(v) for v in r["seed_slices"]], 0
            for variant, count in enumerate(int(c) for c in r["seed_slice_counts"]):
                slices = tuple(flat[start:start + count])
                start += count
                seed = np.zeros_like(base["target"])
                seed[list(slices)] = base["target"][list(slices)]
                records.append({**base, "variant": variant, "seed_slices": slices,
                                "seed_target": seed})
    return records


def _layout_of(shard: Path, compression) -> str:
    """'instance' when the shard's first record has seed_slice_counts, else 'variant'."""
    for r in tfrecord_loader(str(shard), None, None, compression_type=compression):
        return "instance" if "seed_slice_counts" in r else "variant"
    return "variant"


def test_records_hold_exactly_the_crops_in_the_volumes(generated):
    data, out, config, _ = generated
    records = read_records(out)
    assert sorted({r["instance_id"] for r in records}) == GOOD_IDS
    assert len(records) == 3 * len(GOOD_IDS)
    src_offset = tuple(o * s for o, s in zip(TARGET_OFFSET, SCALE))
    for r in records:
        start = r["source_box_xyz"][:3]
        size = [b - a for a, b in zip(start, r["source_box_xyz"][3:])]
        assert r["source"].shape == (4, 24, 24)
        np.testing.assert_array_equal(
            r["source"], expected_crop_zyx(data.source_xyz, src_offset, start, size, 148))
        tstart = r["target_box_xyz"][:3]
        labels = expected_crop_zyx(data.labels_xyz, TARGET_OFFSET, tstart, (12, 12, 4), 0)
        mask = keep_center_component(upsample_nearest_zyx(labels, SCALE), (33, 4, 4))
        np.testing.assert_array_equal(r["target"], mask)
        assert set(np.unique(r["target"])) == {0, 1}
        # Seed mask: the target on the seed slices, zero elsewhere; seeds only on foreground.
        for z in range(4):
            expected = r["target"][z] if z in r["seed_slices"] else 0
            np.testing.assert_array_equal(r["seed_target"][z], expected)
            if z in r["seed_slices"]:
                assert r["target"][z].any()


def test_component_rule_end_to_end(generated):
    data, out, _, _ = generated
    by_id = {r["instance_id"]: r for r in read_records(out) if r["variant"] == 0}
    # 11 and 12 touch but have different labels: each keeps only its own blob.
    a, b = by_id[11]["target"], by_id[12]["target"]
    assert a.sum() == b.sum() == 5 * 5 * 3 * 4      # 5x5x3 target voxels, x4 on the source grid
    # 15's centre voxel is background: the nearest blob (label 1, 6 source voxels away) wins over
    # the distractor (7 away); the crop ends at x 139, so 3 of the blob's 4 x-columns are in it.
    assert by_id[15]["target"].sum() == 3 * 4 * 2 * 4
    # ... and the index and the counts say so: 6 source voxels of 4 nm, the one such instance
    index = [json.loads(line) for f in sorted((out / "index").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert {e["instance_id"]: e["center_distance_nm"] for e in index} == {
        11: 0.0, 12: 0.0, 13: 0.0, 14: 0.0, 15: 24.0}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["centers_off_label"] == 1
    # 13 sits in the low corner: the source is padded with 148 outside the volume.
    src = by_id[13]["source"]
    assert (src[:2] == 148).all() and (src[:, :10, :] == 148).all()


def test_tfrecords_pass_beams_crc_checking_reader(generated):
    _, out, _, _ = generated
    pattern = str(out / "tfrecord" / "*.tfrecord")
    with TestPipeline() as p:
        count = (p | beam.io.ReadFromTFRecord(pattern)
                 | beam.combiners.Count.Globally())
        assert_that(count, equal_to([len(GOOD_IDS)]))     # instance layout: a record each


def test_npy_files_match_the_records_and_load_without_pickle(generated):
    _, out, _, _ = generated
    for r in read_records(out):
        iid, v = r["instance_id"], r["variant"]
        src = np.load(out / "npy" / "source" / f"source_{iid}.npy", allow_pickle=False)
        tgt = np.load(out / "npy" / "gt" / f"target_{iid}.npy", allow_pickle=False)
        seed = np.load(out / "npy" / "target" / f"augmented_target_{iid}_{v}.npy",
                       allow_pickle=False)
        assert src.dtype == tgt.dtype == seed.dtype == np.uint8
        np.testing.assert_array_equal(src, r["source"])
        np.testing.assert_array_equal(tgt, r["target"])
        np.testing.assert_array_equal(seed, r["seed_target"])


def test_shards_are_spatial_sorted_and_an_instance_stays_in_one_shard_and_split(generated):
    """Records in a shard come by work block (z, y, x order), then instance id and variant; a
    split holds whole blocks (--split-by block) and a shard whole blocks of one split."""
    from synanno_datagen.transforms.shards import block_key, block_order

    _, out, config, manifest = generated
    records = read_records(out)
    block = {r["instance_id"]: block_key(
        [a + s // 2 for a, s in zip(r["target_box_xyz"][:3], CROP)], TARGET_OFFSET,
        config.block_size_xyz or (8, 8, 4)) for r in records}
    shards = {}
    for r in records:
        shards.setdefault(r["shard"], []).append(
            (block_order(block[r["instance_id"]]), r["instance_id"], r["variant"]))
    for keys in shards.values():
        assert keys == sorted(keys)
    split_of_block = {}
    for r in records:
        split = r["shard"].split("-")[0]
        assert split_of_block.setdefault(block[r["instance_id"]], split) == split
    homes = {}
    for r in records:
        homes.setdefault(r["instance_id"], set()).add(r["shard"])
    assert all(len(h) == 1 for h in homes.values())
    names = sorted(p.name for p in (out / "tfrecord").iterdir())
    total = {s: m["shards"] for s, m in manifest["splits"].items()}
    assert all(n > 0 for n in total.values())
    assert names == sorted(f"{s}-{i:05d}-of-{n:05d}.tfrecord"
                           for s, n in total.items() for i in range(n))
    assert sum(total.values()) > 2   # a small --shard-size-mb forces several shards


def test_bad_rows_are_dead_lettered_and_counted(generated):
    _, out, _, manifest = generated
    letters = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    got = sorted((d["instance_id"], d["reason"]) for d in letters)
    assert got == sorted((sid, reason) for sid, (_, reason) in BAD_ROWS.items())
    assert all(d["row"]["id"] == str(d["instance_id"]) for d in letters)
    counts = manifest["counts"]
    assert counts["rows_read"] == len(GOOD_IDS) + len(BAD_ROWS)
    assert counts["failures"] == {"duplicate_id": 1, "empty_target": 1, "missing_coordinate": 1,
                                  "not_a_number": 1, "outside_volume": 1}
    assert counts["instances_selected"] == len(GOOD_IDS) + 1     # + the empty one
    assert counts["instances_written"] == len(GOOD_IDS)
    assert counts["variants_written"] == 3 * len(GOOD_IDS)
    assert counts["rows_read"] == (counts["rows_rejected"] + counts["rows_not_selected"]
                                   + counts["instances_selected"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_exactly_the_files_on_disk(generated):
    _, out, config, manifest = generated
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    listed = {"manifest.json", manifest["files"]["dead_letter"]["path"]}
    entries = manifest["files"]["tfrecord"] + manifest["files"]["index"] + [
        manifest["files"]["dead_letter"]]
    for entry in entries:
        listed.add(entry["path"])
        assert (out / entry["path"]).stat().st_size == entry["bytes"]
        assert _sha(out / entry["path"]) == entry["sha256"]
    npy = []
    for entry in manifest["files"]["index"]:
        for line in (out / entry["path"]).read_text().splitlines():
            npy += json.loads(line)["npy"]["files"]
    for f in npy:
        listed.add(f["path"])
        assert _sha(out / f["path"]) == f["sha256"] and (out / f["path"]).stat().st_size == f["bytes"]
    assert on_disk == listed
    assert manifest["npy"]["files"] == len(npy) == len(GOOD_IDS) * (2 + 3)
    for shard in manifest["files"]["tfrecord"]:
        assert shard["records"] == shard["instances"]          # instance layout
    for name, split in manifest["splits"].items():   # as on disk (found by a mutation review:
        index = list((out / "index").glob(f"{name}-*.jsonl"))   # bytes of the index shards
        shards = list((out / "tfrecord").glob(f"{name}-*.tfrecord"))   # passed every test)
        assert (split["instances"], split["shards"], split["bytes"]) == (
            sum(len(p.read_text().splitlines()) for p in index), len(index),
            sum(p.stat().st_size for p in shards))


def test_manifest_describes_volumes_features_and_seed_model(generated):
    _, _, _, manifest = generated
    assert manifest["volumes"]["source"]["resolution_nm_xyz"] == [4, 4, 33]
    assert manifest["volumes"]["target"]["voxel_offset_xyz"] == list(TARGET_OFFSET)
    assert manifest["volumes"]["scale_xyz"] == [2, 2, 1]
    arrays = manifest["arrays"]   # the source grid, axes z, y, x (found by a mutation review)
    assert (arrays["axes"], arrays["shape_zyx"], arrays["resolution_nm_zyx"]) == (
        "zyx", [4, 24, 24], [33, 4, 4])
    features = {f["name"]: f for f in manifest["features"]}
    assert len(features) == len(manifest["features"])   # each once (found by mutation review)
    for key in ("source", "target", "shape", "seed_slices", "seed_slice_counts", "instance_id"):
        assert key in features
    assert "seed_target" not in features and "variant" not in features
    assert manifest["records"]["layout"] == "instance" and manifest["records"]["written"] is True
    assert manifest["seed_model"]["in_records"] == "seed_slices and seed_slice_counts"
    assert features["source"]["shape"] == [4, 24, 24] and features["source"]["axes"] == "zyx"
    assert manifest["seed_model"]["max_seed_slices"] == 3
    assert manifest["config"]["variants"] == 3 and manifest["generator"]["name"] == "synanno-datagen"


def test_the_manifest_lists_shards_by_split_then_shard_whatever_order_they_come_in(generated):
    """The step gets the written files in no set order (a side input): the listing is sorted,
    so identical runs write identical manifests (found by a mutation review: sorting by shard
    alone, splits interleaved in arrival order, passed every test)."""
    from synanno_datagen.pipeline.manifest import build_manifest

    _, _, config, manifest = generated
    files = [{**f, "kind": kind} for kind in ("tfrecord", "index")
             for f in manifest["files"][kind]]
    assert {f["split"] for f in files} == {"train", "val"} and len(files) > 4
    for arrival in (files[::-1], files[1::2] + files[::2]):
        rebuilt = build_manifest(config, manifest["counts"], arrival,
                                 manifest["files"]["dead_letter"], {})
        assert rebuilt["files"] == manifest["files"]
        assert rebuilt["splits"] == manifest["splits"]


def _dataset_bytes(out: Path):
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != "manifest.json"}


def test_other_seed_other_slices(generated, tmp_path):
    """(The same seed gives the same bytes: tests/test_golden.py.)"""
    data, out, _, _ = generated
    other = tmp_path / "other"
    run_pipeline(data.argv(other, *GENERATED_FLAGS, "--seed", "1"))
    slices = {(r["instance_id"], r["variant"]): r["seed_slices"] for r in read_records(out)}
    other_slices = {(r["instance_id"], r["variant"]): r["seed_slices"]
                    for r in read_records(other)}
    assert slices.keys() == other_slices.keys() and slices != other_slices


def test_num_instances_picks_by_the_selection_key_with_npy_only(small_data, tmp_path):
    from synanno_datagen.transforms.select import selection_key

    _, m1 = run_pipeline(small_data.argv(tmp_path / "a", "--num-instances", "3",
                                         "--formats", "npy"))
    assert m1["counts"]["instances_selected"] == 3
    assert not (tmp_path / "a" / "tfrecord").exists()
    assert m1["features"] == [] and m1["records"]["written"] is False    # no keys written
    picked = sorted(GOOD_IDS + [23], key=lambda i: selection_key(0, i))[:3]
    assert sorted(os.listdir(tmp_path / "a" / "npy" / "gt")) == sorted(
        f"target_{i}.npy" for i in picked if i != 23)


@pytest.mark.parametrize("seed, picked", [(1, [11, 13, 14]), (3, [12, 13, 14])])
def test_num_instances_picks_the_smallest_keys_and_only_reports_repeats_of_picked_ids(
        small_data, tmp_path, seed, picked):
    """Id 11 appears twice in the table: its repeat is a duplicate_id only when 11 is picked."""
    from synanno_datagen.transforms.select import selection_key

    valid = GOOD_IDS + [23]
    assert sorted(valid, key=lambda i: selection_key(seed, i))[:3] == sorted(
        picked, key=lambda i: selection_key(seed, i))
    _, manifest = run_pipeline(small_data.argv(tmp_path / "out", "--num-instances", "3",
                                               "--seed", str(seed), "--variants", "1"))
    assert sorted({r["instance_id"] for r in read_records(tmp_path / "out")}) == picked
    letters = [json.loads(line)
               for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    reasons = sorted(d["reason"] for d in letters)
    expected = ["missing_coordinate", "not_a_number", "outside_volume"]
    assert reasons == sorted(expected + (["duplicate_id"] if 11 in picked else []))
    counts = manifest["counts"]
    assert counts["rows_read"] == len(GOOD_IDS) + len(BAD_ROWS)
    assert counts["instances_selected"] == 3
    assert counts["rows_not_selected"] == counts["rows_read"] - counts["rows_rejected"] - 3
    assert counts["rows_not_selected"] == (3 if 11 in picked else 4)


def test_sharded_table_without_id_column_numbers_rows_across_shards(generated, tmp_path):
    small_data = generated[0]
    lines = Path(small_data.table_path).read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "id"]
    strip = [",".join(line.split(",")[i] for i in keep) for line in lines]
    shards = tmp_path / "table"
    shards.mkdir()
    # Good rows 0..4 (synapses 11..15) split over two shards; names sort b before c.
    (shards / "export_b.csv").write_text("\n".join(strip[0:3]) + "\n")     # rows 0, 1
    (shards / "export_c.csv").write_text("\n".join([strip[0]] + strip[3:6]) + "\n")  # 2, 3, 4
    argv = small_data.argv(tmp_path / "out", "--variants", "1")
    argv[argv.index("--materialization") + 1] = str(shards / "export_*.csv")
    _, manifest = run_pipeline(argv)
    assert manifest["config"]["id_column"] is None
    ids = sorted(r["instance_id"] for r in read_records(tmp_path / "out"))
    assert ids == [0, 1, 2, 3, 4]
    by_id = {r["instance_id"]: r for r in read_records(tmp_path / "out")}
    reference = {r["instance_id"]: r for r in read_records(generated[1])}   # same volumes
    for row_number, synapse_id in enumerate(GOOD_IDS):
        np.testing.assert_array_equal(by_id[row_number]["target"], reference[synapse_id]["target"])
    # --num-instances picks among row numbers; its second pass parses only the picked rows.
    from synanno_datagen.transforms.select import selection_key

    argv = small_data.argv(tmp_path / "some", "--variants", "1", "--num-instances", "2")
    argv[argv.index("--materialization") + 1] = str(shards / "export_*.csv")
    run_pipeline(argv)
    some = {r["instance_id"]: r for r in read_records(tmp_path / "some")}
    assert sorted(some) == sorted(sorted(range(5), key=lambda i: selection_key(0, i))[:2])
    for row_number, record in some.items():
        np.testing.assert_array_equal(record["target"], by_id[row_number]["target"])


def test_two_worker_processes_write_the_same_bytes(generated, tmp_path):
    data, one, _, _ = generated
    run_pipeline(data.argv(tmp_path / "two", *GENERATED_FLAGS, "--direct_num_workers", "2",
                           "--direct_running_mode", "multi_processing"))
    assert _dataset_bytes(one) == _dataset_bytes(tmp_path / "two")


def test_worker_threads_reading_at_once_write_the_same_bytes(generated, tmp_path):
    """Threads of one process read at once (transforms.readers); records, index and counts
    stay those of a one-thread run, and the read figures add up to the same totals."""
    data, one, _, manifest = generated
    _, threaded = run_pipeline(data.argv(
        tmp_path / "threads", *GENERATED_FLAGS, "--direct_num_workers", "3",
        "--direct_running_mode", "multi_threading"))
    assert _dataset_bytes(one) == _dataset_bytes(tmp_path / "threads")
    assert threaded["counts"] == manifest["counts"]
    io = threaded["run"]["io"]
    assert sum(io[v]["chunks_loaded"] for v in io) >= sum(io[v]["distinct_chunks"]
                                                         for v in io) > 0


@pytest.fixture(scope="module")
def mip1_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mip1")
    data = make_small_data(root / "data")
    config, manifest = run_pipeline(data.argv(root / "out", "--source-mip", "1",
                                              "--variants", "1"))
    return data, root / "out", config, manifest


def test_source_mip_reads_the_matching_lower_resolution(mip1_run):
    from cloudvolume import CloudVolume

    small_data, out, config, manifest = mip1_run
    assert config.scale_xyz == (1, 1, 1)
    assert manifest["volumes"]["source"]["resolution_nm_xyz"] == [8, 8, 33]
    low = np.asarray(CloudVolume(small_data.source_url, mip=1)[:, :, :])[..., 0]
    for r in read_records(out):
        assert r["source"].shape == (4, 12, 12)
        start = r["source_box_xyz"][:3]
        np.testing.assert_array_equal(
            r["source"], expected_crop_zyx(low, TARGET_OFFSET, start, (12, 12, 4), 148))


def test_source_mip_nearest_picks_the_target_resolution_and_writes_the_same_bytes(mip1_run,
                                                                                 tmp_path):
    small_data, one, _, _ = mip1_run
    config, manifest = run_pipeline(small_data.argv(tmp_path / "nearest", "--source-mip",
                                                    "nearest", "--variants", "1"))
    assert config.source.mip == 1 and manifest["config"]["source_mip"] == 1
    assert _dataset_bytes(one) == _dataset_bytes(tmp_path / "nearest")


def test_a_missing_chunk_is_dead_lettered_not_zeros(small_data, tmp_path):
    chunk = Path(small_data.source_url[len("file://"):]) / "4_4_33" / "232-264_432-464_14-18"
    chunk.unlink()  # touched by the crops of synapses 11 and 12 only
    _, manifest = run_pipeline(small_data.argv(tmp_path / "out", "--variants", "1"))
    letters = [json.loads(line)
               for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    missing = sorted(d["instance_id"] for d in letters if d["reason"] == "missing_chunks")
    assert missing == [11, 12]
    assert all(d["stage"] == "FetchSubvolumes" and "232-264_432-464_14-18" in d["details"]
               for d in letters if d["reason"] == "missing_chunks")
    assert manifest["counts"]["failures"]["missing_chunks"] == 2
    assert sorted(r["instance_id"] for r in read_records(tmp_path / "out")) == [13, 14, 15]


@pytest.mark.parametrize("strategy", ["per-instance", "grouped"])
def test_a_corrupt_chunk_is_a_fetch_error_for_the_instances_that_touch_it(small_data, tmp_path,
                                                                          strategy):
    chunk = Path(small_data.source_url[len("file://"):]) / "4_4_33" / "232-264_432-464_14-18"
    chunk.write_bytes(b"\x1f\x8b this is not gzip data")  # a permanent decode error, not retried
    _, manifest = run_pipeline(small_data.argv(tmp_path / "out", "--variants", "1",
                                               "--fetch-strategy", strategy))
    letters = [json.loads(line)
               for line in (tmp_path / "out" / "dead_letter.jsonl").read_text().splitlines()]
    errors = [d for d in letters if d["reason"] == "fetch_error"]
    assert sorted(d["instance_id"] for d in errors) == [11, 12]
    assert all(d["stage"] == "FetchSubvolumes" and d["details"] for d in errors)
    assert manifest["counts"]["failures"]["fetch_error"] == 2
    assert sorted(r["instance_id"] for r in read_records(tmp_path / "out")) == [13, 14, 15]


def test_an_unexpected_exception_in_a_dofn_becomes_a_dead_letter_with_its_type_and_message():
    from synanno_datagen.transforms.dead_letters import failure_to_dead_letters
    from synanno_datagen.transforms.records import Instance, RowRef

    def explode(instance):
        raise ZeroDivisionError(f"no luck for {instance.instance_id}")

    with TestPipeline() as p:
        instances = p | beam.Create([Instance(i, (1, 2, 3), (1, 2, 3), (1, 2, 3), RowRef(0, i))
                                     for i in (7, 8)])
        bad = (instances | beam.Map(explode).with_exception_handling(use_subprocess=False)).bad
        letters = (bad | beam.FlatMap(failure_to_dead_letters, "unexpected_error", "Explode",
                                          lambda instance: [instance])
                   | beam.Map(lambda d: (d.instance_id, d.reason, d.stage, d.details)))
        assert_that(letters, equal_to([
            (7, "unexpected_error", "Explode", "ZeroDivisionError: no luck for 7"),
            (8, "unexpected_error", "Explode", "ZeroDivisionError: no luck for 8"),
        ]))


def test_grouped_and_per_instance_fetching_write_identical_bytes(generated, tmp_path):
    data, grouped, _, _ = generated
    _, manifest = run_pipeline(data.argv(tmp_path / "other", *GENERATED_FLAGS,
                                         "--fetch-strategy", "per-instance"))
    assert manifest["config"]["fetch_strategy"] == "per-instance"
    assert _dataset_bytes(grouped) == _dataset_bytes(tmp_path / "other")


def test_other_blocks_make_other_shards_of_the_same_records(generated, tmp_path):
    """2x2x1 blocks: crops 11 and 12 overlap and cross block borders; with instance splits the
    same records as with 8x8x4 blocks, wherever the shards put them."""
    from tests.test_golden import record_digests

    data, grouped, _, _ = generated
    flags = [f for f in GENERATED_FLAGS]
    at = flags.index("--block-size")
    flags[at + 1:at + 4] = ["2", "2", "1"]
    run_pipeline(data.argv(tmp_path / "a", *flags, "--split-by", "instance"))
    run_pipeline(data.argv(tmp_path / "b", *GENERATED_FLAGS, "--split-by", "instance"))
    assert record_digests(tmp_path / "a") == record_digests(tmp_path / "b")


def test_default_block_is_whole_chunks_of_both_volumes_within_the_memory_budget():
    from synanno_datagen.transforms.volumes import default_block_size
    from synanno_datagen.transforms.volumes import VolumeSpec

    def spec(chunk, dtype):
        return VolumeSpec("file:///v", 0, (8, 8, 33), (0, 0, 0), (10**5, 10**5, 10**4), chunk,
                          dtype, "raw", "image", 1)

    target, source = spec((128, 128, 32), "uint64"), spec((128, 128, 16), "uint8")
    block = default_block_size(target, source, (2, 2, 1), (128, 128, 16), 1 << 30)
    assert block == (256, 256, 32)      # multiples of 128 (target) and 64 (source/2); 2x crop
    small = default_block_size(target, source, (2, 2, 1), (128, 128, 16), 16 << 20)
    assert math.prod(small) * 12 <= (16 << 20) // 4 and small[2] == 32


def _disk_chunks_touched(volume_dir: Path, boxes):
    """Independent count: chunk files on disk whose span overlaps any of the boxes."""
    touched = set()
    for path in (p for p in volume_dir.iterdir() if p.is_file()):
        spans = [tuple(map(int, s.split("-"))) for s in path.name.split(".")[0].split("_")]
        for start, stop in boxes:
            if all(a < hi and lo < b for (lo, hi), a, b in zip(spans, start, stop)):
                touched.add(path.name)
    return touched


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
@pytest.mark.parametrize("strategy", ["per-instance", "grouped"])
def test_read_counters_count_reads_and_distinct_chunks(small_data, tmp_path, strategy, engine):
    """tensorstore's own metrics (storage reads and bytes, chunks loaded), or cloud-volume's
    decodes, against an independent count of the chunk files the crops overlap."""
    from apache_beam.metrics.metric import MetricsFilter

    config, beam_args = parse(small_data.argv(tmp_path / "out", "--variants", "1",
                                              "--fetch-strategy", strategy,
                                              "--volume-reader", engine))
    with TestPipeline(argv=beam_args) as p:
        build(p, config)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    io = manifest["run"]["io"]
    # Every fetched instance: the 5 written and the empty one (23).
    entries = [json.loads(line) for f in manifest["files"]["index"]
               for line in (tmp_path / "out" / f["path"]).read_text().splitlines()]
    boxes = [e["source_box_xyz"] for e in entries]
    c = (106, 234, 12)   # instance 23's centre; its crop is 12 x 12 x 4 target voxels
    boxes.append([[2 * (c[0] - 6), 2 * (c[1] - 6), c[2] - 2],
                  [2 * (c[0] + 6), 2 * (c[1] + 6), c[2] + 2]])
    source_dir = Path(small_data.source_url[len("file://"):]) / "4_4_33"
    per_box = [_disk_chunks_touched(source_dir, [b]) for b in boxes]
    distinct = set().union(*per_box)
    assert io["source"]["distinct_chunks"] == len(distinct)
    # and the target's, of the target boxes (found by mutation review: counted over the source
    # boxes, it passed); the fixture's label volume stores every chunk
    target_boxes = [e["target_box_xyz"] for e in entries] + [
        [[c[0] - 6, c[1] - 6, c[2] - 2], [c[0] + 6, c[1] + 6, c[2] + 2]]]
    target_dir = Path(small_data.target_url[len("file://"):]) / "8_8_33"
    assert io["target"]["distinct_chunks"] == len(_disk_chunks_touched(target_dir, target_boxes))
    # per-instance reads every crop's chunks; grouped reads every shared chunk once.
    read = [n for t in per_box for n in t] if strategy == "per-instance" else sorted(distinct)
    assert strategy == "grouped" or len(read) > len(distinct)   # the fixture shares chunks
    if engine == "tensorstore":
        figures = {"chunks_loaded": len(read), "storage_reads": len(read),
                   "storage_bytes": sum((source_dir / n).stat().st_size for n in read)}
        ratio = "loads_per_distinct_chunk"
    else:
        figures = {"chunks_decoded": len(read), "decoded_bytes": sum(_voxels(n) for n in read)}
        ratio = "decodes_per_distinct_chunk"
    assert {k: io["source"][k] for k in figures} == figures
    assert io["source"][ratio] == round(len(read) / len(distinct), 4)
    counters = {r.key.metric.name: r.committed
                for r in p.result.metrics().query(MetricsFilter())["counters"]}
    for volume in ("source", "target"):
        for figure in figures:
            assert counters[f"{volume}_{figure}"] == io[volume][figure]


def _voxels(chunk_file: str) -> int:
    spans = [tuple(map(int, s.split("-"))) for s in chunk_file.split(".")[0].split("_")]
    return math.prod(b - a for a, b in spans)


def test_a_run_that_writes_no_instance_writes_no_shard(small_data, tmp_path):
    """Every selected instance fails (23 has an empty target): no TFRecord or index shard, a
    manifest listing none, the failures counted."""
    lines = Path(small_data.table_path).read_text().splitlines()
    header = lines[0].split(",")
    empty = [line for line in lines[1:] if line.split(",")[header.index("id")] == "23"]
    table = tmp_path / "failing.csv"
    table.write_text("\n".join([lines[0]] + empty) + "\n")
    argv = small_data.argv(tmp_path / "out", "--variants", "2")
    argv[argv.index("--materialization") + 1] = str(table)
    _, manifest = run_pipeline(argv)
    assert manifest["counts"]["failures"] == {"empty_target": 1}
    assert manifest["files"]["tfrecord"] == manifest["files"]["index"] == []
    assert not list((tmp_path / "out").glob("tfrecord/*")) and \
        not list((tmp_path / "out").glob("index/*"))


def test_a_dead_letters_details_are_the_exceptions_type_and_message_cut_to_a_limit():
    from synanno_datagen.transforms.records import DETAILS_LIMIT, exception_text

    assert exception_text(ValueError, repr(ValueError("bad 'x'"))) == "ValueError: bad 'x'"
    long = exception_text(OSError, repr(OSError("y" * 5000)))
    assert long == ("OSError: " + "y" * 5000)[:DETAILS_LIMIT] and DETAILS_LIMIT == 2000
    # cloud-volume colours its errors for a terminal; dead letters hold the text alone
    coloured = repr(OSError("\x1b[1;91mNo info file was found: file:///v/info\x1b[m"))
    assert exception_text(OSError, coloured) == "OSError: No info file was found: file:///v/info"


def test_an_instance_whose_records_cannot_be_made_is_a_dead_letter_of_the_writer(
        small_data, tmp_path, monkeypatch):
    """Found by mutation review: the writer's dead letters left out of the run's (the instance
    in no shard, no dead letter, no count) passed every test."""
    import synanno_datagen.transforms.write as write

    made, bad = write.index_entry, GOOD_IDS[0]

    def index_entry(varied):
        if varied.instance.instance_id == bad:
            raise ValueError("cannot index")
        return made(varied)

    monkeypatch.setattr(write, "index_entry", index_entry)
    out = tmp_path / "out"
    _, manifest = run_pipeline(small_data.argv(out, "--variants", "1"))
    letters = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    assert [(d["instance_id"], d["reason"]) for d in letters if d["stage"] == "WriteShards"] == \
        [(bad, "unexpected_error")]
    assert manifest["counts"]["failures"]["unexpected_error"] == 1
    indexed = [json.loads(line)["instance_id"] for p in (out / "index").iterdir()
               for line in p.read_text().splitlines()]
    assert bad not in indexed and len(indexed) == manifest["counts"]["instances_written"] > 0


def test_leftover_npy_files_are_deleted_after_every_write_and_before_the_manifest(
        small_data, tmp_path, monkeypatch):
    """Found by mutation review: the DirectRunner ran the deletions before the manifest and
    after the writes without being told to, so dropping either wait passed every test. In the
    graph, the deleting step waits on the written shards, the manifest on the deleting step,
    and it looks at the run's lease before it deletes (it is given the heartbeat)."""
    import dataclasses

    from apache_beam.portability.api import beam_runner_api_pb2

    from synanno_datagen.pipeline import build as build_module
    from synanno_datagen.pipeline.lease import acquire

    out = tmp_path / "out"
    config, _ = parse(small_data.argv(out, "--variants", "2"))
    config = dataclasses.replace(config, lease=acquire(str(out), hours=2, process_bound=False))
    made = []

    class Recorded(build_module.DeleteLeftoverNpyFn):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(build_module, "DeleteLeftoverNpyFn", Recorded)
    p = beam.Pipeline()
    build_module.build(p, config)
    [fn] = made
    assert fn._keepalive is not None and fn._variants == 2
    transforms = p.to_runner_api().components.transforms
    producers = {}   # a PCollection's producing transform and the composites around it
    for t in transforms.values():
        for pc in t.outputs.values():
            producers.setdefault(pc, set()).add(t.unique_name.split("/")[0])

    def side_inputs_of(name):
        [t] = [t for t in transforms.values()
               if t.unique_name == name and t.spec.urn == "beam:transform:pardo:v1"]
        pardo = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        return set().union(*(producers[t.inputs[tag]] for tag in pardo.side_inputs))

    def inputs_of(name):
        return set().union(*(producers[pc] for t in transforms.values()
                             if t.unique_name.split("/")[0] == name for pc in t.inputs.values()))

    # the written shards' npy totals (one element on every worker, not a list of every shard)
    assert side_inputs_of("DeleteLeftoverNpy") == {"NpyDict"}
    assert "WriteShards" in inputs_of("NpyFiles") and "NpyFiles" in inputs_of("NpyTotals")
    assert "CountLeftoverNpy" in side_inputs_of("WriteManifest")
