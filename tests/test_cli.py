"""The command line: one-line errors with exit code 2 before any work, and a real run."""
from __future__ import annotations

import contextlib
import json
import logging
import os

import numpy as np
import pytest

from synanno_datagen.cli import main
from synanno_datagen.pipeline.demo_data import write_precomputed


def _fails(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("synanno-datagen: error: ")
    assert "Traceback" not in err and "\x1b" not in err   # (no terminal colours: found by review)
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_run_writes_a_dataset_and_prints_a_summary(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "2")) == 0
    printed = capsys.readouterr().out
    assert "written 5, variants 10" in printed and str(out / "manifest.json") in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["instances_written"] == 5
    # The last line is for machines: one compact JSON object a log filter can match as text.
    line = printed.splitlines()[-1]
    event = json.loads(line)
    assert line.startswith('{"command":"run","counts":{') and '"status":"ok"' in line
    assert {k: event[k] for k in ("event", "status", "exit_code", "output_dir", "manifest",
                                  "instances_written", "empty", "failures")} == {
        "event": "synanno_datagen_run", "status": "ok", "exit_code": 0, "output_dir": str(out),
        "manifest": str(out / "manifest.json"), "instances_written": 5, "empty": False,
        "failures": manifest["counts"]["failures"]}
    assert event["counts"]["variants_written"] == 10 and event["duration_s"] > 0
    assert not (out / "LEASE").exists()


def test_a_local_run_that_does_not_wait_reports_the_dataset_it_finished(small_data, tmp_path,
                                                                        capsys):
    """Found by review: --no_wait_until_finish on the DirectRunner, which runs the whole job
    before it returns, reported ``submitted`` and no summary, as if a remote job went on."""
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "2", "--no_wait_until_finish")) == 0
    printed = capsys.readouterr().out
    assert "written 5, variants 10" in printed and "submitted" not in printed
    event = json.loads(printed.splitlines()[-1])
    assert (event["status"], event["instances_written"]) == ("ok", 5)
    assert event["manifest"] == str(out / "manifest.json")


