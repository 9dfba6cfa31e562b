"""``inspect``: facts, text, JSON and plots of a real generated dataset, checked against the
manifest, the index and the dead-letter file read here independently."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synanno_datagen.cli import main
from tests.conftest import BAD_ROWS, GOOD_IDS, assert_usage_error, rewrite_listed
from tests.test_pipeline import read_records, run_pipeline
from synanno_datagen.transforms.seeds import SeedModel, seed_inclusion_probabilities

VARIANTS = 3


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _index(out: Path, manifest: dict):
    return [json.loads(line) for f in manifest["files"]["index"]
            for line in (out / f["path"]).read_text().splitlines()]


def _inspect_json(capsys, *argv) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_summary_states_the_manifest_numbers(views_dataset, capsys):
    out, manifest = views_dataset, _manifest(views_dataset)
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    counts = manifest["counts"]
    assert (f"rows_read {counts['rows_read']}, rows_rejected {counts['rows_rejected']}, "
            f"rows_not_selected 0, instances_selected {counts['instances_selected']}, "
            f"instances_written 5, failed 5, variants_written 15") in text
    asked = manifest["config"]["splits"]
    assert manifest["config"]["split_by"] == "block" and "splits (by work block: " in text
    for name, split in manifest["splits"].items():
        share = round(100 * split["instances"] / 5)
        assert (f"  {name:<6} {split['instances']} instances, {split['records']} records, "
                f"{split['shards']} shards, {split['bytes'] / 1e6:.1f} MB; {share}% of instances "
                f"(asked {100 * asked[name]:.0f}%)") in text.splitlines()
    source, target = manifest["config"]["source_url"], manifest["config"]["target_url"]
    assert source.startswith("file://") and target.startswith("file://")
    assert f"source    {source} mip 0, 4.0x4.0x33.0 nm, chunks 32x32x4, uint8 raw" in text
    assert f"target    {target} mip 0, 8.0x8.0x33.0 nm, chunks 16x16x4" in text
    assert "failures  5" in text and "  duplicate_id 1" in text
    assert "    id 21 (row 6): column 'x' is not a number: 'n/a'" in text
    assert "checks    manifest, index and dead letters agree" in text
    assert "chunks read as zeros" not in text   # none were (found by mutation review)
    # 3 variants: the expected counts are the law before redraws of repeated sets, and say so
    assert ("  (expected: the declared law for each variant; variants after the first are "
            "redrawn if they repeat an earlier one, which favours more slices)") in text


def test_json_holds_the_same_facts(views_dataset, capsys):
    out, manifest = views_dataset, _manifest(views_dataset)
    facts = _inspect_json(capsys, out)
    assert set(facts) == {"dataset", "generator", "created_utc", "config", "volumes", "arrays",
                          "counts", "failures", "splits", "npy", "index", "seed_model",
                          "problems", "plots"}
    assert facts["npy"] == {k: manifest["npy"][k] for k in ("files", "bytes")}
    assert facts["dataset"] == str(out / "manifest.json") and facts["plots"] == []
    assert facts["counts"] == {k: v for k, v in manifest["counts"].items() if k != "failures"}
    assert {r: f["count"] for r, f in facts["failures"].items()} == manifest["counts"]["failures"]
    assert {r: [e["instance_id"] for e in f["examples"]] for r, f in facts["failures"].items()} \
        == {reason: [sid] for sid, (_, reason) in BAD_ROWS.items()}
    for name in ("source", "target"):
        for key in ("url", "mip", "resolution_nm_xyz", "chunk_size_xyz"):
            assert facts["volumes"][name][key] == manifest["volumes"][name][key]
    assert facts["volumes"]["source"]["url"] == manifest["config"]["source_url"]
    assert facts["splits"] == {n: {k: s[k] for k in ("instances", "records", "shards", "bytes")}
                               for n, s in manifest["splits"].items()}
    assert facts["config"]["variants"] == VARIANTS
    assert facts["config"]["crop_size_xyz"] == [12, 12, 4]
    assert facts["index"]["instances"] == len(GOOD_IDS)
    assert facts["index"]["variants"] == VARIANTS * len(GOOD_IDS)
    assert facts["seed_model"] == manifest["seed_model"] and facts["problems"] == []


def test_histograms_equal_what_the_index_says(views_dataset, capsys):
    out, manifest = views_dataset, _manifest(views_dataset)
    index = _index(out, manifest)
    facts = _inspect_json(capsys, out)["index"]
    variants = [s for e in index for s in e["seed_slices"]]
    by_count = Counter(len(s) for s in variants)
    assert facts["seed_count"]["count"] == [1, 2, 3]
    assert facts["seed_count"]["observed"] == [by_count[c] for c in (1, 2, 3)]
    by_z = Counter(z for s in variants for z in s)
    assert facts["seed_z"]["observed"] == [by_z[z] for z in range(4)]
    # Expected: each variant's law given its instance's foreground slices, summed.
    model = SeedModel(max_seed_slices=3)
    want_z = sum(VARIANTS * seed_inclusion_probabilities(model, 4, e["foreground_slices"])
                 for e in index)
    np.testing.assert_allclose(facts["seed_z"]["expected"], want_z)
    assert np.isclose(sum(facts["seed_count"]["expected"]), len(variants))
    fg = sorted(e["foreground_voxels"] for e in index)
    summary = facts["foreground_voxels"]
    assert (summary["min"], summary["max"]) == (fg[0], fg[-1])
    assert summary["median"] == float(np.median(fg))
    assert sum(summary["histogram"]["counts"]) == len(fg) == len(GOOD_IDS)


def test_index_foreground_slices_are_the_slices_where_the_target_has_voxels(views_dataset):
    out, manifest = views_dataset, _manifest(views_dataset)
    by_id = {e["instance_id"]: e for e in _index(out, manifest)}
    for r in read_records(out):
        assert by_id[r["instance_id"]]["foreground_slices"] == \
            [z for z in range(r["target"].shape[0]) if r["target"][z].any()]
        assert set(r["seed_slices"]) <= set(by_id[r["instance_id"]]["foreground_slices"])


def test_plots_are_small_deterministic_pngs(views_dataset, tmp_path, capsys):
    out = views_dataset
    facts = _inspect_json(capsys, out, "--plots", tmp_path / "a")
    assert main(["inspect", str(out), "--plots", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    names = ["seed_count.png", "seed_z.png", "foreground_voxels.png", "failures.png"]
    assert facts["plots"] == [str(tmp_path / "a" / n) for n in names]
    for name in names:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        assert f"plot      {b}" in printed
        assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert a.read_bytes() == b.read_bytes()
        assert 2_000 < a.stat().st_size < 100_000
        with Image.open(a) as image:
            assert image.size == (480, 288)       # 6 x 3.6 inches at 80 dpi


def test_an_incremental_root_is_inspected_through_latest(small_data, tmp_path, capsys):
    root = tmp_path / "root"
    _, manifest = run_pipeline(small_data.argv(root, "--variants", "1", "--incremental"))
    facts = _inspect_json(capsys, root)
    assert facts["dataset"] == str(root / "runs" / "00001" / "manifest.json")
    assert facts["index"]["instances"] == manifest["counts"]["instances_written"] == 5
    assert facts["problems"] == []


def test_a_run_of_a_root_opens_by_any_local_path(small_data, tmp_path, monkeypatch):
    """``runs/00001`` from the root, ``.`` from the run, or an unnormalised path: all name the
    same run, whose paths are relative to the root two levels up."""
    from synanno_datagen.reading.dataset import open_dataset

    root = tmp_path / "root"
    run_pipeline(small_data.argv(root, "--variants", "1", "--incremental"))
    want = open_dataset(str(root / "runs" / "00001"))
    for where, location in ((root, "runs/00001"), (root / "runs" / "00001", "."),
                            (root / "runs" / "00001", "./"), (tmp_path, "./root/runs//00001")):
        monkeypatch.chdir(where)
        got = open_dataset(location)
        assert (got.root, got.manifest) == (str(root), want.manifest)
        assert got.manifest_path == f"{location.rstrip('/')}/manifest.json"  # as given


def test_a_dataset_is_named_as_given(views_dataset, capsys, monkeypatch):
    monkeypatch.chdir(views_dataset.parent)
    facts = _inspect_json(capsys, views_dataset.name)
    assert facts["dataset"] == f"{views_dataset.name}/manifest.json"


def test_an_npy_only_dataset_reports_its_npy_files(small_data, tmp_path, capsys):
    """Its shards are index shards: no "0 records, 0.0 MB" that reads as an empty dataset."""
    out = tmp_path / "out"
    _, manifest = run_pipeline(small_data.argv(out, "--variants", "2", "--formats", "npy"))
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    files = sorted(p for p in (out / "npy").rglob("*.npy"))
    assert len(files) == manifest["npy"]["files"] == 4 * len(GOOD_IDS)
    assert f"npy       {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB" \
        in text.splitlines()
    for name, split in manifest["splits"].items():
        assert any(line.startswith(f"  {name:<6} {split['instances']} instances, "
                                   f"{split['shards']} index shards") for line in text.splitlines())
    assert " records, " not in text
    assert "redrawn" in text   # 2 variants


def test_not_a_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    assert_usage_error(capsys, ["inspect", str(tmp_path / "nowhere")],
                       "not a dataset directory", "no manifest.json")
    (tmp_path / "empty").mkdir()
    assert_usage_error(capsys, ["inspect", str(tmp_path / "empty")], "not a dataset directory")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    assert_usage_error(capsys, ["inspect", str(tmp_path / "broken")], "cannot read the manifest")
    assert_usage_error(capsys, ["inspect"], "OUTPUT_DIR")


def test_a_missing_index_shard_is_one_line_and_exit_2(views_dataset, tmp_path, capsys):
    import shutil

    out, manifest = views_dataset, _manifest(views_dataset)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("npy", "tfrecord"))
    (copy / manifest["files"]["index"][0]["path"]).unlink()
    assert_usage_error(capsys, ["inspect", str(copy)], manifest["files"]["index"][0]["path"],
           "cannot read it")


def test_chunks_read_as_zeros_are_reported(small_data, tmp_path, capsys):
    chunk = Path(small_data.source_url[len("file://"):]) / "4_4_33" / "232-264_432-464_14-18"
    chunk.unlink()  # touched by the crops of synapses 11 and 12 only
    out = tmp_path / "out"
    _, manifest = run_pipeline(small_data.argv(out, "--variants", "1", "--missing-chunks",
                                               "zero"))
    assert main(["inspect", str(out)]) == 0
    n = manifest["counts"]["filled_chunks"]["source"]
    assert n > 0
    text = capsys.readouterr().out
    assert (f"chunks read as zeros (absent from storage): source {n} chunks, target 0 chunks"
            in text)
    assert "redrawn" not in text   # one variant: nothing is redrawn


def test_paths_that_leave_the_dataset_are_refused_not_read(small_data, tmp_path, capsys):
    """A manifest or index line is data from storage: a listed path that climbs out of the
    dataset ('..', absolute, another scheme) is refused, not opened (it read any file)."""
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.errors import DatasetError

    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1")) == 0
    capsys.readouterr()
    (tmp_path / "outside.jsonl").write_text('{"instance_id": 1}\n')
    manifest = json.loads((out / "manifest.json").read_text())
    for bad in ("../outside.jsonl", str(tmp_path / "outside.jsonl"), "index/../../outside.jsonl",
                "file:///etc/passwd"):
        changed = json.loads(json.dumps(manifest))
        changed["files"]["index"][0]["path"] = bad
        (out / "manifest.json").write_text(json.dumps(changed))
        assert_usage_error(capsys, ["inspect", str(out)], f"lists the path {bad!r}",
                           "which is not inside the dataset")
        with pytest.raises(DatasetError, match="not inside the dataset"):
            open_dataset(str(out)).index()


@pytest.mark.parametrize("run_dir", ["Downloads/ds", "runs/../..", "runs/1/x", "/abs"])
def test_a_run_dir_that_is_not_a_runs_folder_cannot_move_the_root(small_data, tmp_path, capsys,
                                                                  run_dir):
    """A run's manifest names its folder (runs/NNNNN); open directly, the root is the folder two
    levels up. Any other run_dir would make an ancestor of the user's choosing the root, and
    every listed path inside it (found by review: inspect printed a file beside the dataset)."""
    out = tmp_path / "home" / "Downloads" / "ds"
    assert main(["run"] + small_data.argv(out, "--variants", "1")) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["incremental"] = {"run_dir": run_dir}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert_usage_error(capsys, ["inspect", str(out)], "cannot read the manifest",
                       f"run_dir {run_dir!r}", "runs/NNNNN")


def test_a_run_folder_copied_under_another_name_or_root_is_refused_in_one_line(
        small_data, tmp_path, capsys):
    """A run's folder opened directly is ROOT/<its run_dir>; copied under another name, or as
    another run of another root, the folder two levels up is no root of it (its paths would be
    read from another dataset, or none): refused, naming the folder and its run_dir (found by a
    mutation review: taking the root two levels up without that check passed every test)."""
    import shutil

    from synanno_datagen import DatasetError, open_dataset

    root = tmp_path / "root"
    assert main(["run"] + small_data.argv(root, "--variants", "1", "--incremental")) == 0
    capsys.readouterr()
    for copy in (tmp_path / "x" / "copy_of_run", tmp_path / "rootB" / "runs" / "00007"):
        shutil.copytree(root / "runs" / "00001", copy)
        message = f"{copy} holds the manifest of incremental run runs/00001 but is not " \
                  "ROOT/runs/00001"
        with pytest.raises(DatasetError, match=re.escape(message)):
            open_dataset(str(copy))
        assert_usage_error(capsys, ["inspect", str(copy)], "cannot read the manifest", message)


def test_a_manifest_with_absurd_arrays_or_dead_letters_is_refused_in_one_line(small_data,
                                                                             tmp_path, capsys):
    """Found by review: an arrays.shape_zyx of 10**9 slices made inspect exhaust memory, and a
    dead-letter line without a reason was a KeyError traceback."""
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1")) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "arrays": [4, 24, 24]}))
    assert_usage_error(capsys, ["inspect", str(out)], "arrays.shape_zyx None")
    for shape in ([10**9, 24, 24], [4, 0, 24], [4, "24", 24], [4, 24]):
        (out / "manifest.json").write_text(json.dumps({**manifest, "arrays": {
            **manifest["arrays"], "shape_zyx": shape}}))
        assert_usage_error(capsys, ["inspect", str(out)], "arrays.shape_zyx",
                           "not a crop's shape")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "dead_letter.jsonl").write_text('{"details": "x"}\n')
    manifest["files"]["dead_letter"]["bytes"] = len('{"details": "x"}\n')
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert_usage_error(capsys, ["inspect", str(out)], "dead_letter.jsonl",
                       "a line without a reason")


def test_a_manifest_missing_a_part_inspect_reads_is_refused_in_one_line(small_data, tmp_path,
                                                                        capsys):
    """Found by review: without ``volumes``, with a ``seed_model`` of other keys or with
    ``config.splits`` a string, inspect printed a KeyError or AttributeError traceback."""
    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1")) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    for damaged, what in (({k: v for k, v in manifest.items() if k != "volumes"}, "'volumes'"),
                          ({**manifest, "seed_model": {"x": 1}}, "KeyError"),
                          ({**manifest, "config": {**manifest["config"], "splits": "train"}},
                           "AttributeError")):
        (out / "manifest.json").write_text(json.dumps(damaged))
        for argv in (["inspect", str(out)], ["inspect", str(out), "--json"]):
            assert_usage_error(capsys, argv, f"{out}/manifest.json (or an index or "
                               "dead-letter line it lists) lacks or garbles a part inspect "
                               "reads (", what, "copy the file again")


def test_a_hostile_dataset_cannot_make_inspect_exhaust_memory_or_trace_back(small_data,
                                                                           tmp_path, capsys):
    """Found by review: a max_seed_slices of 3e8 in a shared manifest took 24 GB in inspect;
    repeated foreground slices passed; JSON nested past the stack was a RecursionError
    traceback; a record's length cap came from the manifest alone."""
    from synanno_datagen.reading.records import max_record_bytes

    out = tmp_path / "out"
    assert main(["run"] + small_data.argv(out, "--variants", "1", "--formats", "npy")) == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    depth = manifest["arrays"]["shape_zyx"][0]
    hostile = {**manifest, "seed_model": {**manifest["seed_model"], "max_seed_slices": 3 * 10**8}}
    (out / "manifest.json").write_text(json.dumps(hostile))
    assert main(["inspect", str(out), "--json"]) == 0      # the histogram stops at the depth
    facts = json.loads(capsys.readouterr().out)
    assert facts["index"]["seed_count"]["count"] == list(range(1, depth + 1))
    (out / "manifest.json").write_text(json.dumps(manifest))
    (index,) = sorted((out / "index").iterdir())
    relative = f"index/{index.name}"
    lines = index.read_text().splitlines()
    first = json.loads(lines[0])
    # repeated, past the crop's last slice or before its first (found by a mutation review: a
    # slice at z = depth passed the check, named only as an IndexError further on)
    for slices in ([1, 1, 1], [0, depth], [-1, 0]):
        rewrite_listed(out, relative, "\n".join(
            [json.dumps({**first, "foreground_slices": slices})] + lines[1:]) + "\n")
        assert_usage_error(capsys, ["inspect", str(out)], "foreground_slices of id "
                           f"{first['instance_id']} are not distinct z indices of a crop of "
                           f"{depth}")
    rewrite_listed(out, relative, "[" * 100_000 + "]" * 100_000 + "\n" + "\n".join(lines[1:])
                   + "\n")
    assert_usage_error(capsys, ["inspect", str(out)], f"{index}: cannot read it")
    assert max_record_bytes({"arrays": {"shape_zyx": [65536] * 3},
                             "config": {"variants": 4}}) == 2**31 - 1


