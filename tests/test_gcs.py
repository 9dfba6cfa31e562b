"""gs:// end to end against a real GCS emulator process (fake-gcs-server on loopback)."""
from __future__ import annotations

import hashlib
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from synanno_datagen.cli import main
from synanno_datagen.pipeline.demo_data import write_precomputed
from tests.conftest import GOOD_IDS, SCALE, TARGET_OFFSET, make_small_data, torch_or_skip


def _upload_small_data(data, bucket: str):
    """The same volumes and table, written to gs:// (gzip-encoded chunks, as in H01)."""
    target = write_precomputed(f"{bucket}/target", data.labels_xyz, resolution_nm_xyz=(8, 8, 33),
                               voxel_offset_xyz=TARGET_OFFSET, chunk_size_xyz=(16, 16, 4),
                               encoding="compressed_segmentation", layer_type="segmentation",
                               gzip=True)
    source = write_precomputed(f"{bucket}/source", data.source_xyz, resolution_nm_xyz=(4, 4, 33),
                               voxel_offset_xyz=tuple(o * f for o, f in zip(TARGET_OFFSET, SCALE)),
                               chunk_size_xyz=(32, 32, 4), layer_type="image", downsample_mips=1,
                               gzip=True)
    table = f"{bucket}/tables/synapses-000.csv"
    with open(data.table_path, "rb") as f, FileSystems.create(table) as out:
        out.write(f.read())
    return source, target, f"{bucket}/tables/synapses-*.csv"


def test_gzip_chunks_read_back_exactly_from_the_emulator(gcs, tmp_path):
    from cloudvolume import CloudVolume

    bucket = gcs.create_bucket("gzip-read")
    data = make_small_data(tmp_path / "data")
    source, target, _ = _upload_small_data(data, bucket)
    names = [n for n in gcs.objects("gzip-read", "source") if n.startswith("4_4_33/")]
    assert names and all(n.endswith(".gz") is False for n in names)  # stored under plain names
    blob = gcs.client().bucket("gzip-read").get_blob("source/" + names[0])
    assert blob.content_encoding == "gzip"
    np.testing.assert_array_equal(np.asarray(CloudVolume(target)[:, :, :])[..., 0],
                                  data.labels_xyz)
    np.testing.assert_array_equal(np.asarray(CloudVolume(source)[:, :, :])[..., 0],
                                  data.source_xyz)


@pytest.fixture(scope="module")
def gs_and_local(gcs, tmp_path_factory):
    """The same run on gs:// (table, volumes, output) and on local paths: (bucket name, remote
    output, local output)."""
    tmp_path = tmp_path_factory.mktemp("gs-and-local")
    bucket = gcs.create_bucket("e2e")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    flags = ["--variants", "2", "--shard-size-mb", "0.01", "--splits", "train=0.6,val=0.4",
             "--block-size", "8", "8", "4"]    # several shards in both splits
    local = tmp_path / "local"
    assert main(["run"] + data.argv(local, *flags)) == 0
    remote = f"{bucket}/out"
    assert main(["run", "--materialization", table, "--source-url", source, "--target-url",
                 target, "--output-dir", remote, "--crop-size", "12", "12", "4"] + flags) == 0
    return "e2e", remote, local


def test_gs_run_equals_local_run_byte_for_byte(gcs, gs_and_local):
    bucket, remote, local = gs_and_local
    got = gcs.objects(bucket, "out")
    want = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert set(got) == set(want)
    for name in want:
        if name != "manifest.json":
            assert got[name] == want[name], name
    m_local, m_remote = json.loads(want["manifest.json"]), json.loads(got["manifest.json"])
    for m in (m_local, m_remote):
        m.pop("run")
        m.pop("config")
        for volume in ("source", "target"):
            m["volumes"][volume].pop("url")
    assert m_local == m_remote
    assert json.loads(got["manifest.json"])["config"]["output_dir"] == remote


def test_training_loaders_stream_a_gs_dataset(gs_and_local):
    """ShardDataset and NpyDataset read gs:// as they read local paths: the same samples."""
    torch_or_skip()
    from synanno_datagen import NpyDataset, ShardDataset

    _, remote, local = gs_and_local
    for split in ("train", "val"):
        for make in (ShardDataset, NpyDataset):
            got = [tuple(t.numpy().tobytes() for t in pair[:2]) + (pair[2],)
                   for pair in make(remote, split, with_meta=True)]
            want = [tuple(t.numpy().tobytes() for t in pair[:2]) + (pair[2],)
                    for pair in make(str(local), split, with_meta=True)]
            assert got == want and len(got) > 0, (make.__name__, split)


def test_tf_dataset_refuses_a_gs_dataset_behind_the_emulator(gs_and_local):
    """TensorFlow's GCS client ignores STORAGE_EMULATOR_HOST: it would check the emulator's
    files and read Google's (found by review). Refused in one line, before TensorFlow loads."""
    from synanno_datagen import DatasetError, tf_dataset

    _, remote, _ = gs_and_local
    with pytest.raises(DatasetError, match=r"^gs://.*: tf_dataset reads gs:// through "
                                           r"TensorFlow's GCS client, which ignores "
                                           r"STORAGE_EMULATOR_HOST"):
        tf_dataset(remote, "train")