def test_the_summary_of_an_npy_only_run_names_its_index_shards(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1", "--formats", "npy")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    split = manifest["splits"]["train"]
    # the manifest counts the split's index shards (found by mutation review: its TFRecord
    # shards, none here, passed every test)
    assert split["shards"] == len(list((out / "index").glob("train-*.jsonl"))) > 0
    # and its instances by the index shards' lines (found by a mutation review: the TFRecord
    # shards' records, none here, passed every test)
    assert split["instances"] == sum(len(p.read_text().splitlines())
                                     for p in (out / "index").glob("train-*.jsonl")) > 0
    printed = capsys.readouterr().out
    assert (f"split train: {split['instances']} instances, {split['shards']} index shards\n"
            in printed) and "records in" not in printed


def test_more_instances_asked_than_the_table_has_warns_and_takes_all(small_data, tmp_path,
                                                                     capsys):
    assert main(["run"] + small_data.argv(tmp_path / "out", "--num-instances", "50",
                                          "--variants", "1")) == 0
    printed = capsys.readouterr().out
    assert ("warning: --num-instances 50 is more than the 6 usable instances in the table; "
            "took them all") in printed
    assert "written 5, variants 5" in printed


@pytest.mark.parametrize("change, fragments", [
    ({"--materialization": "{tmp}/nope.csv"}, ["--materialization", "no such file; give a table "
                                                "file (CSV, plain or compressed (.csv, .csv.gz/"
                                                ".gz, .csv.bz2/.bz2, .csv.xz/.xz), or Parquet"]),
    # a file:// URL's escapes are decoded: the message names the path looked for too
    ({"--materialization": "file://{tmp}/my%20t.csv"}, ["--materialization file://",
                                                        "/my%20t.csv: no such file (the path /",
                                                        "/my t.csv); give a table file"]),
    ({"--source-url": "file://{tmp}/missing"}, ["--source-url", "cannot read the volume's info"]),
    ({"--target-url": "{tmp}/missing"}, ["--target-url", "cannot read"]),
    ({"--source-mip": "5"}, ["--source-mip 5", "mips 0..1"]),
    ({"--source-mip": "finest"}, ["--source-mip", "'finest' is not a mip number or 'nearest'"]),
    ({"--crop-size": ["100", "12", "4"]}, ["--crop-size 100 12 4", "larger than the target"]),
    # (the next two passed every test unchecked: found by mutation review)
    ({"--crop-size": ["49", "12", "4"]}, ["--crop-size 49 12 4", "larger than the target "
                                          "volume [48, 40, 10]"]),
    ({"--retry-failed": []}, ["--retry-failed: only incremental runs remember failures; add "
                              "--incremental"]),
    ({"--crop-size": ["0", "12", "4"]}, ["--crop-size 0 12 4", "positive"]),
    ({"--formats": "zarr"}, ["--formats 'zarr'"]),
    ({"--splits": "train=0.5,val=0.4"}, ["--splits", "sum to 0.9"]),
    ({"--splits": "train=0.8,val=0.1,test=0.095"}, ["--splits", "sum to 0.995"]),
    ({"--splits": "train"}, ["--splits", "name=fraction"]),
    ({"--pad-value": "300"}, ["--pad-value 300", "0..255"]),
    ({"--seed": str(2**63)}, [f"--seed {2**63}", "must be 0 to 2**63 - 1"]),
    # (the next four passed every test unchecked: found by mutation review)
    ({"--seed": "-1"}, ["--seed -1", "must be 0 to 2**63 - 1"]),
    ({"--block-size": ["0", "8", "4"]}, ["--block-size 0 8 4", "positive"]),
    ({"--num-instances": "0"}, ["--num-instances 0", "at least 1 (leave it out for all)"]),
    ({"--splits": "train=0.5,val=0.3,val=0.2"}, ["--splits", "a split name appears twice"]),
    ({"--variants": "0"}, ["--variants 0"]),
    ({"--id-column": "synapse_id"}, ["--id-column synapse_id", "no such column"]),
    ({"--num_instances": "3"}, ["--num_instances", "did you mean --num-instances"]),
    ({"--missing-chunks": "maybe"}, ["--missing-chunks maybe", "'error', 'zero'"]),
    ({"--missing-chunks": "raw=zero"}, ["--missing-chunks raw=zero"]),
    ({"--shard-size-mb": "inf"}, ["--shard-size-mb inf", "positive"]),
    ({"--shard-size-mb": "nan"}, ["--shard-size-mb nan", "positive"]),
    ({"--lease-hours": "1e10"}, ["--lease-hours 10000000000.0", "at most 8760"]),
    ({"--lease-hours": "0"}, ["--lease-hours 0"]),
    ({"--fetch-memory-mb": str(2**43)}, [f"--fetch-memory-mb {2**43}", "at most 1048576"]),
    ({"--progress-interval": "nan"}, ["--progress-interval nan", "positive"]),
    ({"--block-size": ["4096", "4096", "64"], "--fetch-memory-mb": "16"},
     ["--block-size 4096 4096 64", "a quarter of --fetch-memory-mb 16",
      "12,288 MB here", "--fetch-memory-mb 49152 or more", "--fetch-strategy per-instance"]),
    ({"--progress-interval": "inf"}, ["--progress-interval inf", "positive"]),
    # (the next two passed every test unchecked: found by mutation review)
    ({"--formats": ","}, ["--formats ','", "use tfrecord, npy or tfrecord,npy"]),
    ({"--max-seed-slices": "0"}, ["--max-seed-slices 0: must be at least 1"]),
])
def test_bad_options_fail_in_one_line_with_exit_2(small_data, tmp_path, capsys, change,
                                                   fragments):
    argv = small_data.argv(tmp_path / "out")
    for flag, value in change.items():
        values = value if isinstance(value, list) else [value]
        values = [v.format(tmp=tmp_path) for v in values]
        if flag in argv:
            i = argv.index(flag)
            argv[i + 1:i + 1 + len(values)] = values
        else:
            argv += [flag] + values
    _fails(capsys, ["run"] + argv, *fragments)
    assert not (tmp_path / "out").exists()   # nothing written


def test_a_block_no_fetch_memory_can_hold_is_not_told_to_raise_it(small_data, tmp_path, capsys):
    """Found by review: the advice named a --fetch-memory-mb beyond the 1 TiB that flag takes."""
    argv = small_data.argv(tmp_path / "out", "--block-size", "100000", "100000", "100")
    _fails(capsys, ["run"] + argv, "--block-size 100000 100000 100", "give a smaller block or "
           "--fetch-strategy per-instance (no --fetch-memory-mb, at most 1048576, holds it)")


def test_a_block_may_hold_a_quarter_of_the_fetch_memory_and_no_more():
    """The refusal's promise, at its edge (found by mutation review: half passed every test)."""
    import math
    from types import SimpleNamespace

    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.config import _check_block_memory
    from synanno_datagen.transforms.volumes import block_bytes

    block, scale = (64, 64, 16), (2, 2, 1)
    need = block_bytes(block, scale, "uint64")

    def config(mb):
        return SimpleNamespace(block_size_xyz=block, fetch_strategy="grouped", scale_xyz=scale,
                               target=SimpleNamespace(dtype="uint64"), fetch_memory_mb=mb)

    _check_block_memory(config(math.ceil(4 * need / 2**20)))
    with pytest.raises(ConfigError, match="more than a quarter of --fetch-memory-mb"):
        _check_block_memory(config(3 * need // 2**20))


def test_a_chunk_or_an_instance_may_fill_the_fetch_memory_and_no_more():
    """_check_sizes at its edges: a decoded chunk (voxels x channels x bytes) or an instance's
    source and target voxels of exactly --fetch-memory-mb are taken, one voxel more refused."""
    from types import SimpleNamespace

    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.config import _check_sizes

    def spec(chunk, dtype, channels=1):
        return SimpleNamespace(url="file:///v", mip=0, chunk_size_xyz=chunk, dtype=dtype,
                               num_channels=channels)

    def config(target=spec((512, 512, 1), "uint32"), source=spec((256, 256, 4), "uint16", 2),
               crop=(64, 64, 32)):   # 1 MiB each: 2**18 x 4, 2**18 x 2 x 2, 2**17 x (4 + 4)
        return SimpleNamespace(fetch_memory_mb=1, target=target, source=source,
                               crop_size_xyz=crop, scale_xyz=(2, 2, 1), record_layout="variant",
                               variants=1, source_shape_zyx=(crop[2], 2 * crop[1], 2 * crop[0]),
                               formats=("tfrecord",))

    _check_sizes(config())
    for change, flag in (({"target": spec((512 * 512 + 1, 1, 1), "uint32")}, "--target-url"),
                         ({"source": spec((256, 256, 4), "uint16", 3)}, "--source-url"),
                         ({"source": spec((256, 256, 4), "uint32", 2)}, "--source-url")):
        with pytest.raises(ConfigError, match=f"^{flag} file:///v: its chunks at mip 0 are .*"
                                              "more than --fetch-memory-mb 1;"):
            _check_sizes(config(**change))
    _check_sizes(config(crop=(64 * 64 * 32, 1, 1)))
    with pytest.raises(ConfigError, match="^--crop-size 131073 1 1: an instance holds its source "
                                          "and target voxels at once, 1 MB here, more than"):
        _check_sizes(config(crop=(64 * 64 * 32 + 1, 1, 1)))


def test_a_block_too_big_for_grouped_fetching_is_fine_per_instance(small_data, tmp_path,
                                                                   capsys):
    """Per-instance fetching holds one crop at a time: a block as big as the volume (one
    block, one split unit) needs no fetch memory."""
    argv = small_data.argv(tmp_path / "out", "--fetch-memory-mb", "16", "--fetch-strategy",
                           "per-instance", "--variants", "1")
    i = argv.index("--block-size") if "--block-size" in argv else len(argv)
    argv[i:i + 4] = ["--block-size", "4096", "4096", "64"]
    assert main(["run"] + argv) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["instances_written"] == 5


def test_an_output_dir_that_cannot_be_created_is_refused(small_data, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    _fails(capsys, ["run"] + small_data.argv(tmp_path / "a-file" / "out"),
           f"--output-dir {tmp_path / 'a-file' / 'out'}", "is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_dir_is_refused(small_data, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    _fails(capsys, ["run"] + small_data.argv(locked / "out"), "is not writable")
    assert not (locked / "out").exists()


def test_missing_centre_columns_are_named_with_the_columns_found(tmp_path, capsys, small_data):
    table = tmp_path / "t.csv"
    table.write_text("id,x,y,ctr_pt_position,score\n1,2,3,4,5\n")
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(table)
    _fails(capsys, ["run"] + argv, "no centre columns x/y/z", "--center-column NAME",
           "found: id,x,y,ctr_pt_position,score")


def test_non_integer_scale_is_rejected(tmp_path, capsys, small_data):
    odd = write_precomputed(str(tmp_path / "odd"), np.zeros((30, 30, 10), np.uint8),
                            resolution_nm_xyz=(3, 3, 33), voxel_offset_xyz=(0, 0, 0),
                            chunk_size_xyz=(16, 16, 4))
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--source-url") + 1] = odd
    _fails(capsys, ["run"] + argv, "--source-mip 0", "8/3", "not a positive integer")


def test_missing_required_flag_and_unknown_command(capsys):
    _fails(capsys, ["run", "--materialization", "x.csv"], "required")
    assert main(["frobnicate"]) == 2


def test_output_dir_with_another_config_needs_overwrite(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1")) == 0
    capsys.readouterr()
    _fails(capsys, ["run"] + small_data.argv(out, "--variants", "2"), "different config "
           "(variants: 1 then, 2 now)", "--overwrite")
    assert main(["run"] + small_data.argv(out, "--variants", "2", "--overwrite")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["variants_written"] == 10
    # the old run's files are gone: two seed files per instance, not more
    assert len(list((out / "npy" / "target").iterdir())) == 10


def test_a_dataset_moved_elsewhere_is_rerun_there_with_the_same_options(small_data, tmp_path):
    """The manifest's output_dir is where the dataset was made; a rerun of the same options in
    the folder it was moved to replaces it (found by review: it was refused as "a different
    config", naming nothing)."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    assert main(["run"] + small_data.argv(first, "--variants", "1")) == 0
    first.rename(moved)
    assert main(["run"] + small_data.argv(moved, "--variants", "1")) == 0
    assert json.loads((moved / "manifest.json").read_text())["config"]["output_dir"] == str(moved)


@pytest.mark.parametrize("flag", ["--source-url", "--target-url"])
def test_an_info_file_that_is_not_json_is_named_as_such(small_data, tmp_path, capsys, flag):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "info").write_text("{'scales': []}")       # Python's repr, not JSON
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index(flag) + 1] = str(broken)
    err = _fails(capsys, ["run"] + argv, f"{flag} file://{broken}: cannot read the volume's info",
                 "not JSON")
    assert "--source-mip" not in err


@pytest.mark.parametrize("extra, message", [
    (["--output-dir"], "--output-dir: expected one argument"),
    (["--progress-interval", "0"], "--progress-interval 0: must be positive"),
])
def test_refusals_of_output_flags_end_with_the_closing_line(small_data, tmp_path, capsys, extra,
                                                            message):
    """Every run that reads its output flags ends with one closing line, a refusal too."""
    argv = [a for a in small_data.argv(tmp_path / "out") if a != str(tmp_path / "out")]
    argv.remove("--output-dir")
    assert main(["run"] + argv + extra) == 2
    captured = capsys.readouterr()
    closing = json.loads(captured.out.strip().splitlines()[-1])
    assert (closing["status"], closing["exit_code"]) == ("refused", 2)
    assert message in closing["error"] and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_run_help_names_every_exit_code(capsys):
    """Found by review: 143 (SIGTERM) was in README and the code, not in the help."""
    from synanno_datagen import cli

    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for code in (0, cli.FAILED, cli.USAGE_ERROR, cli.BUSY, cli.TERMINATED, cli.INTERRUPTED):
        assert f" {code} " in out.split("exit codes:", 1)[1], code


def test_run_help_offers_only_formats_the_tool_takes(capsys):
    """Found by review: the help offered '--formats both', which is refused."""
    from synanno_datagen.pipeline import validate

    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    offered = out.split("--formats FORMATS ", 1)[1].split(" (default ", 1)
    assert offered[0] == "tfrecord, npy or tfrecord,npy"
    assert offered[1].startswith("tfrecord,npy)")
    for value in ("tfrecord", "npy", "tfrecord,npy"):
        assert validate.parse_formats(value)


def test_demo_help_is_no_failed_run(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--output-dir" in out and "synanno_datagen_run" not in out
    # its refusal of another dataset's directory suggests --overwrite: the help says it passes
    assert "--overwrite" in out and "run flags" in out


def test_raw_em_given_as_the_labels_is_refused_or_warned_of(tmp_path, capsys, caplog):
    """Found by review: the raw EM's URL given twice (as --target-url too) ran, status ok, and
    wrote components of grey values as synapse masks. A JPEG volume cannot hold labels: it is
    refused; a volume whose info says "image" is warned of."""
    from tests.conftest import make_small_data

    jpeg = make_small_data(tmp_path / "jpeg", source_encoding="jpeg")
    argv = jpeg.argv(tmp_path / "out")
    argv[argv.index("--target-url") + 1] = jpeg.source_url
    _fails(capsys, ["run"] + argv, f"--target-url {jpeg.source_url}: a jpeg-encoded volume (raw "
           "EM?) cannot hold labels (JPEG is lossy); give the synapse labels' volume")
    assert not (tmp_path / "out").exists()
    raw = make_small_data(tmp_path / "raw")
    argv = raw.argv(tmp_path / "out2", "--variants", "1")
    argv[argv.index("--target-url") + 1] = raw.source_url
    assert main(["run"] + argv) == 0
    assert (f"--target-url {raw.source_url}: its info says type 'image', not 'segmentation': "
            "check that it holds the synapse labels") in caplog.text


@pytest.mark.parametrize("flag, says", [
    ("--target-url", "labels must have one channel"),
    ("--source-url", "raw EM must be uint8 with one channel"),   # found by mutation review
])
def test_volumes_with_several_channels_are_refused(small_data, tmp_path, capsys, flag, says):
    """The readers would disagree (tensorstore takes channel 0, cloud-volume refuses)."""
    import shutil

    volume = tmp_path / "volume"
    url = small_data.target_url if flag == "--target-url" else small_data.source_url
    shutil.copytree(url[len("file://"):], volume)
    info = json.loads((volume / "info").read_text())
    (volume / "info").write_text(json.dumps({**info, "num_channels": 2}))
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index(flag) + 1] = str(volume)
    _fails(capsys, ["run"] + argv, f"{flag} file://{volume}: {says}")


def test_labels_of_any_integer_type_are_read_and_others_refused(small_data, tmp_path, capsys):
    """Labels are integers of any width and sign: an int32 copy of the labels (raw encoding,
    written by cloud-volume) gives the very shards the uint64 original gives; float labels
    (a wrong layer) are refused in one line before any work (found by mutation review: neither
    side was tested)."""
    from tests.conftest import TARGET_OFFSET
    from tests.test_pipeline import read_records

    def run(target_url, out):
        argv = small_data.argv(out, "--variants", "2", "--quiet")
        argv[argv.index("--target-url") + 1] = target_url
        return ["run"] + argv

    common = dict(resolution_nm_xyz=(8, 8, 33), voxel_offset_xyz=TARGET_OFFSET,
                  chunk_size_xyz=(16, 16, 4), encoding="raw", layer_type="segmentation")
    signed = write_precomputed(str(tmp_path / "int32"), small_data.labels_xyz.astype(np.int32),
                               **common)
    assert main(run(small_data.target_url, tmp_path / "uint64")) == 0
    assert main(run(signed, tmp_path / "signed")) == 0
    assert len(read_records(tmp_path / "signed")) == 10
    shards = sorted((tmp_path / "uint64" / "tfrecord").iterdir())
    assert [(tmp_path / "signed" / "tfrecord" / s.name).read_bytes() for s in shards] == \
        [s.read_bytes() for s in shards]
    floats = write_precomputed(str(tmp_path / "float32"), small_data.labels_xyz.astype(np.float32),
                               **common)
    capsys.readouterr()
    _fails(capsys, run(floats, tmp_path / "out"),
           f"--target-url {floats}: labels must be integers, found float32")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, change, engine, fragments", [
    ("--target-url", {"num_channels": None}, "tensorstore", ["the info has no num_channels"]),
    ("--target-url", {"num_channels": None}, "cloudvolume", ["the info has no num_channels"]),
    ("--source-url", {"resolution": [4, 4]}, "tensorstore",
     ["has resolution [4, 4], not three positive numbers"]),
    ("--target-url", {"size": [48, 48, -1]}, "tensorstore",
     ["has size [48, 48, -1], not three positive integers"]),
    ("--target-url", {"scales": []}, "tensorstore", ["the info lists no scales"]),
    ("--target-url", {"encoding": "compresso"}, "tensorstore",
     ["tensorstore cannot read scale 0 (encoding 'compresso')", "--volume-reader cloudvolume"]),
    ("--target-url", {"encoding": "bogus"}, "cloudvolume",
     ["cloudvolume cannot read scale 0 (encoding 'bogus')", "install the codec"]),
    # found by review: cloud-volume's decoder died of SIGFPE (a zero block), dead-lettered every
    # instance (int8, absurd shard bits, a sharding that is no object), or failed each read
    # (bounds past int32); tensorstore's refusal was cut before its reason
    ("--target-url", {"compressed_segmentation_block_size": [0, 8, 8]}, "cloudvolume",
     ["compressed_segmentation_block_size [0, 8, 8], not three positive integers"]),
    ("--target-url", {"compressed_segmentation_block_size": None}, "tensorstore",
     ["compressed_segmentation_block_size (none), not three positive integers"]),
    ("--target-url", {"data_type": "int8"}, "cloudvolume",
     ["is compressed_segmentation, which holds uint32 or uint64 labels, not int8"]),
    ("--target-url", {"sharding": "yes"}, "cloudvolume",
     ["has sharding 'yes', not a neuroglancer_uint64_sharded_v1 object"]),
    ("--target-url", {"sharding": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0,
                                   "hash": "identity", "minishard_bits": 60, "shard_bits": 60}},
     "tensorstore", ["has sharding minishard_bits 60, not an integer from 0 to 32"]),
    ("--target-url", {"sharding": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0,
                                   "hash": "identity", "minishard_bits": 30, "shard_bits": 40}},
     "cloudvolume", ["has sharding minishard_bits + shard_bits 70, more than 64"]),
    ("--target-url", {"sharding": {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0,
                                   "hash": "md5", "minishard_bits": 0, "shard_bits": 0}},
     "cloudvolume", ["has sharding hash 'md5', not one of identity, murmurhash3_x86_128"]),
    ("--target-url", {"voxel_offset": [2**31 - 10, 0, 0]}, "cloudvolume",
     ["cloud-volume reads voxels -2**31 to 2**31 - 1 on each axis", "--volume-reader tensorstore"]),
    ("--target-url", {"voxel_offset": [2**62, 0, 0]}, "tensorstore",
     ["tensorstore cannot read scale 0", "voxel_offset", "fix the info file"]),
])
def test_an_info_the_reader_cannot_use_is_refused_before_any_work(small_data, tmp_path, capsys,
                                                                  flag, change, engine,
                                                                  fragments):
    """Before, such volumes passed the checks and the run broke with a traceback (tensorstore)
    or dead-lettered every instance (cloud-volume: a codec it does not have)."""
    import shutil

    url = small_data.source_url if flag == "--source-url" else small_data.target_url
    volume = tmp_path / "volume"
    shutil.copytree(url[len("file://"):], volume)
    info = json.loads((volume / "info").read_text())
    for key, value in change.items():
        where = info if key in info else info["scales"][0]
        if value is None:
            del where[key]
        else:
            where[key] = value
    (volume / "info").write_text(json.dumps(info))
    argv = small_data.argv(tmp_path / "out", "--volume-reader", engine)
    argv[argv.index(flag) + 1] = str(volume)
    _fails(capsys, ["run"] + argv, f"{flag} file://{volume}: ", *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
@pytest.mark.parametrize("kind", ["absolute", "scheme", "above the root", "dot", "slash",
                                  "after a folder"])
def test_a_scale_key_that_is_no_relative_path_is_refused_before_any_work(small_data, tmp_path,
                                                                         capsys, engine, kind):
    """A key naming the real scale by an absolute path: tensorstore dead-lettered every row as
    fetch_error (exit 0) while cloud-volume read that path anywhere on the disk (found by
    review); a scheme, '..' beyond '/', '.' and a final '/' read elsewhere or nowhere too; a
    '..' after a folder name that is not there: tensorstore read the scale, cloud-volume zeros
    (every row empty_target, exit 0; found by review)."""
    import shutil

    target = small_data.target_url[len("file://"):]
    volume = tmp_path / "volume"
    volume.mkdir()
    info = json.loads(open(target + "/info").read())
    key = info["scales"][0]["key"]
    info["scales"][0]["key"] = {
        "absolute": f"{target}/{key}", "scheme": f"file://{target}/{key}",
        "above the root": "../" * (len(volume.parts) + 1) + f"{target[1:]}/{key}",
        "dot": f"./{key}", "slash": f"{key}/", "after a folder": f"absent/../{key}"}[kind]
    if kind in ("dot", "slash", "after a folder"):
        shutil.copytree(f"{target}/{key}", volume / key)
    (volume / "info").write_text(json.dumps(info))
    out = tmp_path / "out"
    argv = small_data.argv(out, "--volume-reader", engine)
    argv[argv.index("--target-url") + 1] = str(volume)
    _fails(capsys, ["run"] + argv, f"--target-url file://{volume}: scale 0 has key "
                                   f"{info['scales'][0]['key']!r}: ", "; fix the info file")
    assert not out.exists()


def _resized_copy(url: str, copy, **scale):
    """A copy of the volume at ``url`` whose info's scale 0 has the values ``scale``."""
    import shutil

    shutil.copytree(url[len("file://"):], copy)
    info = json.loads((copy / "info").read_text())
    info["scales"][0].update(scale)
    (copy / "info").write_text(json.dumps(info))
    return str(copy)


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
def test_chunks_and_crops_past_the_memory_budget_are_refused_before_any_work(
        small_data, tmp_path, capsys, engine):
    """Found by review: an info's chunk size of 2**30 voxels aborted the run mid-fetch
    (std::bad_alloc, exit 134, lease left), and a crop of gigabytes failed every instance with
    MemoryError (or would take a worker's memory)."""
    big_chunks = _resized_copy(small_data.target_url, tmp_path / "chunks",
                               chunk_sizes=[[16, 16, 2**30]])
    argv = small_data.argv(tmp_path / "out", "--volume-reader", engine)
    argv[argv.index("--target-url") + 1] = big_chunks
    _fails(capsys, ["run"] + argv, f"--target-url file://{big_chunks}: its chunks at mip 0 are "
           "16 x 16 x 1073741824 voxels, 2,097,152 MB each decoded, more than --fetch-memory-mb "
           "1024; give a volume with smaller chunks (no --fetch-memory-mb, at most 1048576, "
           "holds it)")
    big = _resized_copy(small_data.target_url, tmp_path / "big", size=[16384, 16384, 10])
    argv = small_data.argv(tmp_path / "out", "--volume-reader", engine, "--variants", "1",
                           "--fetch-memory-mb", "256")
    argv[argv.index("--target-url") + 1] = big
    argv[argv.index("--crop-size") + 1:argv.index("--crop-size") + 4] = ["2048", "2048", "8"]
    _fails(capsys, ["run"] + argv, "--crop-size 2048 2048 8: an instance holds its source and "
           "target voxels at once, 384 MB here, more than --fetch-memory-mb 256; give a smaller "
           "crop, --fetch-memory-mb 384 or more")
    argv[argv.index("--crop-size") + 1:argv.index("--crop-size") + 4] = ["16384", "16384", "2"]
    argv[argv.index("--fetch-memory-mb") + 1] = "8192"
    _fails(capsys, ["run"] + argv, "--crop-size 16384 16384 2: a record would hold 4,096 MB of "
           "arrays, more than the 2 GiB of one protobuf message (a TFRecord Example); give a "
           "smaller crop or --formats npy")
    # ... which is no limit of npy files (found by mutation review: applying it to npy-only
    # runs passed every test)
    from synanno_datagen.pipeline.config import check

    config, _ = check(argv + ["--formats", "npy"])
    assert config.formats == ("npy",) and config.crop_size_xyz == (16384, 16384, 2)
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_a_local_folder_named_as_a_dataset_file(small_data, tmp_path):
    """Found by review: after objects under gs://.../dead_letter.jsonl/ were kept from a rerun's
    deletion, a local folder of that name made --overwrite fail mid-run (IsADirectoryError),
    and every rerun after it. Locally no file can lie under a file: the folder is replaced."""
    out = tmp_path / "out"
    (out / "dead_letter.jsonl").mkdir(parents=True)
    (out / "manifest.json" / "keep").mkdir(parents=True)
    assert main(["run"] + small_data.argv(out, "--variants", "1", "--overwrite")) == 0
    assert (out / "dead_letter.jsonl").is_file() and (out / "manifest.json").is_file()


def test_overwrite_replaces_links_named_as_dataset_folders_not_what_they_point_at(small_data,
                                                                                  tmp_path):
    """Found by review: a dataset whose index/ or npy/ was a link to a folder (a copied or
    downloaded dataset may hold one) made --overwrite fail after its manifest was deleted
    (rmtree refuses links), a traceback; a dangling link was left in the way. The links are
    replaced; what they point at is left as it was."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (elsewhere / "index").mkdir(parents=True)
    (elsewhere / "index" / "keep.jsonl").write_text("mine\n")
    out.mkdir()
    (out / "index").symlink_to(elsewhere / "index", target_is_directory=True)
    (out / "npy").symlink_to(tmp_path / "gone", target_is_directory=True)   # dangling
    (out / "dead_letter.jsonl").symlink_to(elsewhere / "index" / "keep.jsonl")
    assert main(["run"] + small_data.argv(out, "--variants", "1", "--formats", "tfrecord,npy",
                                          "--overwrite")) == 0
    for name in ("index", "npy"):
        assert (out / name).is_dir() and not (out / name).is_symlink()
    assert (out / "dead_letter.jsonl").is_file() and not (out / "dead_letter.jsonl").is_symlink()
    assert sorted(p.name for p in (elsewhere / "index").iterdir()) == ["keep.jsonl"]
    assert (elsewhere / "index" / "keep.jsonl").read_text() == "mine\n"


@pytest.mark.parametrize("engine", ["tensorstore", "cloudvolume"])
def test_a_volume_url_naming_its_info_or_a_scale_folder_is_pointed_at_the_volume(small_data,
                                                                                 tmp_path,
                                                                                 capsys, engine):
    """Found by review: --target-url VOLUME/info or VOLUME/SCALE said 'no info file at
    VOLUME/info/info' (or .../SCALE/info) and no more; the line now says which folder to give."""
    volume = small_data.target_url
    key = json.loads(open(volume[len("file://"):] + "/info").read())["scales"][0]["key"]
    for url, hint in ((f"{volume}/info", "give the volume's folder, the one holding its info "
                       f"file: {volume}"),   # (named: found by review)
                      (f"{volume}/{key}", f"{volume}/{key} is one scale's folder of the "
                       f"volume at {volume}: give that"),
                      # found by review: any missing folder inside a volume was called a scale's
                      (f"{volume}/nothere", "; check the URL and access")):
        argv = small_data.argv(tmp_path / "out", "--volume-reader", engine)
        argv[argv.index("--target-url") + 1] = url
        _fails(capsys, ["run"] + argv, f"--target-url {url}: cannot read the volume's info",
               hint)


def test_an_info_files_url_is_told_the_folder_above_it(small_data, tmp_path, capsys):
    """Found by mutation review: the line naming the URL itself (VOLUME/info) passed, as the
    folder's URL is the start of it; the line ends with the folder, with or without a slash."""
    volume = small_data.target_url
    for url in (f"{volume}/info", f"{volume}/info/"):
        argv = small_data.argv(tmp_path / "out")
        argv[argv.index("--target-url") + 1] = url
        err = _fails(capsys, ["run"] + argv,
                     f"--target-url {url.rstrip('/')}: cannot read the volume's info")
        assert err.endswith(f"; give the volume's folder, the one holding its info file: {volume}")


def test_a_table_glob_the_shell_expanded_is_told_to_be_quoted(small_data, tmp_path, capsys):
    """Found by review: an unquoted --materialization glob that the shell expands leaves the
    second shard as a stray word, refused as 'not the value of any flag' without a word of the
    glob (it bites a nightly job the first day its table has two shards)."""
    shards = [tmp_path / "t" / f"part-00{i}.csv.gz" for i in (1, 2)]
    shards[0].parent.mkdir()
    for shard in shards:
        shard.write_bytes(b"")
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(shards[0])
    _fails(capsys, ["run"] + argv + [str(shards[1])],
           f"unexpected argument '{shards[1]}': not the value of any flag; a glob the shell "
           f"expanded into the table's shards? quote it: --materialization "
           f"'{tmp_path / 't'}/*.csv.gz'")
    # a file of another kind beside the shards is no shard (found by mutation review)
    (tmp_path / "t" / "notes.txt").write_text("")
    _fails(capsys, ["run"] + argv + [str(tmp_path / "t" / "notes.txt")],
           f"unexpected argument '{tmp_path / 't' / 'notes.txt'}': not the value of any flag; "
           "see 'synanno-datagen run --help'")
    # found by review: any stray word beside a table in the working directory was taken for one
    (tmp_path / "t.csv").write_text("x,y,z\n1,2,3\n")
    argv[argv.index("--materialization") + 1] = "t.csv"
    for stray in ("4", "overwrite", str(tmp_path / "t" / "part-003.csv.gz")):
        _fails(capsys, ["run"] + argv + [stray], f"unexpected argument '{stray}': not the value "
               "of any flag; see 'synanno-datagen run --help'")


def test_the_quoted_glob_of_shards_the_shell_expanded_matches_them(small_data, tmp_path, capsys,
                                                                  monkeypatch):
    """The advised glob of shards in the working directory has no folder ('/*.csv' is the root
    folder's), and keeps the shards' own suffix: '*.csv.gz' matches no PART-001.CSV.GZ; a word
    naming no file, or one in another folder, is no shard (each passed every test; found by a
    mutation review)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a.csv", "b.csv", "PART-001.CSV.GZ", "PART-002.CSV.GZ"):
        (tmp_path / name).write_bytes(b"")
    argv = small_data.argv(tmp_path / "out")
    for shards, glob in ((["a.csv", "b.csv"], "*.csv"),
                         (["PART-001.CSV.GZ", "PART-002.CSV.GZ"], "*.CSV.GZ")):
        argv[argv.index("--materialization") + 1] = shards[0]
        _fails(capsys, ["run"] + argv + [shards[1]],
               f"unexpected argument '{shards[1]}': not the value of any flag; a glob the shell "
               f"expanded into the table's shards? quote it: --materialization '{glob}'")
        assert sorted(p.name for p in tmp_path.glob(glob)) == shards
    # no glob expands to a file that is not there, nor to one in another folder
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.csv").write_bytes(b"")
    argv[argv.index("--materialization") + 1] = "a.csv"
    for stray in ("c.csv", "sub/c.csv"):
        _fails(capsys, ["run"] + argv + [stray], f"unexpected argument '{stray}': not the value "
               "of any flag; see 'synanno-datagen run --help'")


def test_no_command_is_a_usage_error_with_the_help(capsys):
    """A script that calls the tool without a command must not see success."""
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: synanno-datagen ")
    assert "{run,demo,inspect,preview}" in captured.err
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: ")


def test_demo_views_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "out-views").write_text("a file where the demo puts its views")
    _fails(capsys, ["demo", "--output-dir", str(tmp_path / "out")],
           f"--output-dir {tmp_path / 'out'}: the demo writes its views beside it, in "
           f"{tmp_path / 'out-views'}, which it cannot write", "is not a directory")
    assert not (tmp_path / "out").exists()


def test_a_run_whose_rows_are_mostly_outside_the_volume_hints_at_units():
    """A table in nm read as voxels puts every centre outside the volume: exit 0 with 100%
    outside_volume and no hint. The summary now names the likely cause."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 10, "instances_selected": 0, "instances_written": 0,
                   "variants_written": 0, "failures": {"outside_volume": 10}},
        "config": {"num_instances": None, "formats": ["tfrecord"]}, "splits": {},
    }
    assert ("warning: 10 of 10 rows are outside the volume: if the table's coordinates are not "
            "in target voxels (nm, say), pass --coordinate-resolution X Y Z (the table's units "
            "in nm)") in summary(manifest, "out").splitlines()
    # found by review: the hint named the flag to a run that had passed it
    manifest["config"]["coordinate_resolution_nm_xyz"] = [1.0, 1.0, 1.0]
    assert ("warning: 10 of 10 rows are outside the volume: check --coordinate-resolution 1 1 1 "
            "(the table's units in nm), and that the table's points are in this volume"
            ) in summary(manifest, "out").splitlines()
    # found by review: a table relative to the volume's corner (units right) was only told of
    # units; with a volume whose voxel_offset is not zero, that cause is named too
    # (found by review: in the table's units, which --coordinate-resolution gives)
    manifest["volumes"] = {"target": {"voxel_offset_xyz": [100, 200, 10],
                                      "resolution_nm_xyz": [8, 8, 40]}}
    assert ("warning: 10 of 10 rows are outside the volume: check --coordinate-resolution 1 1 1 "
            "(the table's units in nm), and that the table's points are in this volume; points "
            "are absolute, not relative to the volume's corner: add the target's voxel_offset "
            "(800 1600 400 in the table's units) to those that are"
            ) in summary(manifest, "out").splitlines()
    del manifest["config"]["coordinate_resolution_nm_xyz"]
    assert ("add the target's voxel_offset (100 200 10 in target voxels) to those that are"
            ) in summary(manifest, "out")
    manifest["counts"]["failures"] = {"outside_volume": 1}
    assert "--coordinate-resolution" not in summary(manifest, "out")


def test_units_read_from_the_table_are_named_as_the_tables():
    """Units the table's pandas attrs declared (no flag given): the summary says so, and the
    hint at mostly-outside rows names them as the table's, not as a flag's."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 10, "instances_selected": 0, "instances_written": 0,
                   "variants_written": 0, "failures": {"outside_volume": 10}},
        "config": {"num_instances": None, "formats": ["tfrecord"],
                   "coordinate_resolution_nm_xyz": [4.0, 4.0, 40.0]}, "splits": {},
        "table": {"coordinate_resolution_from": "table: pandas attrs dataframe_resolution"},
    }
    lines = summary(manifest, "out").splitlines()
    assert "coordinates: 4 4 40 nm per table unit, as the table's pandas attrs declare " \
        "(dataframe_resolution)" in lines
    assert ("warning: 10 of 10 rows are outside the volume: check the table's "
            "dataframe_resolution 4 4 40 (its pandas attrs), and that the table's points are in "
            "this volume") in lines


def test_option_edges_and_spellings_that_are_no_mistake_are_taken():
    """Found by mutation review (each passed every test): the range's top values are allowed,
    and --formats in either order is one dataset's formats (the manifest and the generation
    config hash them in one order)."""
    from synanno_datagen.pipeline.options import run_parser
    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.validate import check_numbers, parse_formats

    base = ["--materialization", "t.csv", "--source-url", "s", "--target-url", "t",
            "--output-dir", "o"]
    check_numbers(run_parser().parse_args(base + ["--pad-value", "255", "--lease-hours", "8760",
                                                  "--fetch-memory-mb", str(2**20)]))
    with pytest.raises(ConfigError, match="--pad-value 256"):
        check_numbers(run_parser().parse_args(base + ["--pad-value", "256"]))
    assert parse_formats("npy,tfrecord") == parse_formats("tfrecord,npy") == ("tfrecord", "npy")


def test_the_closing_line_is_empty_when_selected_instances_all_failed():
    """``empty`` says no instance was written, also when instances were selected and every one
    failed (found by mutation review: counting the selected passed every test)."""
    from synanno_datagen.pipeline.monitoring import run_event

    manifest = {"counts": {"instances_selected": 3, "instances_written": 0, "failures": {
        "fetch_error": 3}}, "config": {"output_dir": "out"}}
    assert run_event("run", "ok", 0, 1.0, "out", manifest)["empty"] is True
    counts = {"rows_read": 9, "rows_rejected": 1, "rows_not_selected": 2, "instances_selected": 6,
              "instances_written": 5, "variants_written": 10, "failed": 1,
              "vanished_instances": 3}   # the counts a log alert may watch, each of them
    event = run_event("run", "ok", 0, 1.0, "out", {"counts": {**counts, "failures": {}},
                                                   "config": {"output_dir": "out"}})
    assert event["counts"] == counts
    manifest["counts"].update(instances_written=2)
    assert run_event("run", "ok", 0, 1.0, "out", manifest)["empty"] is False


def test_the_closing_line_names_the_version_and_times_to_the_millisecond():
    """README's closing line has the package's version and the duration in seconds to three
    decimals (found by mutation review: leaving out the version, or whole seconds, passed every
    test)."""
    from synanno_datagen import __version__
    from synanno_datagen.pipeline.monitoring import run_event

    event = run_event("run", "refused", 2, 0.12345, None, error="bad flag")
    assert event == {"event": "synanno_datagen_run", "command": "run", "status": "refused",
                     "exit_code": 2, "duration_s": 0.123, "output_dir": None,
                     "version": __version__, "error": "bad flag"}


def test_a_run_that_wrote_nothing_says_so():
    """Found by review: a table whose every row failed ended with exit 0 and no word beyond the
    failure counts."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 4, "instances_selected": 1, "instances_written": 0,
                   "variants_written": 0, "failures": {"invalid_id": 3, "empty_target": 1}},
        "config": {"num_instances": None, "formats": ["tfrecord"]}, "splits": {},
    }
    assert ("warning: no instance written from 4 rows (see failures; out/dead_letter.jsonl "
            "says why, row by row)") in summary(manifest, "out").splitlines()
    manifest["counts"].update(instances_written=1, variants_written=1)
    assert "no instance written" not in summary(manifest, "out")


def test_the_summarys_warnings_hold_at_their_edges():
    """Found by mutation review (each passed every test): a table holding exactly the instances
    asked for draws no warning of too few; rows 90% outside the volume draw the hint; a volume
    whose voxel_offset is zero is not told to add it."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 10, "instances_selected": 6, "instances_written": 6,
                   "variants_written": 6, "failures": {}},
        "config": {"num_instances": 6, "formats": ["tfrecord"]}, "splits": {},
    }
    assert "usable instances" not in summary(manifest, "out")
    manifest["config"]["num_instances"] = 7
    assert ("warning: --num-instances 7 is more than the 6 usable instances in the table; took "
            "them all") in summary(manifest, "out").splitlines()
    manifest["counts"].update(instances_selected=1, instances_written=1,
                              failures={"outside_volume": 9})
    manifest["volumes"] = {"target": {"voxel_offset_xyz": [0, 0, 0]}}
    assert ("warning: 9 of 10 rows are outside the volume: if the table's coordinates are not in "
            "target voxels (nm, say), pass --coordinate-resolution X Y Z (the table's units in "
            "nm)") in summary(manifest, "out").splitlines()


def test_the_summary_warns_when_most_centres_are_on_no_label():
    """Found by review: a CAVE table read in the wrong units wrote its few rows inside the volume
    with exit 0 and no word, each crop's mask some other synapse near a centre on background."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 44, "instances_selected": 6, "instances_written": 6,
                   "variants_written": 6, "failures": {}, "centers_off_label": 2},
        "config": {"formats": ["tfrecord"]}, "splits": {},
        "volumes": {"target": {"voxel_offset_xyz": [0, 0, 0]}},
    }
    assert "no synapse label" not in summary(manifest, "out")   # a few: a table's own
    manifest["counts"]["centers_off_label"] = 3
    assert ("warning: 3 of 6 instances written have their centre on no synapse label, each "
            "crop's mask the synapse nearest it (index key center_distance_nm): if the table's "
            "coordinates are not in target voxels (nm, say), pass --coordinate-resolution X Y Z "
            "(the table's units in nm)") in summary(manifest, "out").splitlines()
    manifest["config"]["coordinate_resolution_nm_xyz"] = [4, 4, 40]
    manifest["volumes"]["target"].update(voxel_offset_xyz=[10, 0, 0], resolution_nm_xyz=[8, 8, 40])
    assert ("...: check --coordinate-resolution 4 4 40 (the table's units in nm), and that the "
            "table's points are in this volume; points are absolute, not relative to the "
            "volume's corner: add the target's voxel_offset (20 0 0 in the table's units) to "
            "those that are")[3:] in summary(manifest, "out")
    del manifest["counts"]["centers_off_label"]   # (a manifest of an earlier version)
    assert "no synapse label" not in summary(manifest, "out")


