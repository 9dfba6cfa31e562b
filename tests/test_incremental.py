"""Incremental roots across runs with other tuning: what a dataset is made of stays its own."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from synanno_datagen.cli import main
from synanno_datagen.transforms.shards import block_key, split_of
from tests.conftest import CROP, GOOD_IDS, TARGET_OFFSET

SPLITS = (("train", 0.5), ("test", 0.5))
FIRST_GRID = (16, 16, 4)


def _latest(root: Path) -> dict:
    return json.loads((root / (root / "LATEST").read_text().strip()).read_text())


def _table(path: Path, rows) -> Path:
    """A CSV of ``rows`` ({column: text}, the small table's columns) at ``path``."""
    rows = list(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _entries(root: Path, manifest: dict) -> dict:
    """{instance id: index line} of every run the manifest lists."""
    out = {}
    for f in manifest["files"]["index"]:
        for line in (root / f["path"]).read_text().splitlines():
            entry = json.loads(line)
            out[entry["instance_id"]] = entry
    return out


def test_block_splits_keep_the_datasets_grid_when_work_blocks_change(small_data, tmp_path):
    """A later run with another --block-size (or --fetch-memory-mb: both only tune fetching)
    still splits by the blocks the dataset was made with, so crops that overlap, here those of
    synapses 11 and 12, stay in one split. The grid is in the manifest; a manifest written before
    it was recorded gives it through its config."""
    root = tmp_path / "root"
    rows = list(csv.DictReader(open(small_data.table_path)))
    first = _table(tmp_path / "first.csv", [next(r for r in rows if r["id"] == "11")])
    common = ["--seed", "2", "--splits", "train=0.5,test=0.5", "--incremental", "--variants", "1"]
    argv = small_data.argv(root, *common, "--block-size", *map(str, FIRST_GRID))
    argv[argv.index("--materialization") + 1] = str(first)
    assert main(["run"] + argv) == 0
    m1 = _latest(root)
    assert m1["records"]["split_block_size_xyz"] == list(FIRST_GRID)
    del m1["records"]["split_block_size_xyz"]          # as a manifest of an earlier version
    (root / "runs/00001/manifest.json").write_text(json.dumps(m1))
    for extra in (["--block-size", "48", "48", "12"], ["--fetch-memory-mb", "64"]):
        assert main(["run"] + small_data.argv(root, *common, *extra)) == 0
        m = _latest(root)
        assert m["incremental"]["extends"] is not None
        assert m["records"]["split_block_size_xyz"] == list(FIRST_GRID)
    entries = _entries(root, _latest(root))
    assert sorted(entries) == sorted(GOOD_IDS)
    for instance_id, entry in entries.items():
        block = block_key(entry["center_xyz"], TARGET_OFFSET, FIRST_GRID)
        assert entry["split"] == split_of(2, instance_id, block, SPLITS, "block"), instance_id
    assert entries[11]["split"] == entries[12]["split"]


def test_npy_totals_of_a_root_count_every_runs_files(small_data, tmp_path):
    """The manifest's ``npy`` totals, like its ``splits``, are the dataset's: every run's, and
    so are those the readers (``inspect``) report. Three nights: from the third on, totals
    added up over the runs would count the first run's files twice (found by a mutation
    review)."""
    from synanno_datagen import open_dataset

    root = tmp_path / "root"
    rows = list(csv.DictReader(open(small_data.table_path)))
    common = ["--incremental", "--variants", "2", "--formats", "tfrecord,npy"]
    for night, ids in enumerate((("11", "13"), ("11", "12", "13"), None)):
        table = _table(tmp_path / f"night{night}.csv",
                       (r for r in rows if ids is None or r["id"] in ids))
        argv = small_data.argv(root, *common)
        argv[argv.index("--materialization") + 1] = str(table)
        assert main(["run"] + argv) == 0
    manifest = _latest(root)
    assert manifest["incremental"]["run"] == 3
    files = [f for e in _entries(root, manifest).values() for f in e["npy"]["files"]]
    assert len(_entries(root, manifest)) == len(GOOD_IDS) and len(files) == 4 * len(GOOD_IDS)
    listed = {"files": len(files), "bytes": sum(f["bytes"] for f in files)}
    assert (manifest["npy"]["files"], manifest["npy"]["bytes"]) == (
        listed["files"], listed["bytes"])
    assert open_dataset(str(root)).npy_totals() == listed
    assert manifest["counts"]["instances_written"] == len(GOOD_IDS) - 3


def test_an_earlier_instance_whose_row_is_now_rejected_has_not_vanished(small_data, tmp_path):
    """Vanished instances are earlier ids no longer in the table; an id whose row is still
    there but now fails its checks is a rejected row, not also a vanished instance."""
    root = tmp_path / "root"
    common = ["--incremental", "--variants", "1"]
    assert main(["run"] + small_data.argv(root, *common)) == 0
    rows = list(csv.DictReader(open(small_data.table_path)))
    # every row of 11 (the table repeats it once) loses its x, and 13 leaves the table
    changed = _table(tmp_path / "changed.csv", ({**r, "x": ""} if r["id"] == "11" else r
                                                for r in rows if r["id"] != "13"))
    argv = small_data.argv(root, *common)
    argv[argv.index("--materialization") + 1] = str(changed)
    assert main(["run"] + argv) == 0
    counts = _latest(root)["counts"]
    assert counts["vanished_instances"] == 1                 # 13 only
    assert counts["failures"].get("missing_coordinate") == 2  # 11's rows, still in the table


def test_an_id_written_earlier_whose_points_changed_is_reported_not_served_silently(small_data,
                                                                                    tmp_path):
    """Found by review: a row whose id an earlier run wrote but whose points the table moved
    (CAVE proofreading) kept its old records with no word: 'nothing new'. Its records are still
    not rebuilt (earlier shards are never rewritten), but the row is a dead letter,
    changed_since_written, remembered like a rejection; a score change is no change."""
    root = tmp_path / "root"
    common = ["--incremental", "--variants", "1"]
    assert main(["run"] + small_data.argv(root, *common)) == 0
    written = _entries(root, _latest(root))[12]
    rows = list(csv.DictReader(open(small_data.table_path)))
    moved = _table(tmp_path / "moved.csv", (
        {**r, "x": "126", "score": "0.5"} if r["id"] == "12" else
        {**r, "score": "0.1"} if r["id"] == "14" else r for r in rows))
    argv = small_data.argv(root, *common)
    argv[argv.index("--materialization") + 1] = str(moved)
    assert main(["run"] + argv) == 0
    second = _latest(root)
    assert second["counts"]["failures"] == {"changed_since_written": 1}
    assert second["counts"]["instances_written"] == 0
    c = second["counts"]
    assert c["rows_read"] == (c["rows_rejected"] + c["rows_not_selected"] + c["instances_selected"]
                              + sum(c["remembered_failures"].values()))
    (letter,) = [json.loads(line) for line in
                 (root / second["files"]["dead_letter"]["path"]).read_text().splitlines()
                 if json.loads(line)["reason"] == "changed_since_written"]
    assert letter["instance_id"] == 12 and letter["stage"] == "KeepNewInstances"
    assert letter["details"] == (
        "id 12 is in the dataset with center [125, 220, 14], pre_pt [124, 220, 14], post_pt "
        "[126, 220, 14] (target voxels); the table now has center [126, 220, 14], pre_pt "
        "[124, 220, 14], post_pt [126, 220, 14]: its records are not rebuilt (a new root "
        "rebuilds every instance)")
    assert _entries(root, second)[12] == written                  # served as written
    assert main(["run"] + argv) == 0                               # remembered, not repeated
    third = _latest(root)["counts"]
    assert third["failures"] == {} and third["remembered_failures"] == {
        **third["remembered_failures"], "changed_since_written": 1}
    assert main(["run"] + argv + ["--retry-failed"]) == 0          # tried again: reported again
    assert _latest(root)["counts"]["failures"]["changed_since_written"] == 1


def test_repeated_ids_count_the_same_on_every_night_of_a_root(small_data, tmp_path):
    """With --num-instances, a one-off run picks while reading and counts a repeat of an id it
    did not pick as a row not selected. A root's later runs read every row (to find new ids),
    where a repeat is a duplicate_id: so its first run reads every row too, and an unchanged
    table gives no new failure on the second night."""
    rows = list(csv.DictReader(open(small_data.table_path)))
    good = [r for r in rows if r["id"] in {str(i) for i in GOOD_IDS}]
    table = _table(tmp_path / "repeats.csv", good + good)   # every id twice
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--num-instances", "2")
    argv[argv.index("--materialization") + 1] = str(table)
    assert main(["run"] + argv) == 0
    first = _latest(root)["counts"]
    repeats = 2 * len(good) - len(GOOD_IDS)            # every row after an id's first
    assert first["failures"].get("duplicate_id") == repeats
    assert first["instances_selected"] == 2
    assert main(["run"] + argv) == 0
    second = _latest(root)["counts"]
    assert second["failures"] == {} and second["instances_selected"] == 0
    assert second["remembered_failures"].get("duplicate_id") == repeats


def test_npy_totals_continue_a_root_whose_manifests_counted_their_own_run(small_data, tmp_path):
    """Manifests written before the totals covered every run counted their own run's files:
    a run extending such a root adds up every earlier run's manifest."""
    root = tmp_path / "root"
    rows = list(csv.DictReader(open(small_data.table_path)))
    common = ["--incremental", "--variants", "2", "--formats", "tfrecord,npy"]
    # runs of different sizes (one instance, then two: found by mutation review, runs of equal
    # counts could not tell which run's manifest was read)
    for n, ids in enumerate((("11",), ("11", "12", "13"), None), start=1):
        argv = small_data.argv(root, *common)
        if ids:
            part = _table(tmp_path / f"part{n}.csv", (r for r in rows if r["id"] in ids))
            argv[argv.index("--materialization") + 1] = str(part)
        assert main(["run"] + argv) == 0
        if n < 3:   # as the earlier version wrote it: this run's files only, no marker
            path = root / f"runs/{n:05d}/manifest.json"
            manifest = json.loads(path.read_text())
            mine = [f for e in _entries(root, manifest).values()
                    for f in e["npy"]["files"] if f["path"]]
            own = [f for f in manifest["files"]["index"] if f.get("run") == n]
            own_files = [f for g in own for line in (root / g["path"]).read_text().splitlines()
                         for f in json.loads(line)["npy"]["files"]]
            manifest["npy"] = {k: v for k, v in manifest["npy"].items() if k != "totals"}
            manifest["npy"].update(files=len(own_files), bytes=sum(f["bytes"] for f in own_files))
            assert len(mine) >= len(own_files)
            path.write_text(json.dumps(manifest))
            # inspect, too, shows the dataset's files, not the latest run's (found by review)
            from synanno_datagen.reading.inspection import inspect_dataset

            assert inspect_dataset(str(root))["npy"] == {
                "files": len(mine), "bytes": sum(f["bytes"] for f in mine)}
    manifest = _latest(root)
    files = [f for e in _entries(root, manifest).values() for f in e["npy"]["files"]]
    assert len(files) == 4 * len(GOOD_IDS)
    assert (manifest["npy"]["files"], manifest["npy"]["bytes"]) == (
        len(files), sum(f["bytes"] for f in files))
    assert manifest["npy"]["totals"] == "every run"


@pytest.mark.parametrize("splits", ["test=0.5,train=0.5",
                                    "a=0.1,b=0.1,c=0.1,d=0.1,test=0.1,val=0.1,train=0.4"])
def test_a_root_made_with_splits_in_another_order_is_extended_in_its_order(small_data, tmp_path,
                                                                           monkeypatch, splits):
    """--splits are read in one order now (train, val, test, others by name). A root an earlier
    version made with them in another order lays its fractions out in that order, and its
    generation hash says which: it is extended in that order, not started again with its
    instances moved between splits."""
    from synanno_datagen.pipeline import validate

    root = tmp_path / "root"
    rows = list(csv.DictReader(open(small_data.table_path)))
    first = _table(tmp_path / "first.csv", [next(r for r in rows if r["id"] == "11")])
    common = ["--seed", "2", "--splits", splits, "--incremental", "--variants", "1",
              "--block-size", *map(str, FIRST_GRID)]
    canonical = validate.parse_splits
    with monkeypatch.context() as m:   # the earlier version kept the order as written
        m.setattr(validate, "parse_splits", lambda text: tuple(reversed(canonical(text))))
        argv = small_data.argv(root, *common)
        argv[argv.index("--materialization") + 1] = str(first)
        assert main(["run"] + argv) == 0
    assert main(["run"] + small_data.argv(root, *common)) == 0
    latest = _latest(root)
    assert latest["incremental"]["extends"] is not None
    assert latest["incremental"]["instances_before"] == 1
    entries = _entries(root, latest)
    assert sorted(entries) == sorted(GOOD_IDS)
    old_order = tuple(reversed(canonical(splits)))
    moved = 0
    for instance_id, entry in entries.items():
        block = block_key(entry["center_xyz"], TARGET_OFFSET, FIRST_GRID)
        assert entry["split"] == split_of(2, instance_id, block, old_order, "block"), instance_id
        moved += entry["split"] != split_of(2, instance_id, block, canonical(splits), "block")
    assert moved   # the canonical order would have put some of them elsewhere


def test_other_orders_of_splits_are_hashed_only_for_a_root_made_with_another_hash(
        small_data, tmp_path, monkeypatch):
    """Recognising a root an earlier version made with --splits in another order hashes up to
    8! orders; a root made with this config's own order must not pay for it, nor a new root."""
    from synanno_datagen.pipeline import incremental

    root = tmp_path / "root"
    common = ["--splits", "a=0.1,b=0.1,c=0.1,d=0.1,test=0.1,val=0.1,train=0.4",
              "--incremental", "--variants", "1"]
    hashed = []
    real = incremental.generation_hash
    monkeypatch.setattr(incremental, "generation_hash", lambda g: hashed.append(1) or real(g))
    for night in range(2):
        hashed.clear()
        assert main(["run"] + small_data.argv(root, *common)) == 0
        assert len(hashed) <= 2, (night, len(hashed))   # not the 5,039 other orders
    assert _latest(root)["incremental"]["run"] == 2


def test_a_changed_generation_config_says_it_starts_a_new_dataset(small_data, tmp_path,
                                                                   capsys):
    """Another --variants on a root's nightly flags starts a fresh dataset in the next run
    folder, as documented; the run says so (summary, closing line, manifest), since every
    instance is fetched and written again and LATEST no longer holds the earlier runs'."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--formats", "tfrecord")
    assert main(["run"] + argv + ["--variants", "1"]) == 0
    assert main(["run"] + argv + ["--variants", "1"]) == 0
    capsys.readouterr()
    assert _latest(root)["incremental"]["replaces"] is None
    assert main(["run"] + argv + ["--variants", "2"]) == 0
    printed = capsys.readouterr().out
    manifest = _latest(root)
    assert manifest["incremental"]["run_dir"] == "runs/00003"
    assert manifest["incremental"]["replaces"] == "runs/00002/manifest.json"
    assert manifest["incremental"]["extends"] is None
    assert ("new dataset: the generation config differs from runs/00002/manifest.json's, so "
            "runs/00003 starts a fresh one (LATEST points at it; earlier runs stay)"
            in printed.splitlines())
    closing = json.loads(printed.splitlines()[-1])
    assert closing["replaces"] == "runs/00002/manifest.json"
    assert closing["run_dir"] == "runs/00003"   # (found by mutation review: never looked at)


def test_a_run_folder_committed_but_not_pointed_at_is_replaced_by_the_next_run(small_data,
                                                                               tmp_path):
    """A night that stopped after its run folder's manifest but before LATEST moved (a kill, a
    failed write of LATEST): the next night plans the same run number and must replace that
    folder, not refuse it as someone else's files (a schedule cannot pass --overwrite)."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord")
    assert main(["run"] + argv + ["--num-instances", "2"]) == 0
    assert main(["run"] + argv + ["--num-instances", "4"]) == 0
    second = (root / "runs" / "00002" / "manifest.json").read_bytes()
    (root / "LATEST").write_text("runs/00001/manifest.json")   # LATEST not yet moved
    (root / "runs" / "00002" / "UNFINISHED").write_text("killed before LATEST moved")
    assert main(["run"] + argv + ["--num-instances", "4"]) == 0
    assert (root / "LATEST").read_text().strip().startswith("runs/00002")
    assert json.loads((root / "runs" / "00002" / "manifest.json").read_bytes())["counts"] == \
        json.loads(second)["counts"]
    assert not (root / "runs" / "00002" / "UNFINISHED").exists()


@pytest.mark.parametrize("text", ['{"name": "another tool"}', "not json",
                                  '{"config": {}, "counts": {}, "files": {}}', None])
def test_a_root_whose_latest_manifest_is_not_ours_is_refused_in_one_line(small_data, tmp_path,
                                                                         capsys, text):
    """A root's latest manifest that does not read as ours (damaged, replaced, or gone: found
    by review, a FileNotFoundError traceback) is refused as readers refuse it, not a
    traceback, and the root is left as it is."""
    from tests.conftest import assert_usage_error

    root = tmp_path / "root"
    assert main(["run"] + small_data.argv(root, "--incremental", "--variants", "1",
                                          "--quiet")) == 0
    capsys.readouterr()
    manifest = root / "runs" / "00001" / "manifest.json"
    if text is None:
        manifest.unlink()
    else:
        manifest.write_text(text)
    before = sorted(str(p) for p in root.rglob("*"))
    assert_usage_error(capsys, ["run"] + small_data.argv(root, "--incremental", "--variants", "1"),
                       f"--output-dir {root}", str(manifest),
                       *(["is missing"] if text is None else []))
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert (not manifest.exists()) if text is None else manifest.read_text() == text


def _refused_untouched(capsys, root: Path, argv, message: str) -> None:
    """``run argv`` on ``root`` is refused in one line naming it and ``message``, and writes
    nothing there."""
    from tests.conftest import assert_usage_error

    capsys.readouterr()
    before = {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert_usage_error(capsys, ["run"] + argv, f"--output-dir {root}", message)
    assert {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_a_root_with_committed_runs_but_no_latest_is_refused_not_restarted(small_data, tmp_path,
                                                                          capsys):
    """Found by review: a root whose LATEST was gone (removed, or a kill while it was being
    replaced) was taken for a new root: the next run wrote a fresh dataset into runs/00001,
    over the committed run there. It is refused, naming the run LATEST should point at; a root
    whose only run never committed is started again as before."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord",
                           "--quiet")
    assert main(["run"] + argv + ["--num-instances", "2"]) == 0
    assert main(["run"] + argv + ["--num-instances", "4"]) == 0
    (root / "runs" / "00002" / "UNFINISHED").write_text("killed before it committed")
    (root / "LATEST").unlink()
    _refused_untouched(capsys, root, argv, "LATEST is missing while runs/ holds committed "
                       "runs; write 'runs/00001/manifest.json' (the newest one) into it")
    fresh = tmp_path / "fresh"   # its one run was killed before it committed: started again
    (fresh / "runs" / "00001").mkdir(parents=True)
    (fresh / "runs" / "00001" / "UNFINISHED").write_text("killed")
    assert main(["run"] + small_data.argv(fresh, "--incremental", "--variants", "1",
                                          "--quiet")) == 0
    assert (fresh / "LATEST").read_text().strip() == "runs/00001/manifest.json"


def test_the_next_run_clears_a_committed_runs_leftover_unfinished_marker(small_data, tmp_path):
    """Found by review: a kill between LATEST's move and the removal of the run's UNFINISHED
    left the marker in a committed run for good."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--quiet")
    assert main(["run"] + argv + ["--num-instances", "2"]) == 0
    (root / "runs" / "00001" / "UNFINISHED").write_text("killed after LATEST moved")
    assert main(["run"] + argv + ["--num-instances", "4"]) == 0
    assert not (root / "runs" / "00001" / "UNFINISHED").exists()
    assert (root / "LATEST").read_text().strip() == "runs/00002/manifest.json"


def test_a_root_an_earlier_version_made_with_escaped_file_urls_is_extended(tmp_path):
    """Found by review: file URLs are decoded now (file:///a%20b/... is the folder 'a b'), so
    the generation hash of a root an earlier version made with such a volume URL (read by
    tensorstore, which decoded it) hashed the URL as typed, and the next run started a fresh
    dataset, fetching everything again. Such a root is extended, as roots hashed with a URL's
    password are. (The earlier version's root is made by this one, its hash put back to what
    the earlier one wrote.)"""
    from synanno_datagen.pipeline.config import parse
    from synanno_datagen.pipeline.incremental import generation_hash
    from tests.conftest import make_small_data

    data = make_small_data(tmp_path / "a b")
    root = tmp_path / "root"
    typed = [u.replace(" ", "%20") for u in (data.source_url, data.target_url)]
    argv = ["--materialization", data.table_path, "--source-url", typed[0], "--target-url",
            typed[1], "--output-dir", str(root), "--crop-size", "12", "12", "4", "--incremental",
            "--variants", "1", "--quiet"]
    assert main(["run"] + argv + ["--num-instances", "2"]) == 0
    manifest_path = root / "runs" / "00001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    generation = parse(argv[:-1])[0].generation()   # (without the CLI's --quiet)
    assert generation["source_url"] == data.source_url          # decoded now
    earlier = generation_hash({**generation, "source_url": typed[0], "target_url": typed[1]})
    manifest["incremental"]["generation_hash"] = earlier
    manifest_path.write_text(json.dumps(manifest))
    assert main(["run"] + argv + ["--num-instances", "4"]) == 0
    latest = _latest(root)
    assert not latest["incremental"].get("replaces")
    assert any(f["path"].startswith("runs/00001/") for f in latest["files"]["index"])


def test_a_volume_url_with_or_without_its_precomputed_prefix_extends_the_root(small_data,
                                                                             tmp_path):
    """Found by review: every spelling of a volume's URL extended a root (a trailing '/', a
    plain path, file://localhost) but for README's own optional ``precomputed://`` prefix,
    given on one night and not on another: that started a fresh dataset, every instance
    fetched again. The prefix is not hashed now; a root an earlier version hashed with it is
    extended too."""
    from synanno_datagen.pipeline.config import parse
    from synanno_datagen.pipeline.incremental import generation_hash

    root = tmp_path / "root"

    def argv(prefix):
        return [*small_data.argv(root, "--incremental", "--variants", "1", "--formats",
                                 "tfrecord", "--quiet")[:2],
                "--source-url", prefix + small_data.source_url,
                "--target-url", prefix + small_data.target_url,
                *small_data.argv(root, "--incremental", "--variants", "1", "--formats",
                                 "tfrecord", "--quiet")[6:]]

    for night, prefix in enumerate(["", "precomputed://", ""], start=1):
        assert main(["run"] + argv(prefix) + ["--num-instances", str(night + 1)]) == 0
        latest = _latest(root)
        assert latest["incremental"]["run"] == night and not latest["incremental"].get("replaces")
        assert any(f["path"].startswith("runs/00001/") for f in latest["files"]["index"])
    # a root an earlier version made with the prefix hashed the URLs with it
    manifest_path = root / latest["incremental"]["manifest"]
    manifest = json.loads(manifest_path.read_text())
    generation = parse(argv("precomputed://")[:-1])[0].generation()
    assert generation["source_url"] == small_data.source_url     # not hashed now
    manifest["incremental"]["generation_hash"] = generation_hash(
        {**generation, "source_url": "precomputed://" + small_data.source_url,
         "target_url": "precomputed://" + small_data.target_url})
    manifest_path.write_text(json.dumps(manifest))
    assert main(["run"] + argv("") + ["--num-instances", "5"]) == 0
    latest = _latest(root)
    assert latest["incremental"]["run"] == 4 and not latest["incremental"].get("replaces")
    assert any(f["path"].startswith("runs/00001/") for f in latest["files"]["index"])


def test_a_root_whose_latest_was_moved_back_is_refused_not_rewritten(small_data, tmp_path,
                                                                     capsys):
    """Found by review: a run that stalled between its last look at the lease and moving
    LATEST (its lease broken meanwhile, two later runs committed) moved LATEST back; the next
    run then planned a run folder that was committed already and wrote it again. A root
    whose LATEST is behind a committed run is refused, naming it."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord",
                           "--quiet")
    for n in (1, 2, 3):
        assert main(["run"] + argv + ["--num-instances", str(n + 1)]) == 0
    (root / "LATEST").write_text("runs/00002/manifest.json\n")     # moved back
    _refused_untouched(capsys, root, argv, "LATEST names runs/00002 while runs/00003 is "
                       "committed too; write 'runs/00003/manifest.json' (the newest committed "
                       "run) into it")


@pytest.mark.parametrize("text", ["runs/manifest.json", "runs/00001/sub/manifest.json",
                                  "runs/00001/manifest.json/x"])
def test_a_latest_naming_no_runs_manifest_is_refused_in_one_line(small_data, tmp_path, capsys,
                                                                 text):
    """A hand-edited LATEST that names no ``runs/NNNNN/manifest.json`` (too few parts, or too
    many) is refused by the next run and by the readers in one line quoting it, and nothing is
    written (found by a mutation review: without the count of its parts, runs/manifest.json
    was an IndexError traceback and runs/00001/manifest.json/x was followed)."""
    from synanno_datagen import DatasetError, open_dataset
    from tests.conftest import assert_usage_error

    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord",
                           "--quiet")
    assert main(["run"] + argv) == 0
    (root / "LATEST").write_text(text + "\n")
    message = f"LATEST names {text!r}, not runs/NNNNN/manifest.json"
    _refused_untouched(capsys, root, argv, message)
    with pytest.raises(DatasetError, match=re.escape(f"{root}: cannot read the manifest "
                                                     f"(ValueError: {message})")):
        open_dataset(str(root))
    assert_usage_error(capsys, ["inspect", str(root)], message)


def test_a_run_does_not_move_latest_past_a_later_commit(small_data, tmp_path):
    """Found by review: the run that stalled moved LATEST back from another run's later commit.
    Right before moving it, a run looks: LATEST naming a later run than its own stops it (as a
    lost lease does); naming its own (a retried step) leaves it as it is."""
    from synanno_datagen.pipeline.lease import LeaseLost
    from synanno_datagen.pipeline.manifest import check_latest_before_move

    root = tmp_path / "root"
    assert main(["run"] + small_data.argv(root, "--incremental", "--variants", "1",
                                          "--quiet")) == 0
    assert check_latest_before_move(str(root), 2) is True       # LATEST names run 1: move it
    (root / "LATEST").write_text("runs/00002/manifest.json\n")
    assert check_latest_before_move(str(root), 2) is False      # its own: nothing to do
    (root / "LATEST").write_text("runs/00003/manifest.json\n")
    with pytest.raises(LeaseLost, match="LATEST names runs/00003, a later run than this one "
                       "\\(runs/00002\\)"):
        check_latest_before_move(str(root), 2)


# (where in the latest manifest, the value a hostile or damaged copy holds, what the line says)
DAMAGED_LATEST = {
    "an index path outside the root": (
        ("files", "index", 0, "path"), "/etc/hostname", "lists the path '/etc/hostname', which "
        "is not inside the dataset"),
    "an index path climbing out of it": (
        ("files", "index", 0, "path"), "../elsewhere/index.jsonl", "lists the path "
        "'../elsewhere/index.jsonl', which is not inside the dataset"),
    "a TFRecord path with a scheme": (
        ("files", "tfrecord", 0, "path"), "gs://other/x.tfrecord", "lists the path "
        "'gs://other/x.tfrecord', which is not inside the dataset"),
    "remembered failures outside the root": (
        ("incremental", "remembered_failures"), "../secret.jsonl", "lists the path "
        "'../secret.jsonl', which is not inside the dataset"),
    "a split grid of zeros": (
        ("records", "split_block_size_xyz"), [0, 0, 0], "records.split_block_size_xyz [0, 0, 0] "
        "is not three whole numbers from 1"),
    "a split grid of floats": (
        ("records", "split_block_size_xyz"), [1e300, 16, 4], "records.split_block_size_xyz "
        "[1e+300, 16, 4] is not three whole numbers from 1"),
    "an index entry's run climbing out": (
        ("files", "index", 0, "run"), "../..", "files.index[0].run '../..' is not a run number"),
    "an index entry's run of no number": (
        ("files", "index", 0, "run"), None, "files.index[0].run None is not a run number"),
    "an index entry's run 0": (
        ("files", "index", 0, "run"), 0, "files.index[0].run 0 is not a run number"),
    "an index entry's run true": (
        ("files", "index", 0, "run"), True, "files.index[0].run True is not a run number"),
    "a TFRecord entry's run after the manifest's own": (
        ("files", "tfrecord", 0, "run"), 2, "files.tfrecord[0].run 2 is not a run number"),
    "a work block of negatives": (
        ("config", "block_size_xyz"), [-16, 16, 4], "config.block_size_xyz [-16, 16, 4] is not "
        "three whole numbers from 1"),
    "a fetch memory of 0 MB": (   # (found by a mutation review)
        ("config", "fetch_memory_mb"), 0, "config.fetch_memory_mb 0 is not a whole number "
        "from 1"),
    # (the next two passed every test unchecked: found by a mutation review)
    "a split grid of two numbers": (
        ("records", "split_block_size_xyz"), [16, 16], "records.split_block_size_xyz [16, 16] "
        "is not three whole numbers from 1"),
    "a fetch memory of a fraction": (
        ("config", "fetch_memory_mb"), 64.5, "config.fetch_memory_mb 64.5 is not a whole number "
        "from 1"),
}


def test_a_latest_manifest_naming_files_outside_the_root_is_refused_before_any_work(
        small_data, tmp_path, capsys):
    """Found by review: the next run read the index and remembered failures the latest manifest
    names, outside the root included (an absolute path, '..'), copied such a file's lines into
    its own memory file and committed a manifest every reader refuses; a crafted split grid
    crashed it after work had started (ZeroDivisionError); an entry's run that is no run number
    was copied into the next manifest (and broke NpyDataset with a bare ValueError). Such a
    manifest is refused as the readers refuse it, in one line, and nothing is written (each case
    of DAMAGED_LATEST on a copy of one root)."""
    import shutil

    made = tmp_path / "made"
    argv = small_data.argv(made, "--incremental", "--variants", "1", "--split-by", "block",
                           "--quiet")
    assert main(["run"] + argv) == 0
    written = json.loads((made / "runs" / "00001" / "manifest.json").read_text())
    for number, (keys, value, message) in enumerate(DAMAGED_LATEST.values()):
        root = shutil.copytree(made, tmp_path / f"root{number}")
        manifest = json.loads(json.dumps(written))
        holder = manifest
        for key in keys[:-1]:
            holder = holder[key]
        holder[keys[-1]] = value
        (root / "runs" / "00001" / "manifest.json").write_text(json.dumps(manifest))
        if keys[-1] == "run":   # the readers refuse it too, in one line naming the manifest
            from synanno_datagen import DatasetError, open_dataset

            with pytest.raises(DatasetError, match=re.escape(
                    f"{root}/runs/00001/manifest.json: {message}")):
                open_dataset(str(root))
        argv[argv.index("--output-dir") + 1] = str(root)
        _refused_untouched(capsys, root, argv, message)


def test_options_of_tfrecord_shards_do_not_start_a_new_npy_only_dataset(small_data, tmp_path,
                                                                        caplog):
    """Found by review: --compression gzip (or another --record-layout) on the nightly flags of
    a root written with --formats npy started a fresh dataset (every instance fetched and
    written again) although no TFRecord is written and the npy files are the same. They are
    not part of such a root's generation config, and a warning says they change nothing. A root
    an earlier version made with them is extended too."""
    from synanno_datagen.pipeline import config as config_module
    from synanno_datagen.pipeline.incremental import generation_hash

    root = tmp_path / "root"
    rows = list(csv.DictReader(open(small_data.table_path)))
    first = _table(tmp_path / "first.csv", rows[:6])
    argv = small_data.argv(root, "--incremental", "--formats", "npy", "--variants", "1",
                           "--quiet")
    argv[argv.index("--materialization") + 1] = str(first)
    assert main(["run"] + argv) == 0
    argv[argv.index("--materialization") + 1] = str(small_data.table_path)
    loud = [a for a in argv if a != "--quiet"]
    # (given at their defaults, or not at all, they are no cause for a warning: found by
    # mutation review)
    for given in ([], ["--compression", "none"]):
        assert config_module.check(loud + given)[0].idle_tfrecord_options() == {}
    with caplog.at_level("WARNING"):
        assert main(["run"] + loud + ["--compression", "gzip", "--record-layout", "variant"]) == 0
    assert "--record-layout variant, --compression gzip: no TFRecord shards are written " \
           "(--formats npy), so they change nothing" in caplog.text
    latest = _latest(root)
    assert latest["incremental"]["extends"] == "runs/00001/manifest.json"
    assert latest["incremental"]["replaces"] is None
    first_run = json.loads((root / "runs" / "00001" / "manifest.json").read_text())
    assert latest["incremental"]["generation_hash"] == \
        first_run["incremental"]["generation_hash"]   # (found by mutation review)

    # a root an earlier version made with those options, hashed as given, is extended
    older = tmp_path / "older"
    argv[argv.index("--output-dir") + 1] = str(older)
    argv[argv.index("--materialization") + 1] = str(first)
    assert main(["run"] + argv + ["--compression", "gzip"]) == 0
    manifest_path = older / "runs" / "00001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    config = config_module.check([a for a in argv if a != "--quiet"])[0]
    manifest["incremental"]["generation_hash"] = generation_hash(config_module._with_options(
        config.generation(), {"record_layout": "instance", "compression": "gzip"}))
    assert manifest["incremental"]["generation_hash"] != generation_hash(config.generation())
    manifest_path.write_text(json.dumps(manifest))
    argv[argv.index("--materialization") + 1] = str(small_data.table_path)
    assert main(["run"] + argv) == 0
    assert _latest(older)["incremental"]["extends"] == "runs/00001/manifest.json"


def test_the_generation_hash_of_a_default_run_is_pinned(small_data, tmp_path):
    """An incremental root is extended only by runs of the same generation hash: a key added at
    its default, or one dropped, would start every existing root over (or extend a root with
    other records). Pinned here for one run of default options (found by mutation review:
    dropping pad_value from the hash, or hashing compression at its default, passed every
    test)."""
    import dataclasses

    from synanno_datagen.pipeline.config import check
    from synanno_datagen.pipeline.incremental import generation_hash

    config, _ = check(small_data.argv(tmp_path / "out", "--incremental"))
    config = dataclasses.replace(
        config, source=dataclasses.replace(config.source, url="gs://bucket/raw"),
        target=dataclasses.replace(config.target, url="gs://bucket/labels"))
    generation = config.generation()
    assert sorted(generation) == [
        "crop_size_xyz", "formats", "id_column", "pad_value", "record_layout", "seed",
        "seed_model", "source_mip", "source_url", "split_by", "splits", "target_url",
        "variants"]
    assert generation_hash(generation) == \
        "c6b21efb14b9fa9dbfe395a217e879c6fe9eb1ea8cf8c88a89073407236094da"


def test_a_root_made_with_the_flag_goes_on_when_the_table_states_the_same_units(small_data,
                                                                               tmp_path, capsys):
    """Nights that passed --coordinate-resolution, then one that leaves it out, its table (as
    pandas writes CAVEclient's DataFrame) declaring the same units in its attrs: the same
    generation, so the dataset goes on (nothing new); a flag naming other units is refused."""
    from tests.conftest import assert_usage_error
    from tests.data.make_pandas_tables import CAVE_TABLE, HERE

    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--formats", "tfrecord", "--variants", "1",
                           "--center-column", "ctr_pt_position")
    argv[argv.index("--materialization") + 1] = str(HERE / CAVE_TABLE)   # 4 x 4 x 33 nm
    assert main(["run"] + argv + ["--coordinate-resolution", "4", "4", "33"]) == 0
    first = _latest(root)
    assert first["counts"]["instances_written"] == 5
    capsys.readouterr()
    assert main(["run"] + argv) == 0
    printed = capsys.readouterr().out.splitlines()
    manifest = _latest(root)
    assert manifest["incremental"]["run_dir"] == "runs/00002"
    assert manifest["incremental"]["replaces"] is None
    assert manifest["incremental"]["generation_hash"] == first["incremental"]["generation_hash"]
    assert manifest["counts"]["instances_written"] == 0
    assert manifest["config"]["coordinate_resolution_nm_xyz"] == [4.0, 4.0, 33.0]
    assert "coordinates: 4 4 33 nm per table unit, as the table's pandas attrs declare " \
        "(dataframe_resolution)" in printed
    assert_usage_error(capsys, ["run"] + argv + ["--coordinate-resolution", "8", "8", "33"],
                       "--coordinate-resolution 8 8 33: ", "declares dataframe_resolution "
                       "4 4 33 nm per unit")
    assert _latest(root)["incremental"]["run_dir"] == "runs/00002"


def test_a_reordered_table_with_conflicting_duplicates_keeps_the_datasets_row(small_data,
                                                                              tmp_path):
    """Found by review: id 12 on two rows with other points, A first, so night 1 writes A and B
    is a duplicate_id. Night 2's table holds the same rows in reverse order (CAVE exports promise
    none): B won the dedup, A became a new duplicate_id although the dataset holds A's data, and
    B was skipped as remembered. Now the row the dataset holds wins, and of an id no run wrote
    (23, an empty target on two rows) the row whose fetch is remembered as failed: night 2 adds
    nothing, no failure, and the dataset holds row A's points once."""
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.reading.records import read_records

    rows = list(csv.DictReader(open(small_data.table_path)))
    row_a = next(r for r in rows if r["id"] == "12")
    row_b = {**row_a, "x": "126", "pre_pt_x": "125"}
    empty_b = {**next(r for r in rows if r["id"] == "23"), "x": "107"}
    table = rows + [row_b, empty_b]
    root = tmp_path / "root"
    common = ["--incremental", "--variants", "1"]
    nights = []
    for n, ordered in enumerate((table, list(reversed(table)))):
        argv = small_data.argv(root, *common)
        argv[argv.index("--materialization") + 1] = str(_table(tmp_path / f"{n}.csv", ordered))
        assert main(["run"] + argv) == 0
        nights.append(_latest(root))
    first, second = (m["counts"] for m in nights)
    assert first["failures"]["duplicate_id"] == 3             # 11's and 23's repeats, row B
    assert first["failures"]["empty_target"] == 1
    (letter,) = [json.loads(line) for line in
                 (root / nights[0]["files"]["dead_letter"]["path"]).read_text().splitlines()
                 if json.loads(line)["instance_id"] == 12]
    assert letter["details"] == f"id 12 first seen in table shard 0 row {rows.index(row_a)}"
    assert second["failures"] == {} and second["failed"] == 0
    assert second["instances_selected"] == second["instances_written"] == 0
    assert second["remembered_failures"] == first["failures"]
    assert second["rows_not_selected"] == len(GOOD_IDS)        # their rows, 12's row A among them
    assert (root / nights[1]["files"]["dead_letter"]["path"]).read_text() == ""
    assert [json.loads(line)["fingerprint"] for line in
            (root / nights[1]["incremental"]["remembered_failures"]).read_text().splitlines()] \
        == [json.loads(line)["fingerprint"] for line in
            (root / nights[0]["incremental"]["remembered_failures"]).read_text().splitlines()]
    index_12 = [json.loads(line) for f in nights[1]["files"]["index"]
                for line in (root / f["path"]).read_text().splitlines()
                if json.loads(line)["instance_id"] == 12]
    assert [(e["center_xyz"], e["pre_pt_xyz"]) for e in index_12] == [
        ([125, 220, 14], [124, 220, 14])]
    dataset = open_dataset(str(root))
    served = [(r["instance_id"], r["target_box_xyz"]) for f in dataset.manifest["files"]["tfrecord"]
              for r in read_records(dataset, f, ("instance_id", "target_box_xyz"))]
    assert sorted(i for i, _ in served) == sorted(GOOD_IDS)    # 12 once, cut around row A
    assert [box for i, box in served if i == 12][0][:3] == [125 - CROP[0] // 2, 220 - CROP[1] // 2,
                                                          14 - CROP[2] // 2]


def test_a_row_remembered_as_a_duplicate_is_said_to_have_moved_once_it_stands_alone(small_data,
                                                                                   tmp_path):
    """Found by review: id 12's moved row, a duplicate_id on night 2 (the dataset holds the
    other row's points), stands alone on night 3: it is changed_since_written, and was skipped
    as the remembered duplicate, so no night said that the table had moved the synapse."""
    rows = list(csv.DictReader(open(small_data.table_path)))
    row_a = next(r for r in rows if r["id"] == "12")
    moved = {**row_a, "x": "126", "pre_pt_x": "125"}
    others = [r for r in rows if r is not row_a]
    root = tmp_path / "root"
    counts = []
    for n, table in enumerate(([row_a] + others, [moved, row_a] + others, [moved] + others,
                               [moved] + others)):
        argv = small_data.argv(root, "--incremental", "--variants", "1")
        argv[argv.index("--materialization") + 1] = str(_table(tmp_path / f"{n}.csv", table))
        assert main(["run"] + argv) == 0
        counts.append(_latest(root)["counts"])
    base = dict(counts[0]["failures"])
    assert counts[1]["failures"] == {"duplicate_id": 1}          # the moved row, night 2
    assert counts[2]["failures"] == {"changed_since_written": 1}  # alone: said once
    assert counts[3]["failures"] == {}
    assert counts[3]["remembered_failures"] == {**base, "changed_since_written": 1}


def test_the_jobs_description_does_not_grow_with_the_dataset_it_extends(small_data, tmp_path,
                                                                        monkeypatch, capsys):
    """Found by a scale review: a run extending a root carried every earlier shard's listing in
    its job (the manifest step's config and the earlier index paths), about 100 bytes per shard
    as Beam pickles and compresses them (sha256s do not compress): Dataflow refuses a job
    description over 10 MB, so a root past about 45 million instances could not be extended.
    The listing is read in the job now; one changed since the run was planned ends the run in
    one line, nothing committed."""
    import hashlib

    import apache_beam as beam

    from synanno_datagen.pipeline.build import build
    from synanno_datagen.pipeline.config import parse

    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1")
    assert main(["run"] + argv) == 0
    manifest_path = root / "runs/00001/manifest.json"
    manifest = json.loads(manifest_path.read_text())

    def described(extra_shards: int) -> int:
        grown = json.loads(json.dumps(manifest))
        for kind in ("tfrecord", "index"):
            for k in range(extra_shards):
                grown["files"][kind].append({
                    **grown["files"][kind][0], "path": f"runs/00001/{kind}/x-{k:05d}",
                    "sha256": hashlib.sha256(b"%s %d" % (kind.encode(), k)).hexdigest()})
        manifest_path.write_text(json.dumps(grown))
        config, _ = parse(argv)
        p = beam.Pipeline()
        build(p, config)
        return len(p.to_runner_api().SerializeToString())

    small, large = described(0), described(2000)
    assert large - small < 2_000, (small, large)   # 4,000 entries: ~200 KB when carried
    manifest_path.write_text(json.dumps(manifest))
    from synanno_datagen.pipeline import config as config_module

    planned = config_module.settle

    def changed_once_planned(config):   # another writer rewrites the manifest meanwhile
        settled = planned(config)
        grown = json.loads(json.dumps(manifest))
        grown["files"]["index"] = grown["files"]["index"][1:]
        manifest_path.write_text(json.dumps(grown))
        return settled

    monkeypatch.setattr(config_module, "settle", changed_once_planned)
    assert main(["run"] + argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"synanno-datagen: lease lost: {manifest_path} lists other files than when this run "
        "started: the root was changed while this run held its lease; nothing of this run is "
        "committed")
    assert json.loads(captured.out.strip().splitlines()[-1])["status"] == "failed"
    assert (root / "LATEST").read_text().strip().endswith("runs/00001/manifest.json")