def test_sharded_volumes_written_by_tensorstore_to_gs_read_like_local_ones(gcs, tmp_path):
    """H01's layout on a bucket: sharded JPEG raw and sharded labels with absent empty chunks,
    written by tensorstore through the emulator, read anonymously by either engine."""
    from synanno_datagen.pipeline.demo_data import write_precomputed as write

    bucket = gcs.create_bucket("sharded")
    data = make_small_data(tmp_path / "data", "jpeg", "sharded")
    common = {"writer": "tensorstore", "sharded": True}
    target = write(f"{bucket}/target", data.labels_xyz, resolution_nm_xyz=(8, 8, 33),
                   voxel_offset_xyz=TARGET_OFFSET, chunk_size_xyz=(16, 16, 4),
                   encoding="compressed_segmentation", layer_type="segmentation", **common)
    source = write(f"{bucket}/source", data.source_xyz, resolution_nm_xyz=(4, 4, 33),
                   voxel_offset_xyz=tuple(o * f for o, f in zip(TARGET_OFFSET, SCALE)),
                   chunk_size_xyz=(32, 32, 4), encoding="jpeg", downsample_mips=1, **common)
    names = gcs.objects("sharded", "target")
    assert names and all(n == "info" or n.endswith(".shard") for n in names)
    flags = ["--variants", "2", "--source-mip", "nearest"]
    local = tmp_path / "local"
    assert main(["run"] + data.argv(local, *flags)) == 0
    want = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    for engine in ("tensorstore", "cloudvolume"):
        prefix = f"out-{engine}"
        argv = data.argv(f"{bucket}/{prefix}", *flags, "--volume-reader", engine)
        argv[argv.index("--source-url") + 1] = source
        argv[argv.index("--target-url") + 1] = target
        assert main(["run"] + argv) == 0
        got = gcs.objects("sharded", prefix)
        assert set(got) == set(want)
        assert all(got[n] == want[n] for n in want if n != "manifest.json"), engine
        counts = json.loads(got["manifest.json"])["counts"]
        assert counts == json.loads(want["manifest.json"])["counts"]
        assert counts["filled_chunks"]["target"] > 0


def test_a_dotdot_scale_key_on_gs_reads_with_tensorstore_and_is_refused_with_cloudvolume(
        gcs, gs_and_local, capsys):
    """A target whose info lies in another folder, its key climbing with '..' to the scale:
    tensorstore resolves it and writes the local run's records; cloud-volume joined it to the
    bucket path as text, read every chunk as absent (zeros) and dead-lettered every row as
    empty_target, exit 0 (found by review): refused before any work, naming the reader to use."""
    from synanno_datagen.pipeline.probes import volume
    from tests.conftest import assert_usage_error

    bucket, _, local = gs_and_local
    info = json.loads(gcs.objects(bucket, "target")["info"])
    info["scales"][0]["key"] = f"../../target/{info['scales'][0]['key']}"
    alias = f"gs://{bucket}/alias/deep"
    with FileSystems.create(f"{alias}/info") as out:
        out.write(json.dumps(info).encode())
    assert volume("--target-url", alias, 0, "tensorstore").key == info["scales"][0]["key"]
    argv = ["run", "--materialization", f"gs://{bucket}/tables/synapses-*.csv",
            "--source-url", f"gs://{bucket}/source", "--target-url", alias, "--crop-size",
            "12", "12", "4", "--variants", "2", "--shard-size-mb", "0.01", "--splits",
            "train=0.6,val=0.4", "--block-size", "8", "8", "4"]
    assert main(argv + ["--output-dir", f"gs://{bucket}/via-alias"]) == 0
    got = gcs.objects(bucket, "via-alias")
    want = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert set(got) == set(want)
    assert all(got[n] == want[n] for n in want if n != "manifest.json")
    capsys.readouterr()
    assert_usage_error(capsys, argv + ["--output-dir", f"gs://{bucket}/cv",
                                       "--volume-reader", "cloudvolume"],
                       f"--target-url {alias}: scale 0 has key '{info['scales'][0]['key']}', "
                       "which climbs with '..'", "pass --volume-reader tensorstore")
    assert not gcs.objects(bucket, "cv")


def test_absent_chunks_of_an_unsharded_volume_on_gs_are_told_from_stored_ones(gcs, tmp_path):
    """Labels written by tensorstore (no all-zero chunk stored) to the emulator: tensorstore
    reads absent chunks as zeros and asks the bucket about each all-zero one, finding exactly
    the chunks its writer left out."""
    from synanno_datagen.transforms.blocks import read_region
    from synanno_datagen.transforms.readers import describe_volume, open_reader
    from synanno_datagen.transforms.volumes import chunk_names
    from tests.test_readers import _all_zero_chunks

    bucket = gcs.create_bucket("unsharded-absent")
    data = make_small_data(tmp_path / "data", "raw", "tensorstore")
    target = write_precomputed(f"{bucket}/target", data.labels_xyz, resolution_nm_xyz=(8, 8, 33),
                               voxel_offset_xyz=TARGET_OFFSET, chunk_size_xyz=(16, 16, 4),
                               encoding="compressed_segmentation", layer_type="segmentation",
                               writer="tensorstore")
    spec = describe_volume(target)
    zero = _all_zero_chunks(spec, data.labels_xyz)
    stored = set(gcs.objects("unsharded-absent", "target")) - {"info"}
    assert zero and stored == set(chunk_names(spec, spec.bounds)) - zero
    reader = open_reader(target, 0, "tensorstore")
    region = read_region(reader, spec, spec.bounds)
    assert region.absent == zero and not region.errors
    np.testing.assert_array_equal(region.array_zyx, data.labels_xyz.transpose(2, 1, 0))
    assert reader.io["chunks_loaded"] == len(chunk_names(spec, spec.bounds))