def test_a_run_that_writes_nothing_is_not_warned_of_centres_off_label():
    """Found by mutation review: without its 'any centre off label' test, a run writing no
    instance (0 of 0 is half or more) was warned that its centres are on no synapse label."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 6, "instances_selected": 6, "instances_written": 0,
                   "variants_written": 0, "failures": {"empty_target": 6},
                   "centers_off_label": 0},
        "config": {"formats": ["tfrecord"]}, "splits": {},
    }
    assert "no synapse label" not in summary(manifest, "out")


@pytest.mark.parametrize("splits, says", [
    ("train=1.0,val=0", "'val=0': a fraction must be above 0 and at most 1"),
    ("train=1.2,val=-0.2", "'train=1.2': a fraction must be above 0 and at most 1"),
    ("train=1.0,", "'': an empty pair (a stray comma?)"),
    ("a b=1.0", "'a b=1.0': a split name is letters, digits and '_'"),
    ("train\n=0.5,val=0.5", "'train\\n=0.5': a split name is letters, digits and '_'"),
    ("train=x", "'train=x': 'x' is not a number"),
    ("train", "'train': write name=fraction, e.g. train=0.8,val=0.1,test=0.1"),
])
def test_splits_refusals_say_what_is_wrong(small_data, tmp_path, capsys, splits, says):
    _fails(capsys, ["run"] + small_data.argv(tmp_path / "out", "--splits", splits),
           f"--splits {splits!r}: {says}")


def test_a_table_that_is_a_pipe_is_refused_as_one(small_data, tmp_path, capsys):
    """A run reads the table more than once; a pipe (`<(...)`, a FIFO) was refused as 'no data
    rows (a header only)', which was not true."""
    fifo = tmp_path / "table.fifo"
    os.mkfifo(fifo)
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(fifo)
    _fails(capsys, ["run"] + argv, f"--materialization {fifo}: not a regular file (a pipe?)",
           "write the table to a file")