@pytest.mark.parametrize("foreign", ['{"name": "another tool"}', "[1, 2]",
                                     '{"config": {}, "counts": {}}'])
def test_a_manifest_of_another_tool_is_refused_in_one_line(tmp_path, capsys, foreign):
    (tmp_path / "manifest.json").write_text(foreign)
    for command in (["inspect", str(tmp_path)], ["preview", str(tmp_path), "--out",
                                                 str(tmp_path / "p.png")]):
        assert_usage_error(capsys, command, f"{tmp_path}", "not a manifest of synanno-datagen")


def test_preview_refuses_a_negative_seed_in_one_line(views_dataset, tmp_path, capsys):
    assert_usage_error(capsys, ["preview", str(views_dataset), "--seed", "-5", "--out",
                                str(tmp_path / "p.png")], "--seed -5")


def test_preview_refuses_an_out_that_is_not_a_png(views_dataset, tmp_path, capsys):
    """It wrote PNG bytes into x.jpg."""
    assert_usage_error(capsys, ["preview", str(views_dataset), "--out", str(tmp_path / "x.jpg")],
                       "--out", "x.jpg: preview writes a PNG; name it .png")
    assert not (tmp_path / "x.jpg").exists()


def test_the_manifest_file_opens_its_dataset(views_dataset, small_data, tmp_path, capsys):
    """Found by review: run prints ``manifest: DIR/manifest.json``, and passing that on was
    refused as 'not a dataset directory (no manifest.json)'."""
    from synanno_datagen.reading.dataset import open_dataset

    assert _inspect_json(capsys, views_dataset / "manifest.json") == \
        _inspect_json(capsys, views_dataset)
    root = tmp_path / "root"
    run_pipeline(small_data.argv(root, "--variants", "1", "--incremental"))
    run = open_dataset(str(root / "runs" / "00001" / "manifest.json"))
    assert (run.root, run.manifest) == (str(root), open_dataset(str(root)).manifest)
    assert_usage_error(capsys, ["inspect", str(tmp_path / "nowhere" / "manifest.json")],
                       "not a dataset directory")