def test_gs_rerun_replaces_the_dataset(gcs, tmp_path):
    bucket = gcs.create_bucket("rerun")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    argv = ["run", "--materialization", table, "--source-url", source, "--target-url", target,
            "--output-dir", f"{bucket}/out", "--crop-size", "12", "12", "4"]
    assert main(argv + ["--variants", "2"]) == 0
    first = gcs.objects("rerun", "out")
    assert main(argv + ["--variants", "1", "--overwrite"]) == 0
    second = gcs.objects("rerun", "out")
    assert not any(n.startswith("_tmp/") for n in second)
    # the marker of an unfinished run is one object, removed once the run commits (found by
    # mutation review: deleting only what lies under a name passed every test)
    assert "UNFINISHED" not in second
    assert len([n for n in second if n.startswith("npy/target/")]) == 5
    assert len([n for n in first if n.startswith("npy/target/")]) == 10


def test_a_gs_runs_temporary_objects_are_deleted_spread_before_the_manifest_step(
        gcs, tmp_path, monkeypatch):
    """_tmp holds an index fragment per shard group and split and the runs of dead letters:
    about 270,000 objects at whole-H01, which the manifest step deleted on one worker at the
    run's very end. They now go in batches any worker takes (DeleteFolders), once the steps
    reading them are done; the manifest step's own listing of _tmp, the last, finds nothing
    left, and the dataset is whole."""
    from synanno_datagen.pipeline import manifest as manifest_module
    from synanno_datagen.transforms import files

    bucket = gcs.create_bucket("frag")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    listing, found = files.listed, []   # (folder, names) of each listing, in order

    def watched(folder):
        found.append((folder, []))
        for name in listing(folder):
            found[-1][1].append(name)
            yield name

    monkeypatch.setattr(files, "listed", watched)             # delete_tree's (the manifest's)
    monkeypatch.setattr(manifest_module, "listed", watched)   # DeleteFolders'
    assert main(["run", "--materialization", table, "--source-url", source, "--target-url",
                 target, "--output-dir", f"{bucket}/out", "--crop-size", "12", "12", "4",
                 "--formats", "tfrecord", "--splits", "train=0.5,val=0.5",
                 "--quiet"]) == 0
    made = gcs.objects("frag", "out")
    assert not [n for n in made if n.startswith("_tmp/")]
    tmp = [names for folder, names in found if folder == f"{bucket}/out/_tmp"]
    assert tmp[-1] == []   # the manifest step's, last: nothing left to delete
    assert any(n.endswith(".jsonl") for names in tmp[:-1] for n in names)   # spread: fragments
    manifest = json.loads(made["manifest.json"])
    assert sorted(made) == sorted(["manifest.json", "dead_letter.jsonl"]
                                  + [f["path"] for kind in ("tfrecord", "index")
                                     for f in manifest["files"][kind]])


def _records_by_key(gcs, bucket: str, prefix: str, tmp_path) -> dict:
    """{instance_id: serialized Example} over every TFRecord shard under prefix."""
    from tfrecord import example_pb2
    from tfrecord.reader import tfrecord_iterator

    out = {}
    for name, data in gcs.objects(bucket, prefix).items():
        if not name.endswith(".tfrecord"):
            continue
        local = tmp_path / name.replace("/", "_")
        local.write_bytes(data)
        for raw in tfrecord_iterator(str(local)):
            example = example_pb2.Example.FromString(bytes(raw))
            feature = example.features.feature
            key = feature["instance_id"].int64_list.value[0]   # instance layout: one record
            assert key not in out, f"{key} written twice"
            out[key] = bytes(raw)
    return out


def _write_table(path: str, header: str, rows) -> None:
    with FileSystems.create(path) as f:
        f.write(("\n".join([header] + list(rows)) + "\n").encode())