def test_a_zero_byte_table_is_not_called_a_header_only(small_data, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(empty)
    err = _fails(capsys, ["run"] + argv, f"--materialization {empty}: empty (0 bytes)")
    assert "a header only" not in err


def test_a_volume_named_twice_in_missing_chunks_is_refused(small_data, tmp_path, capsys):
    _fails(capsys, ["run"] + small_data.argv(tmp_path / "out", "--missing-chunks",
                                              "source=zero,source=error"),
           "--missing-chunks source=zero,source=error: source is named twice")


def test_an_error_raised_while_handling_a_one_line_error_is_not_hidden():
    """Found by review: a bug raised while a bad-table error propagated (its __context__) was
    taken for that error, and Beam's log of it, the only trace of the bug, was filtered out."""
    import logging

    from synanno_datagen import beam_errors
    from synanno_datagen.transforms.table_formats import TableFormatError

    try:
        try:
            raise TableFormatError("t.csv: bad cell")
        except TableFormatError:
            {}["missing"]
    except KeyError as e:
        bug = e
    assert beam_errors.unwrapped(bug) is bug

    def record(message, exc=None):
        return logging.LogRecord("apache_beam.runners.worker.sdk_worker", logging.ERROR, "x", 1,
                                 message, (), (type(exc), exc, exc.__traceback__) if exc else None)

    assert beam_errors.not_a_one_line_error(record("Error in worker", bug))
    trace = ("Traceback (most recent call last):\n  File x\nsynanno_datagen.transforms."
             "table_formats.TableFormatError: t.csv: bad cell\n\nDuring handling of the above "
             "exception, another exception occurred:\n\nTraceback (most recent call last):\n"
             "  File y\nKeyError: 'missing'\n")
    assert beam_errors.not_a_one_line_error(record("Error processing instruction 3. Original "
                                            "traceback is\n" + trace))
    wrapped = RuntimeError("synanno_datagen.transforms.table_formats.TableFormatError: t.csv: "
                           "bad cell [while running 'ReadTable/ReadShards']")
    assert not beam_errors.not_a_one_line_error(record("x", wrapped))
    assert str(beam_errors.unwrapped(wrapped)) == "t.csv: bad cell"
    assert not beam_errors.not_a_one_line_error(record("Error processing instruction 3. Original "
                                                "traceback is\n" + trace.split("\n\nDuring")[0]))


def test_the_closing_line_names_the_error_behind_beams_traceback_text():
    """Found by review: with worker threads an unexpected crash's closing line said only
    'RuntimeError: Traceback (most recent call last):'."""
    from synanno_datagen import beam_errors

    wrapped = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
                           "KeyError: \"missing [while running 'ReadTable/ReadShards']\"\n")
    assert beam_errors.error_summary(wrapped) == "KeyError: \"missing\""
    assert beam_errors.error_summary(KeyError("missing")) == "KeyError: 'missing'"
    # found by review: a message's later 'Word: text' line was taken for the exception, and the
    # step note stayed in without worker threads
    multiline = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                             "ValueError: the real message\nHint: a second line\n")
    assert beam_errors.error_summary(multiline) == "ValueError: the real message"
    noted = KeyError("boom [while running 'TallySelected']")
    assert beam_errors.error_summary(noted) == 'KeyError: "boom"'
    lost = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                        "synanno_datagen.errors.LeaseLost: the lease is gone\nHint: x\n")
    assert type(beam_errors.unwrapped(lost)).__name__ == "LeaseLost"