def test_a_dataset_opens_by_its_file_url_and_a_root_manifest_path(views_dataset, capsys,
                                                                 monkeypatch):
    """Found by review: readers refused the file:/// URLs run takes for --output-dir, and
    /manifest.json opened the current directory's dataset."""
    from synanno_datagen import DatasetError
    from synanno_datagen.reading.dataset import open_dataset

    want = _inspect_json(capsys, views_dataset)
    got = _inspect_json(capsys, f"file://{views_dataset}")
    assert {k: v for k, v in got.items() if k != "dataset"} == \
        {k: v for k, v in want.items() if k != "dataset"}
    assert open_dataset(f"file://{views_dataset}/manifest.json").manifest == \
        open_dataset(str(views_dataset)).manifest
    monkeypatch.chdir(views_dataset)
    with pytest.raises(DatasetError, match="^/: not a dataset directory"):
        open_dataset("/manifest.json")


def test_a_reader_that_stops_reading_gets_no_traceback(views_dataset):
    """Found by review: `inspect DIR | head -1` could end with a BrokenPipeError traceback. Here
    the pipe's reader has gone before the command writes."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "synanno_datagen", "inspect",
                               str(views_dataset)], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 1


@pytest.mark.parametrize("command", ["inspect", "preview"])
def test_a_full_stdout_is_one_line_not_a_traceback(views_dataset, tmp_path, command):
    """Found by review: `inspect DIR >/dev/full` ended in an OSError traceback."""
    import subprocess
    import sys

    extra = ["--out", str(tmp_path / "p.png")] if command == "preview" else []
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "synanno_datagen", command,
                               str(views_dataset), *extra], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr == (
        "synanno-datagen: cannot write to stdout ([Errno 28] No space left on device)\n")


def test_inspect_facts_from_one_pass_over_streams_equal_those_of_lists(views_dataset):
    """Found by review: inspect held every index line and dead letter (about 4.5 and 2.8 KB
    each: gigabytes for an H01 root). The facts are added up line by line from one pass over
    each file, and equal those of the lists."""
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.reading.stats import dataset_facts

    ds = open_dataset(str(views_dataset))
    streamed = dataset_facts(ds.manifest, ds.iter_index(), ds.iter_dead_letters(),
                             location="x")
    listed = dataset_facts(ds.manifest, ds.index(), ds.dead_letters(), location="x")
    assert streamed == listed and streamed["index"]["instances"] == len(ds.index()) > 0
    assert streamed["problems"] == []


def test_a_manifest_with_an_infinite_count_is_named_as_damaged(views_dataset, tmp_path):
    """Found by review: npy counts of Infinity (JSON Python reads) gave an OverflowError
    traceback."""
    import shutil

    from synanno_datagen.errors import DatasetError
    from synanno_datagen.reading.inspection import inspect_dataset

    copy = tmp_path / "copy"
    shutil.copytree(views_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["npy"]["files"] = float("inf")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="lacks or garbles a part inspect reads"):
        inspect_dataset(str(copy))


def test_a_dead_letter_without_an_id_and_one_variant_read_plainly(views_dataset):
    """Found by review: an invalid_id example printed as 'id None'; with one variant the plot
    titles still said variants after the first are redrawn (the text did not)."""
    from matplotlib.figure import Figure

    from synanno_datagen.reading.inspection import format_facts, inspect_dataset
    from synanno_datagen.reading.plots import draw_seed_count, draw_seed_z

    facts = inspect_dataset(str(views_dataset))
    facts["failures"]["invalid_id"] = {"count": 1, "examples": [
        {"instance_id": None, "table_row": 3, "details": "id 'abc' is not an integer"}]}
    text = format_facts(facts)
    assert "    no id (row 3): id 'abc' is not an integer" in text and "None" not in text
    # a run whose every instance failed: no shares of zero instances (found by a mutation
    # review: unguarded, the division was a ZeroDivisionError traceback)
    empty = {**facts, "splits": {name: {**s, "instances": 0}
                                 for name, s in facts["splits"].items()}}
    assert [line for line in format_facts(empty).splitlines() if line.startswith("  train ")] == [
        f"  train  0 instances, {empty['splits']['train']['records']} records, "
        f"{empty['splits']['train']['shards']} shards, "
        f"{empty['splits']['train']['bytes'] / 1e6:.1f} MB"]
    for variants, noted in ((3, True), (1, False)):
        facts["config"]["variants"] = variants
        # the text too (found by mutation review: its note was untested)
        assert ("redrawn" in format_facts(facts)) == noted, variants
        for draw in (draw_seed_count, draw_seed_z):
            ax = Figure().add_subplot()
            draw(ax, facts)
            assert ("redrawn" in ax.get_title()) == noted, (variants, ax.get_title())


# Found by mutation review: each of the mutants these tests name passed every test (expected
# seed counts from the crop's depth, the median as the mean, reversed histogram counts, reasons
# least first, split or dead-letter disagreements not found, the text and plots showing observed
# values as expected, failure bars as the examples kept).

def test_expected_seed_counts_follow_each_instances_foreground():
    from synanno_datagen.reading.stats import tally_index

    entries = [{"instance_id": 1, "foreground_slices": [1], "seed_slices": [[1]],
                "foreground_voxels": 5, "split": "train"},
               {"instance_id": 2, "foreground_slices": [1, 2], "seed_slices": [[1], [2]],
                "foreground_voxels": 7, "split": "train"}]
    tally = tally_index(entries, SeedModel(max_seed_slices=3), 4)
    np.testing.assert_allclose(tally.seed_count()["expected"], [1 + 2 * 2 / 3, 2 / 3, 0])


def test_variants_that_repeat_an_earlier_ones_seed_slices_are_told(small_data, tmp_path,
                                                                   capsys):
    """Found by review: an instance whose foreground allows fewer distinct seed sets than
    --variants gives some identical training samples, as README says, and nothing told how
    many. Blobs of two slices allow three sets: a fourth variant repeats one."""
    out = tmp_path / "out"
    run_pipeline(small_data.argv(out, "--variants", "4"))
    index = _index(out, _manifest(out))
    repeats = [4 - len({tuple(s) for s in e["seed_slices"]}) for e in index]
    assert sum(repeats) > 0 and 0 in repeats
    facts = _inspect_json(capsys, out)
    assert facts["index"]["repeated_variants"] == {
        "variants": sum(repeats), "instances": sum(1 for r in repeats if r)}
    assert main(["inspect", str(out)]) == 0
    n = sum(1 for r in repeats if r)
    assert (f"variants repeating an earlier one's seed slices  {sum(repeats)} (of {n} instances "
            "whose foreground slices allow fewer distinct sets than variants): identical "
            "training samples") in capsys.readouterr().out.splitlines()


def test_no_repeated_variants_no_line(views_dataset, capsys):
    assert _inspect_json(capsys, views_dataset)["index"]["repeated_variants"] == {
        "variants": 0, "instances": 0}
    assert main(["inspect", str(views_dataset)]) == 0
    assert "repeating" not in capsys.readouterr().out


def test_repeated_variants_count_every_repeat_and_each_instance_once():
    """Found by mutation review: with one repeat per instance in the run above, counting an
    instance once per repeat passed. Four variants of two sets: two repeat, one instance."""
    from synanno_datagen.reading.stats import tally_index

    entries = [{"instance_id": 1, "foreground_slices": [1, 2], "seed_slices": [[1], [2], [1], [1]],
                "foreground_voxels": 5, "split": "train"},
               {"instance_id": 2, "foreground_slices": [1, 2, 3],
                "seed_slices": [[1], [2], [3], [1, 2]], "foreground_voxels": 7, "split": "train"}]
    tally = tally_index(entries, SeedModel(max_seed_slices=3), 4)
    assert tally.repeats == {"variants": 2, "instances": 1}


def test_foreground_summary_mean_and_histogram():
    from synanno_datagen.reading.stats import describe_values

    described = describe_values([1, 1, 1, 10], bins=3)
    assert described["mean"] == 3.25 and described["median"] == 1.0
    assert described["histogram"] == {"counts": [3, 0, 1], "edges": [1, 4, 7, 10]}


def test_failure_reasons_most_first():
    from synanno_datagen.reading.stats import failures_by_reason

    assert list(failures_by_reason([{"reason": "b"}, {"reason": "a"}, {"reason": "a"}])) == \
        ["a", "b"]
    # three examples of each, the first three (found by mutation review: two passed)
    five = failures_by_reason([{"reason": "a", "instance_id": i} for i in range(5)])
    assert five["a"]["count"] == 5
    assert [e["instance_id"] for e in five["a"]["examples"]] == [0, 1, 2]


def _split_manifest(train, val, failures):
    return {"splits": {"train": {"instances": train}, "val": {"instances": val}},
            "counts": {"failures": failures}}


def test_split_and_dead_letter_disagreements_are_problems_even_when_totals_agree():
    from synanno_datagen.reading.stats import consistency_problems

    problems = consistency_problems(_split_manifest(2, 3, {}), {"train": 3, "val": 2}, 0)
    assert any("split train" in p for p in problems) and any("split val" in p for p in problems)
    assert consistency_problems(_split_manifest(1, 0, {"x": 1}), {"train": 1}, 2)
    assert consistency_problems(_split_manifest(1, 0, {"x": 1}), {"train": 1}, 1) == []
    # index lines of a split the manifest does not list (found by mutation review)
    assert consistency_problems(_split_manifest(1, 0, {}), {"train": 1, "test": 2}, 0) == [
        "splits list 1 instances, the index has 3"]


def _axes():
    from matplotlib.figure import Figure

    return Figure().add_subplot()


def _plotted_facts():
    from synanno_datagen.reading.stats import describe_values

    return {"config": {"variants": 1},
            "index": {"instances": 3,
                      "seed_count": {"count": [1, 2], "observed": [5, 1],
                                     "expected": [4.0, 2.0]},
                      "seed_z": {"z": [0, 1, 2], "observed": [1, 4, 1],
                                 "expected": [2.0, 2.0, 2.0]},
                      "foreground_voxels": describe_values([10, 20, 200], bins=2)},
            "failures": {"a": {"count": 7, "examples": [{}]},
                         "b": {"count": 2, "examples": [{}]}}}


@pytest.mark.parametrize("kind", ["seed_count", "seed_z"])
def test_plots_draw_observed_bars_and_the_expected_line(kind):
    from synanno_datagen.reading import plots

    axes, facts = _axes(), _plotted_facts()
    getattr(plots, "draw_" + kind)(axes, facts)
    assert [p.get_height() for p in axes.patches] == facts["index"][kind]["observed"]
    assert list(axes.lines[0].get_ydata()) == facts["index"][kind]["expected"]
    # the title counts what the bars count, not bars (found by mutation review)
    what = "variants" if kind == "seed_count" else "seed slices"
    assert f", {sum(facts['index'][kind]['observed'])} {what}" in axes.get_title()


def test_failure_bars_are_the_counts_and_foreground_is_on_the_voxel_axis():
    from synanno_datagen.reading import plots

    axes = _axes()
    plots.draw_failures(axes, _plotted_facts())
    assert sorted(p.get_width() for p in axes.patches) == [2, 7]
    assert "9 in all" in axes.get_title()
    axes = _axes()
    plots.draw_foreground_voxels(axes, _plotted_facts())
    low, high = axes.get_xlim()
    assert low <= 10 and high >= 200


def test_the_text_states_the_expected_numbers_of_the_facts(views_dataset, capsys):
    facts = _inspect_json(capsys, views_dataset)["index"]
    assert main(["inspect", str(views_dataset)]) == 0
    text = capsys.readouterr().out
    z = facts["seed_z"]
    assert "  expected               " + " ".join(f"{e:.0f}" for e in z["expected"]) in text
    s = facts["seed_count"]
    assert "seed slices per variant  " + ", ".join(
        f"{c}: {o} (expected {e:.0f})"
        for c, o, e in zip(s["count"], s["observed"], s["expected"])) in text
    assert f"mean {facts['foreground_voxels']['mean']:.0f}," in text


VIEWS_WITHOUT_BEAM = """
import sys
from synanno_datagen.cli import main
dataset, plots, png = sys.argv[1:]
assert main(["inspect", dataset, "--plots", plots]) == 0
assert main(["preview", dataset, "--out", png]) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam"))
"""


def test_views_written_to_local_files_load_no_beam(views_dataset, tmp_path):
    """Found by review: inspect --plots and preview --out imported Beam to write their PNGs (a
    second or two of start-up on a training machine, for a local file)."""
    import subprocess
    import sys

    plots, png = tmp_path / "new" / "plots", tmp_path / "other" / "p.png"
    done = subprocess.run([sys.executable, "-c", VIEWS_WITHOUT_BEAM, str(views_dataset),
                           str(plots), str(png)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        ["seed_count.png", "seed_z.png", "foreground_voxels.png", "failures.png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