def test_incremental_runs_add_only_new_instances(gcs, tmp_path):
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    from synanno_datagen.pipeline.build import build
    from synanno_datagen.pipeline.config import parse

    bucket = gcs.create_bucket("incremental")
    data = make_small_data(tmp_path / "data")
    source, target, _ = _upload_small_data(data, bucket)
    lines = open(data.table_path).read().splitlines()
    header, good = lines[0], lines[1:6]            # synapses 11..15, in that order
    table = f"{bucket}/nightly/synapses.csv"
    root = f"{bucket}/datasets/nightly"
    common = ["--materialization", table, "--source-url", source, "--target-url", target,
              "--crop-size", "12", "12", "4", "--variants", "2", "--splits", "train=0.5,val=0.5"]

    def nightly(*extra):
        config, beam_args = parse(common + ["--output-dir", root, "--incremental"] + list(extra))
        with TestPipeline(argv=beam_args) as p:
            build(p, config)
        fetched = p.result.metrics().query(MetricsFilter().with_name("instances_fetched"))
        n = sum(c.committed for c in fetched["counters"])
        latest = gcs.objects("incremental", "datasets/nightly")["LATEST"].decode().strip()
        return n, json.loads(gcs.objects("incremental", "datasets/nightly")[latest])

    _write_table(table, header, good[:3])
    n1, m1 = nightly()
    assert n1 == 3 and m1["incremental"]["run"] == 1 and m1["incremental"]["extends"] is None
    _write_table(table, header, good)                # two rows appended
    n2, m2 = nightly()
    assert n2 == 2                                   # only the new instances were fetched
    assert m2["incremental"]["run_dir"] == "runs/00002"
    assert m2["incremental"]["extends"] == "runs/00001/manifest.json"
    assert m2["counts"]["instances_written"] == 2
    assert sum(s["instances"] for s in m2["splits"].values()) == 5
    assert m2["files"]["tfrecord"][:len(m1["files"]["tfrecord"])] == m1["files"]["tfrecord"]
    objects = gcs.objects("incremental", "datasets/nightly")
    for entry in m2["files"]["tfrecord"] + m2["files"]["index"]:
        assert hashlib.sha256(objects[entry["path"]]).hexdigest() == entry["sha256"]

    # The union equals a from-scratch run, record for record, byte for byte.
    config, beam_args = parse(common + ["--output-dir", f"{bucket}/scratch"])
    with TestPipeline(argv=beam_args) as p:
        build(p, config)
    union = _records_by_key(gcs, "incremental", "datasets/nightly", tmp_path)
    assert union == _records_by_key(gcs, "incremental", "scratch", tmp_path)
    assert set(union) == set(GOOD_IDS)

    # No new rows and one vanished row: a quick run that says so and keeps every earlier shard.
    _write_table(table, header, good[1:])
    n3, m3 = nightly()
    assert n3 == 0 and m3["counts"]["instances_written"] == 0
    assert m3["counts"]["vanished_instances"] == 1
    assert [f["path"] for f in m3["files"]["tfrecord"]] == \
        [f["path"] for f in m2["files"]["tfrecord"]]

    # A changed generation config starts a fresh dataset instead of mixing.
    n4, m4 = nightly("--seed", "9")
    assert n4 == 4 and m4["incremental"]["extends"] is None
    assert all(f["path"].startswith("runs/00004/") for f in m4["files"]["tfrecord"])


def test_an_output_bucket_we_cannot_write_is_refused_before_any_work(gcs, tmp_path, capsys):
    gcs.create_bucket("writable")
    data = make_small_data(tmp_path / "data")
    argv = ["run"] + data.argv("gs://no-such-bucket/out")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("synanno-datagen: error: --output-dir gs://no-such-bucket/out: "
                          "cannot write there")
    code = main(["run"] + data.argv("gs://writable/out"))
    assert code == 0, capsys.readouterr().err
    assert not [n for n in gcs.objects("writable", "out") if "_write_probe" in n]


def test_the_write_probe_of_a_run_killed_while_checking_is_removed_by_the_next(gcs, tmp_path):
    """Found by review: a run killed between writing its write probe and deleting it left
    ``_write_probe_PID_TIME`` in the dataset for good (no later run had its name). The probe has
    one name, which the next run's check writes and removes."""
    gcs.create_bucket("probed")
    gcs.client().bucket("probed").blob("out/_write_probe").upload_from_string(b"left behind")
    data = make_small_data(tmp_path / "data")
    assert main(["run"] + data.argv("gs://probed/out", "--variants", "1", "--quiet")) == 0
    assert not [n for n in gcs.objects("probed", "out") if "_write_probe" in n]


def test_runs_checking_one_gs_output_at_once_are_not_refused(gcs):
    """Found by review: two runs checking the same output at once (a scheduled and a manual
    launch) deleted each other's write probe between a listing and a lookup, and one was
    refused with exit 2, 'cannot write there'."""
    import threading

    from synanno_datagen.pipeline.output_checks import check_writable

    gcs.create_bucket("together")
    errors = []

    def check_often():
        for _ in range(25):
            try:
                check_writable("gs://together/out")
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=check_often) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not [n for n in gcs.objects("together", "out") if "_write_probe" in n]