def test_a_submitted_job_whose_closing_line_cannot_be_written_says_so(monkeypatch):
    """A launcher that only submitted the job (the job writes the dataset) and cannot write its
    closing line says so, as a finished run does (found by mutation review: keeping that for
    ok only passed every test)."""
    import io
    import sys

    from synanno_datagen import cli

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_generate", lambda *args: None)   # the runner only submitted
    monkeypatch.setattr(sys, "stdout", Full())
    with pytest.raises(cli.StdoutUnwritable) as raised:
        cli.generate("run", ["--output-dir", "gs://b/d"], None)
    assert raised.value.status == "submitted" and raised.value.error.errno == 28


def test_the_defaults_are_the_ones_readme_states():
    """README's table of run flags is what a user reads: each default it states as a value is
    the parser's (found by mutation review: another default for --variants or --shard-size-mb
    passed every test, while --help, README and the template's metadata said otherwise)."""
    import re
    from pathlib import Path

    from synanno_datagen.cli import output_parser
    from synanno_datagen.pipeline.options import run_parser

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("| flag | default | meaning |\n| --- | --- | --- |\n", 1)[1].split("\n\n")[0]
    actions = {o: a for p in (run_parser(), output_parser()) for a in p._actions
               for o in a.option_strings}
    stated = {}
    for line in table.splitlines():
        flag, default = (c.strip() for c in line.strip("|").split("|")[:2])
        name = re.match(r"`(--[a-z-]+)", flag).group(1)
        if re.fullmatch(r"[0-9. ]+|`[^`]+`|off", default) and \
                actions[name].default is not None:   # (None: found in the table, as x,y,z)
            stated[name] = default.strip("`")
    shown = {}
    for name in stated:
        value = actions[name].default
        if value is False:
            value = "off"
        elif isinstance(value, list):
            value = " ".join(map(str, value))
        elif isinstance(value, float) and value.is_integer():
            value = str(int(value))
        shown[name] = str(value)
    assert shown == stated
    assert {"--variants", "--max-seed-slices", "--crop-size", "--pad-value", "--seed",
            "--shard-size-mb", "--fetch-memory-mb", "--lease-hours", "--formats", "--splits",
            "--record-layout", "--compression", "--missing-chunks", "--incremental"} <= set(stated)