def test_an_output_dir_that_is_an_object_or_names_no_bucket_is_refused(gcs, tmp_path, capsys):
    """An existing object (a table, say, as flag values were swapped) is no folder, as a local
    file is none; ``gs://`` alone (an unset variable) wrote a local folder named ``gs:``."""
    gcs.create_bucket("lab")
    gcs.client().bucket("lab").blob("tables/night1.csv").upload_from_string(b"id\n")
    gcs.client().bucket("lab").blob("top.csv").upload_from_string(b"id\n")
    data = make_small_data(tmp_path / "data")
    for out, message in (("gs://lab/tables/night1.csv", "--output-dir gs://lab/tables/night1.csv "
                          "is an object, not a folder"),
                         # at the top of the bucket too (found by mutation review)
                         ("gs://lab/top.csv/sub", "--output-dir gs://lab/top.csv/sub: "
                          "gs://lab/top.csv is an object, not a folder"),
                         ("gs://lab/tables/night1.csv/sub", "--output-dir gs://lab/tables/"
                          "night1.csv/sub: gs://lab/tables/night1.csv is an object, not a "
                          "folder"),   # found by review: accepted on gs://, refused locally
                         ("gs://", "--output-dir 'gs://': no bucket after gs://"),
                         ("gs:///out", "--output-dir 'gs:///out': no bucket after gs://")):
        assert main(["run"] + data.argv(out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"synanno-datagen: error: {message}")
    assert sorted(gcs.objects("lab", "tables")) == ["night1.csv"]
    assert not os.path.exists("gs:")
    # a console's folder placeholder ("data/") is no object the dataset would lie under
    from synanno_datagen.pipeline.output_checks import check_writable

    gcs.client().bucket("lab").blob("data/").upload_from_string(b"")
    check_writable("gs://lab/data//new")


def test_clearing_a_gs_dataset_deletes_its_files_not_objects_named_under_them(gcs):
    """Found by review: a rerun deleted everything under manifest.json/ and dead_letter.jsonl/
    (another dataset, made there before the folder check refused such a path)."""
    from synanno_datagen.pipeline.manifest import clear_dataset

    bucket = gcs.client().bucket(gcs.create_bucket("clear").partition("://")[2])
    for name in ("manifest.json", "dead_letter.jsonl", "tfrecord/train-00000-of-00001.tfrecord",
                 "index/train-00000-of-00001.jsonl", "npy/gt/target_1.npy",
                 "manifest.json/keep", "dead_letter.jsonl/sub/manifest.json", "notes.txt",
                 "tfrecord_old/keep"):
        bucket.blob(f"d/{name}").upload_from_string(b"x")
    clear_dataset("gs://clear/d")
    assert sorted(gcs.objects("clear", "d")) == [
        "dead_letter.jsonl/sub/manifest.json", "manifest.json/keep", "notes.txt",
        "tfrecord_old/keep"]


def test_an_earlier_gs_dataset_is_cleared_in_batches_spread_over_the_workers(gcs, monkeypatch):
    """An --overwrite of a dataset of npy files deleted every object from the job's first step,
    on one worker: six objects per instance at a few hundred a second, hours per million
    instances before anything was written. Each folder is now listed by one worker and its objects
    deleted in batches that cross a shuffle (any worker takes them); the same objects go."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from synanno_datagen.pipeline import manifest
    from tests.test_stages import _shuffled_between

    bucket = gcs.client().bucket(gcs.create_bucket("batches").partition("://")[2])
    ours = ["manifest.json", "dead_letter.jsonl", "tfrecord", "npy/gt/target_1.npy",
            *(f"npy/target/augmented_target_{k}_0.npy" for k in range(23)),
            "tfrecord/train-00000-of-00001.tfrecord", "index/train-00000-of-00001.jsonl",
            "_tmp/train-group000001.jsonl"]
    others = ["manifest.json/keep", "notes.txt", "npy_old/keep"]
    for name in ours + others:
        bucket.blob(f"d/{name}").upload_from_string(b"x")
    monkeypatch.setattr(manifest, "CLEAR_BATCH", 4)
    batches = list(manifest.folder_batches("gs://batches/d/npy"))   # the folder's name too
    assert [len(b) for b in batches] == [4] * 6 + [1] and len(set(sum(batches, []))) == 25
    with TestPipeline() as p:
        assert_that(p | manifest.ClearEarlierRun("gs://batches/d"), equal_to([True]))
    assert sorted(gcs.objects("batches", "d")) == sorted(others + ["UNFINISHED"])
    graph = beam.Pipeline()
    _ = graph | manifest.ClearEarlierRun("gs://batches/d")
    assert _shuffled_between(graph, "List", "Delete")
    assert _shuffled_between(graph, "Files", "List")


def test_a_gs_folder_of_many_objects_is_deleted_with_requests_at_once(gcs, monkeypatch):
    """A run's _tmp holds an object per shard group, an overwritten dataset two per shard:
    deleted one request after another, a whole-H01 run spent hours there (helper review).
    Every object under the prefix goes, objects beside it stay, and more than one request was
    in flight at once."""
    import threading
    import time

    from synanno_datagen.transforms import files

    bucket = gcs.client().bucket(gcs.create_bucket("many").partition("://")[2])
    for k in range(120):
        bucket.blob(f"d/_tmp/train-group{k:06d}.jsonl").upload_from_string(b"x")
    for name in ("d/_tmp_old/keep", "d/manifest.json", "d/_tmp.txt"):
        bucket.blob(name).upload_from_string(b"x")
    made, lock, inflight = files._gcs, threading.Lock(), {"now": 0, "most": 0}

    class Counting:
        def __init__(self):
            self._gcs = made()
            self.client = self._gcs.client

        def delete(self, path):
            with lock:
                inflight["now"] += 1
                inflight["most"] = max(inflight["most"], inflight["now"])
            time.sleep(0.01)   # a bucket's round trip, so that requests overlap
            try:
                self._gcs.delete(path)
            finally:
                with lock:
                    inflight["now"] -= 1

    monkeypatch.setattr(files, "_gcs", Counting)
    files.delete_tree("gs://many/d/_tmp")
    assert sorted(gcs.objects("many", "d")) == ["_tmp.txt", "_tmp_old/keep", "manifest.json"]
    assert inflight["most"] > 1


def test_a_gs_folder_is_deleted_as_it_is_listed(gcs, monkeypatch):
    """An --overwrite of a dataset of npy files at whole-H01 lists hundreds of millions of
    objects: listed whole before the first deletion, the names filled a worker's memory
    (helper review). The deletions start before the listing ends: when the first object goes,
    at most 2 * DELETE_THREADS names have been listed, pages of a few names at a time."""
    from synanno_datagen.transforms import files

    bucket = gcs.client().bucket(gcs.create_bucket("paged").partition("://")[2])
    for k in range(150):
        bucket.blob(f"d/npy/gt/target_{k}.npy").upload_from_string(b"x")
    bucket.blob("d/npy.txt").upload_from_string(b"x")
    monkeypatch.setattr(files, "LIST_PAGE", 7)
    monkeypatch.setattr(files, "DELETE_THREADS", 4)
    listing, listed, when_deleted = files.listed, [], {}

    def counted(folder):
        for name in listing(folder):
            listed.append(name)
            yield name

    made = files._gcs

    class Watching:
        def __init__(self):
            self._gcs = made()
            self.client = self._gcs.client

        def delete(self, path):
            when_deleted[path] = len(listed)   # names listed when this one's request went
            self._gcs.delete(path)

    monkeypatch.setattr(files, "listed", counted)
    monkeypatch.setattr(files, "_gcs", Watching)
    files.delete_tree("gs://paged/d/npy")
    assert sorted(gcs.objects("paged", "d")) == ["npy.txt"]
    assert len(listed) == 150 and len(when_deleted) == 151   # the folder's name too
    assert when_deleted[listed[0]] <= 2 * 4 < 150


def test_deletions_take_their_names_as_requests_finish(gcs, monkeypatch):
    """delete_objects holds at most 2 * DELETE_THREADS names it has not sent: a listing that
    streams in must not be drained into the thread pool's queue instead."""
    import threading

    from synanno_datagen.transforms import files

    gcs.create_bucket("ahead")
    made, lock, taken, sent, most_ahead = files._gcs, threading.Lock(), [0], [0], [0]

    def names():
        for k in range(300):
            taken[0] += 1
            yield f"gs://ahead/d/_tmp/{k}"   # none there: each request finds nothing

    class Watching:
        def __init__(self):
            self._gcs = made()

        def delete(self, path):
            with lock:
                sent[0] += 1
                most_ahead[0] = max(most_ahead[0], taken[0] - sent[0])
            self._gcs.delete(path)

    monkeypatch.setattr(files, "DELETE_THREADS", 4)
    monkeypatch.setattr(files, "_gcs", Watching)
    files.delete_objects(names())
    assert sent[0] == taken[0] == 300 and most_ahead[0] <= 2 * 4


def test_runs_merged_from_gs_are_read_ahead_a_megabyte_at_a_time(gcs):
    """A merge of dead letters or memory entries holds MERGE_FAN_IN (128) runs open at once:
    read through Beam's FileSystems, each gs:// run read 16 MB ahead, 2 GB in all (helper
    review). Each open run holds about MERGE_READ_BUFFER, and the runs merge in order."""
    import heapq
    import tracemalloc

    from synanno_datagen.transforms.dead_letter_file import MERGE_READ_BUFFER, read_lines

    bucket = gcs.client().bucket(gcs.create_bucket("runs").partition("://")[2])
    lines = {k: [b"%08d %d " % (n, k) + b"x" * 200 + b"\n" for n in range(k, 45_000, 3)]
             for k in range(3)}   # three sorted runs of about 3 MB each
    for k, run in lines.items():
        bucket.blob(f"r/{k}.run").upload_from_string(b"".join(run))
    tracemalloc.start()
    try:
        readers = [read_lines(f"gs://runs/r/{k}.run") for k in range(3)]
        firsts = [next(r) for r in readers]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 3 * MERGE_READ_BUFFER + (1 << 20) < 6 << 20
    merged = list(heapq.merge(*([first, *rest] for first, rest in zip(firsts, readers))))
    assert merged == sorted(line for run in lines.values() for line in run)


def test_inspect_and_preview_read_a_gs_dataset(gcs, tmp_path, capsys):
    bucket = gcs.create_bucket("views")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    remote = f"{bucket}/out"
    assert main(["run", "--materialization", table, "--source-url", source, "--target-url",
                 target, "--output-dir", remote, "--crop-size", "12", "12", "4", "--variants",
                 "2", "--shard-size-mb", "0.03", "--splits", "train=0.6,val=0.4"]) == 0
    capsys.readouterr()
    assert main(["inspect", remote, "--json", "--plots", f"{bucket}/plots"]) == 0
    facts = json.loads(capsys.readouterr().out)
    objects = gcs.objects("views", "out")
    manifest = json.loads(objects["manifest.json"])
    assert facts["dataset"] == f"{remote}/manifest.json" and facts["problems"] == []
    assert facts["splits"] == {n: {k: s[k] for k in ("instances", "records", "shards", "bytes")}
                               for n, s in manifest["splits"].items()}
    assert {r: f["count"] for r, f in facts["failures"].items()} == manifest["counts"]["failures"]
    index = [json.loads(line) for f in manifest["files"]["index"]
             for line in objects[f["path"]].decode().splitlines()]
    assert facts["index"]["seed_z"]["observed"] == [
        sum(z == k for e in index for s in e["seed_slices"] for z in s) for k in range(4)]
    plots = gcs.objects("views", "plots")
    assert sorted(plots) == ["failures.png", "foreground_voxels.png", "seed_count.png",
                             "seed_z.png"]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in plots.values())

    local = tmp_path / "preview.png"
    assert main(["preview", remote, "--n", "3", "--seed", "4", "--out", str(local)]) == 0
    picked = capsys.readouterr().out
    remote_png = f"{bucket}/previews/p.png"
    assert main(["preview", remote, "--n", "3", "--seed", "4", "--out", remote_png]) == 0
    assert capsys.readouterr().out.replace(remote_png, str(local)) == picked
    assert gcs.objects("views", "previews")["p.png"] == local.read_bytes()
    ids = [int(line.split()[1]) for line in picked.splitlines() if line.startswith("id ")]
    assert len(ids) == 3 and set(ids) <= set(GOOD_IDS)

    # found by review: views were written under an object's name (a file locally refuses it)
    capsys.readouterr()
    before = sorted(b.name for b in gcs.client().list_blobs("views"))
    for argv, flag, path, holder in (
            (["inspect", remote, "--plots", f"{bucket}/previews/p.png"], "--plots",
             f"{bucket}/previews/p.png/seed_count.png", f"{bucket}/previews/p.png"),
            (["preview", remote, "--out", f"{bucket}/out/manifest.json/sub/p.png"], "--out",
             f"{bucket}/out/manifest.json/sub/p.png", f"{bucket}/out/manifest.json")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"synanno-datagen: error: {flag} {path}: {holder} is an object, not a "
                       "folder; choose a folder (a prefix) for the view"), err
    assert sorted(b.name for b in gcs.client().list_blobs("views")) == before