@pytest.mark.parametrize("layout, per_variant", [("instance", False), ("variant", True)])
def test_shards_are_sized_by_the_bytes_of_each_layouts_records(small_data, tmp_path, layout,
                                                              per_variant):
    """--shard-size-mb counts a shard's records: an instance record holds the source and target
    once, a variant record source, target and seed mask per variant (found by mutation review:
    sizing variant records as one passed every test, and made every shard --variants times
    larger than asked)."""
    import math

    from synanno_datagen.pipeline.config import check

    config, _ = check(small_data.argv(tmp_path / "out", "--variants", "3",
                                      "--record-layout", layout))
    voxels = math.prod(config.source_shape_zyx)
    assert config.source_shape_zyx == (4, 24, 24)
    assert config.bytes_per_instance == (3 * 3 * voxels if per_variant else 2 * voxels)


def test_quiet_leaves_the_callers_logging_level_as_it_was(small_data, tmp_path):
    """Found by review: main(['run', ..., '--quiet']) in a caller's process set the root
    logger to ERROR for good, so the caller's (and later tests') warnings vanished."""
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)
        assert main(["run"] + small_data.argv(tmp_path / "out", "--quiet", "--seed", "-1")) == 2
        assert root.level == logging.INFO
        assert main(["run"] + small_data.argv(tmp_path / "out", "--quiet", "--variants", "1")) \
            == 0
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_quiet_prints_only_the_closing_line(small_data, tmp_path, capsys, caplog):
    """--quiet's promise (its help): no progress, no summary, no warning, only the closing JSON
    line (found by mutation review: printing the summary, the progress lines or the warnings
    under --quiet passed every test)."""
    argv = small_data.argv(tmp_path / "out", "--quiet", "--variants", "1",
                           "--progress-interval", "0.001", "--formats", "npy",
                           "--compression", "gzip")   # a warning: TFRecord options idle
    assert main(["run"] + argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    lines = captured.out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "ok"


def test_a_refusal_is_one_line_without_the_warnings_of_checks_before_it(small_data, tmp_path,
                                                                       caplog):
    """Found by review: a table whose pre- and post-synaptic points were left out, with a
    warning each, and a --id-column naming no column printed both warnings before the error."""
    import subprocess
    import sys

    table = tmp_path / "t.csv"
    table.write_text("id,x,y,z,pre_pt_position,post_pt_position\n"
                     "11,120,220,14,[119 220 14],[121 220 14]\n")
    argv = ["--materialization", str(table), "--source-url", small_data.source_url,
            "--target-url", small_data.target_url, "--crop-size", "12", "12", "4"]
    refused = subprocess.run(
        [sys.executable, "-m", "synanno_datagen", "run", *argv, "--id-column", "nope",
         "--output-dir", str(tmp_path / "refused")], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"synanno-datagen: error: --id-column nope: no such column in {table}"
        " (found: id,x,y,z,pre_pt_position,post_pt_position)"], refused.stderr
    # a run that passes its checks still says so, once each, before it works
    with caplog.at_level(logging.WARNING):
        assert main(["run", *argv, "--output-dir", str(tmp_path / "out")]) == 0
    left_out = [r.getMessage() for r in caplog.records if "point is left out" in r.getMessage()]
    assert [m.split(": the ")[1][:3] for m in left_out] == ["pre", "pos"]
    assert (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("raised, told", [("UsageError", False), ("ConfigError", False),
                                          ("LeaseHeld", False), ("RuntimeError", True),
                                          (None, True)])
def test_warnings_held_during_the_checks_are_dropped_only_for_a_refusal(raised, told):
    """Found by mutation review: a busy --output-dir (LeaseHeld, exit 3) could print the checks'
    warnings before its one line, and a failure that is no refusal (a crash, storage trouble)
    could drop the warnings that may explain it, and no test saw either."""
    from synanno_datagen import errors
    from synanno_datagen.pipeline.run import records_held_until_checked

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    kept, root = Kept(), logging.getLogger()
    root.addHandler(kept)
    try:
        with pytest.raises(Exception) if raised else contextlib.nullcontext():
            with records_held_until_checked():
                logging.getLogger("synanno_datagen.test").warning("a check's warning")
                assert kept.messages == []   # held until the checks end
                if raised:
                    raise getattr(errors, raised, RuntimeError)("the check")
        logging.getLogger("synanno_datagen.test").warning("after")
    finally:
        root.removeHandler(kept)
    assert kept.messages == (["a check's warning"] if told else []) + ["after"]