def test_parquet_and_gzip_csv_tables_read_from_gs_as_from_local_files(gcs, tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    from synanno_datagen.transforms.table_formats import iter_rows, read_schema

    bucket = gcs.create_bucket("tables")
    local = {"t.parquet": tmp_path / "t.parquet", "t.csv.gz": tmp_path / "t.csv.gz"}
    pq.write_table(pa.table({"id": pa.array(range(50), pa.int64()),
                             "ctr_pt_position": [[i, 2 * i, None if i == 7 else 3] for i in
                                                 range(50)]}),
                   local["t.parquet"], row_group_size=8)
    with gzip.open(local["t.csv.gz"], "wt") as f:
        f.write("id,x,y,z\n" + "".join(f"{i},{i},{i}.5,\n" for i in range(50)))
    for name, path in local.items():
        remote = f"{bucket}/{name}"
        with FileSystems.create(remote, compression_type="uncompressed") as out:  # as stored
            out.write(path.read_bytes())
        assert read_schema(remote) == read_schema(str(path))
        assert list(iter_rows(remote)) == list(iter_rows(str(path)))
    assert len(list(iter_rows(f"{bucket}/t.parquet"))) == 50


def test_a_gs_table_named_with_glob_characters_is_read_as_itself(gcs):
    """Found by review: gs://b/t[1].csv was taken for a glob: it read t1.csv, another table,
    where both were there, and was 'no such file' alone (a local file is read as itself)."""
    from synanno_datagen.pipeline.table_options import match_table

    bucket = gcs.create_bucket("literal-tables")
    for name in ("t[1].csv", "t1.csv", "u[2].csv"):
        with FileSystems.create(f"{bucket}/{name}", compression_type="uncompressed") as out:
            out.write(b"id,x,y,z\n1,2,3,4\n")
    assert match_table(f"{bucket}/t[1].csv") == [f"{bucket}/t[1].csv"]
    assert match_table(f"{bucket}/u[2].csv") == [f"{bucket}/u[2].csv"]
    assert match_table(f"{bucket}/t[0-9].csv") == [f"{bucket}/t1.csv"]   # no such object: a glob


def test_a_launch_that_fails_keeps_the_earlier_dataset(gcs, tmp_path, capsys, monkeypatch):
    """Rerunning a dataset on Dataflow: the launcher builds and stages the job before it
    exists, and a failure there (here a template location in a bucket that does not exist, on
    the real emulator) must leave the finished dataset whole; the job, not the launcher,
    clears it. Beam retries the failed write for minutes: its retry clock does not sleep."""
    from apache_beam.utils import retry

    monkeypatch.setattr(retry.Clock, "sleep", lambda self, seconds: None)
    bucket = gcs.create_bucket("relaunch")
    gcs.create_bucket("relaunch-temp")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    argv = ["run", "--materialization", table, "--source-url", source, "--target-url", target,
            "--output-dir", f"{bucket}/ds", "--crop-size", "12", "12", "4", "--variants", "1"]
    assert main(argv) == 0
    before = gcs.objects("relaunch", "ds")
    assert "manifest.json" in before and "LEASE" not in before
    with pytest.raises(Exception, match="no-such-bucket"):
        main(argv + ["--runner", "DataflowRunner", "--project", "my-project", "--region",
                     "us-central1", "--temp_location", "gs://relaunch-temp/tmp",
                     "--template_location", "gs://no-such-bucket/job.json",
                     "--sdk_container_image", "registry.example/synanno-datagen:1"])
    assert '"status":"failed"' in capsys.readouterr().out
    assert gcs.objects("relaunch", "ds") == before   # LEASE released; every file as it was


def test_a_gs_folder_with_a_datasets_names_but_no_dataset_is_refused(gcs, tmp_path, capsys):
    """Objects under npy/ or index/ of a folder without a dataset are the user's, not an
    unfinished run's (no UNFINISHED): the run refuses before it takes the lease."""
    bucket = gcs.create_bucket("users")
    gcs.client().bucket("users").blob("out/npy/mine.npy").upload_from_string(b"precious")
    data = make_small_data(tmp_path / "data")
    assert main(["run"] + data.argv(f"{bucket}/out")) == 2
    assert f"--output-dir {bucket}/out holds npy but no dataset of this tool" in \
        capsys.readouterr().err
    assert gcs.objects("users", "out") == {"npy/mine.npy": b"precious"}


@pytest.fixture
def forbidding_storage(monkeypatch):
    """A loopback server that answers every GCS request 403, named as the emulator: storage
    this run may not use (the emulator grants everything)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.gcs_emulator import _anonymous_beam_credentials

    class Forbid(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"error": {"code": 403, "message": "no access"}}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbid)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    _anonymous_beam_credentials()
    yield
    server.shutdown()


@pytest.mark.parametrize("extra", [[], ["--incremental"]])
def test_storage_we_may_not_use_is_one_line_also_for_a_root(forbidding_storage, tmp_path,
                                                            capsys, extra):
    """Found by review: with --incremental, the look for an existing root came before the write
    check, and a 403 was a traceback (exit 1), not the check's one line (exit 2)."""
    data = make_small_data(tmp_path / "data")
    assert main(["run"] + data.argv("gs://bkt/out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("synanno-datagen: error: --output-dir gs://bkt/out: cannot write there")


def test_bzip2_and_xz_csv_tables_stream_from_gcs(gcs):
    """Found by review: a .csv.bz2 or .csv.xz table was refused with a TypeError; read from
    gs:// through Beam's FileSystems, as locally."""
    import bz2
    import lzma

    from apache_beam.io.filesystem import CompressionTypes

    from synanno_datagen.transforms.table_formats import count_rows, iter_rows, read_schema

    bucket = gcs.create_bucket("compressed-tables")
    text = b"id,x,y,z\n" + b"".join(b"%d,%d,2,3\n" % (i, i) for i in range(5000))
    for name, compress in (("t.csv.bz2", bz2.compress), ("t.csv.xz", lzma.compress)):
        path = f"{bucket}/tables/{name}"
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(compress(text))   # (Beam's AUTO would compress the compressed bytes again)
        assert read_schema(path).columns == ("id", "x", "y", "z")
        rows = list(iter_rows(path))
        assert len(rows) == count_rows(path) == 5000
        assert rows[4999] == {"id": "4999", "x": "4999", "y": "2", "z": "3"}


def test_objects_that_cannot_be_deleted_fail_the_deletion(forbidding_storage):
    """delete_objects sends its requests from a thread pool: a refused request (403) must still
    raise, or a dataset --overwrite replaces and a run's _tmp stay behind unnoticed (a pool.map
    whose results are not taken swallows them). One object and many, as delete_tree sends."""
    from google.api_core.exceptions import Forbidden

    from synanno_datagen.transforms.files import delete_objects

    for count in (1, 40):
        with pytest.raises(Forbidden):
            delete_objects([f"gs://bkt/d/_tmp/{k}" for k in range(count)])


def test_a_gs_runs_temporary_objects_wait_for_every_step_that_reads_them(gcs, tmp_path):
    """A gap an earlier note named: the deletion of _tmp waits on three results (the shards
    named, the dead-letter file merged, the counts, which take the remembered failures); the
    DirectRunner finishes those steps first anyway, so a run without any one of the waits
    passed. In the graph: the step listing _tmp takes each as a side input, and the manifest
    waits on it."""
    from apache_beam.portability.api import beam_runner_api_pb2

    from synanno_datagen.pipeline.build import build
    from synanno_datagen.pipeline.config import parse

    bucket = gcs.create_bucket("waits")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    config, _ = parse(["--materialization", table, "--source-url", source, "--target-url",
                       target, "--output-dir", f"{bucket}/root", "--incremental",
                       "--crop-size", "12", "12", "4"])
    p = beam.Pipeline()
    build(p, config)
    transforms = p.to_runner_api().components.transforms
    producer = {pc: t for t in transforms.values() if not t.subtransforms
                for pc in t.outputs.values()}

    def side_inputs_of(name):
        [t] = [t for t in transforms.values()
               if t.unique_name == name and t.spec.urn == "beam:transform:pardo:v1"]
        pardo = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        return {producer[t.inputs[tag]].unique_name for tag in pardo.side_inputs}

    def upstream(name):
        """Every step the step ``name`` (a leaf's unique name) takes input from, transitively."""
        seen, todo = set(), [name]
        by_name = {t.unique_name: t for t in transforms.values()}
        while todo:
            for pc in by_name[todo.pop()].inputs.values():
                if producer[pc].unique_name not in seen:
                    seen.add(producer[pc].unique_name)
                    todo.append(producer[pc].unique_name)
        return seen

    waits = side_inputs_of("Fragments")
    assert len(waits) == 3
    [shards] = [w for w in waits if "CountFiles" in w]
    [letters] = [w for w in waits if w.startswith("WriteDeadLetter/")]
    [counts] = [w for w in waits if w.startswith("Counts")]
    assert any(s.startswith("FinalizeShards/Finalize") for s in upstream(shards))
    assert any(s.startswith("RememberFailures/") for s in upstream(counts))
    assert any(s.startswith("TallyDeadLetters") for s in upstream(letters))
    assert any(w.startswith("DeleteFragments/") for w in side_inputs_of("WriteManifest"))
