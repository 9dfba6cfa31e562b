"""Incremental runs remember permanent failures and keep --num-instances as a total (real runs,
each in its own process)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from synanno_datagen.reading.inspection import run_inspect
from synanno_datagen.transforms.records import DeadLetter, Instance, RowRef
from synanno_datagen.transforms.remembered import (
    INSTANCE, REMEMBERED, ROW, RememberFailures, SkipRememberedFailures, fingerprint,
)

ALL_PERMANENT = {"duplicate_id": 1, "empty_target": 1, "missing_coordinate": 1,
                 "not_a_number": 1, "outside_volume": 1}


def nightly(argv, tmp_path, *extra):
    """One incremental run in its own process: (closing event, LATEST's manifest, stdout)."""
    done = subprocess.run([sys.executable, "-m", "synanno_datagen", "run", *argv, *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    root = Path(argv[argv.index("--output-dir") + 1])
    latest = root / (root / "LATEST").read_text().strip()
    return json.loads(done.stdout.splitlines()[-1]), json.loads(latest.read_text()), done.stdout


def _edit_rows(table: str, changes: dict) -> None:
    """Change cells of the rows with the given ids (the first row of each id)."""
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    seen = set()
    for row in rows:
        if row["id"] in changes and row["id"] not in seen:
            row.update(changes[row["id"]])
            seen.add(row["id"])
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_permanent_failures_are_not_tried_again_until_their_row_changes(small_data, tmp_path):
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord")
    event, m1, _ = nightly(argv, tmp_path)
    assert m1["counts"]["failures"] == ALL_PERMANENT and m1["counts"]["instances_selected"] == 6
    memory = (root / m1["incremental"]["remembered_failures"]).read_text().splitlines()
    assert sorted(json.loads(line)["reason"] for line in memory) == sorted(ALL_PERMANENT)

    # Unchanged table: nothing is fetched again (empty_target was), nothing dead-lettered again.
    event, m2, printed = nightly(argv, tmp_path)
    counts = m2["counts"]
    assert counts["instances_selected"] == 0 and counts["failures"] == {}
    assert counts["remembered_failures"] == ALL_PERMANENT
    assert counts["rows_read"] == (counts["rows_rejected"] + counts["rows_not_selected"]
                                   + counts["instances_selected"]
                                   + sum(counts["remembered_failures"].values()))
    assert (root / "runs" / "00002" / "dead_letter.jsonl").read_text() == ""
    assert (root / m2["incremental"]["remembered_failures"]).read_text().splitlines() == memory
    assert event["empty"] and event["remembered_failures"] == ALL_PERMANENT
    assert "nothing new: runs/00002 adds no instance" in printed
    assert "remembered failures, not tried again (--retry-failed tries them): " in printed
    shown = run_inspect(str(root))   # inspect shows them too, with their reasons
    assert ("remembered failures, not tried again (--retry-failed tries them): "
            + ", ".join(f"{r} {n}" for r, n in ALL_PERMANENT.items())) in shown.splitlines()

    # A column the run does not read does not make a row new: nothing is tried again.
    _edit_rows(small_data.table_path, {"23": {"score": "0.5"}, "22": {"score": "0.1"}})
    _, m_same, _ = nightly(argv, tmp_path)
    assert m_same["counts"]["instances_selected"] == 0
    assert m_same["counts"]["remembered_failures"] == ALL_PERMANENT

    # A row changed in a column the run reads is a new row: the empty_target one is fetched
    # again (its x written as a decimal, the same voxel), the outside one read again.
    x23 = next(r["x"] for r in csv.DictReader(open(small_data.table_path)) if r["id"] == "23")
    _edit_rows(small_data.table_path, {"23": {"x": f"{x23}.0"}, "22": {"x": "501"}})
    _, m3, _ = nightly(argv, tmp_path)
    assert m3["counts"]["instances_selected"] == 1
    assert m3["counts"]["failures"] == {"empty_target": 1, "outside_volume": 1}
    assert m3["counts"]["remembered_failures"] == {"duplicate_id": 1, "missing_coordinate": 1,
                                                   "not_a_number": 1}
    entries = [json.loads(line) for line in
               (root / m3["incremental"]["remembered_failures"]).read_text().splitlines()]
    assert len(entries) == 5 and sorted(e["first_run"] for e in entries) == [1, 1, 1, 4, 4]

    # --retry-failed tries every row again.
    _, m4, _ = nightly(argv, tmp_path, "--retry-failed")
    assert m4["counts"]["instances_selected"] == 1 and m4["counts"]["failures"] == ALL_PERMANENT
    assert m4["counts"]["remembered_failures"] == {} and m4["incremental"]["retried_failures"]
    retried = [json.loads(line) for line in
               (root / m4["incremental"]["remembered_failures"]).read_text().splitlines()]
    # the rows that fail again keep the run they first failed in
    assert sorted((e["reason"], e["first_run"]) for e in retried) == sorted(
        (e["reason"], e["first_run"]) for e in entries)
    assert sum(s["instances"] for s in m4["splits"].values()) == 5


def test_a_repeated_row_of_a_moved_synapse_is_remembered_under_both_its_reasons(small_data,
                                                                              tmp_path):
    """Found by review: an id on two rows alike in the columns read (an export repeating a
    row), moved after it was written, fails as changed_since_written and as duplicate_id; the
    memory kept one entry for the two rows' one fingerprint, so the duplicate_id came back as
    news every night of an unchanged table."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord")
    nightly(argv, tmp_path)
    with open(small_data.table_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:   # both rows of id 11 move one voxel
        if row["id"] == "11":
            row["x"] = str(float(row["x"]) + 1)
    with open(small_data.table_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _, m2, _ = nightly(argv, tmp_path)
    assert m2["counts"]["failures"] == {"changed_since_written": 1, "duplicate_id": 1}
    for night in (3, 4):
        _, m, _ = nightly(argv, tmp_path)
        assert m["counts"]["failures"] == {}, night
        assert m["counts"]["remembered_failures"] == {
            **ALL_PERMANENT, "changed_since_written": 1}, night
    memory = [json.loads(line) for line in
              (root / m["incremental"]["remembered_failures"]).read_text().splitlines()]
    assert sorted((e["reason"], e["first_run"]) for e in memory if e["instance_id"] == 11) == [
        ("changed_since_written", 2), ("duplicate_id", 2)]


@pytest.mark.parametrize("retry", [(), ("--retry-failed",)])
def test_a_missing_memory_file_is_a_warning_and_its_failures_are_tried_again(small_data,
                                                                              tmp_path, retry):
    """Found by review: a root whose latest run's remembered_failures.jsonl was deleted, or
    left out of a copy (the manifest's files do not list it), failed every later night with a
    FileNotFoundError traceback, --retry-failed too. Like a memory line that is not an entry, a
    missing file can match no row: what it stood for is tried again, and remembered again."""
    root = tmp_path / "root"
    argv = small_data.argv(root, "--incremental", "--variants", "1", "--formats", "tfrecord")
    _, m1, _ = nightly(argv, tmp_path)
    (root / m1["incremental"]["remembered_failures"]).unlink()
    done = subprocess.run([sys.executable, "-m", "synanno_datagen", "run", *argv, *retry],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (f"{root / 'runs' / '00001' / 'remembered_failures.jsonl'} is missing: the failures "
            "it remembered are tried again") in done.stderr
    m2 = json.loads((root / "runs" / "00002" / "manifest.json").read_text())
    assert m2["counts"]["failures"] == ALL_PERMANENT and m2["counts"]["instances_selected"] == 1
    _, m3, _ = nightly(argv, tmp_path)
    assert m3["counts"]["failures"] == {} and m3["counts"]["remembered_failures"] == ALL_PERMANENT


@pytest.mark.parametrize("records", [("--variants", "1"),
                                     ("--variants", "2", "--record-layout", "variant")])
def test_num_instances_is_a_total_on_an_incremental_root(small_data, tmp_path, records):
    """--num-instances 3 nightly on an unchanged table: 3 instances in the dataset, not 3 more
    every night; instances, not records (found by mutation review: counting records passed,
    every case having one record per instance)."""
    root = tmp_path / "root"

    def total(n):
        return small_data.argv(root, "--incremental", "--num-instances", str(n), *records,
                               "--formats", "tfrecord")

    argv = total(3)
    _, m1, _ = nightly(argv, tmp_path)
    held = sum(s["instances"] for s in m1["splits"].values())
    assert m1["counts"]["instances_selected"] == 3 and held <= 3
    _, m2, _ = nightly(argv, tmp_path)       # a failed pick leaves room for another instance
    assert m2["counts"]["instances_selected"] == 3 - held
    assert sum(s["instances"] for s in m2["splits"].values()) == 3
    event, m3, printed = nightly(argv, tmp_path)
    assert m3["counts"]["instances_selected"] == 0 and event["empty"]
    assert sum(s["instances"] for s in m3["splits"].values()) == 3
    assert "nothing new: runs/00003 adds no instance (the dataset holds 3, --num-instances 3)" \
        in printed
    _, m4, _ = nightly(total(4), tmp_path)    # raising N grows it
    assert sum(s["instances"] for s in m4["splits"].values()) == 4


def _instance(i, row):
    return Instance(i, (1, 2, 3), None, None, RowRef(0, i), tuple(sorted(row.items())))


def _memory_left(tmp_path, letters, run: int):
    """The entries of the memory file RememberFailures writes for a run (number ``run``) whose
    DeadLetters are ``letters``, one dict each in file order, as the pipeline makes it."""
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    with TestPipeline() as p:
        p | beam.Create(letters) | RememberFailures(str(out), run)
    text = (out / "remembered_failures.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_fingerprints_follow_the_rows_content_only(tmp_path):
    row = {"id": "1", "x": "2", "score": "0.9"}
    assert fingerprint(tuple(sorted(row.items()))) == fingerprint(tuple(row.items()))
    assert fingerprint(tuple(row.items())) != fingerprint(tuple({**row, "score": "1"}.items()))
    # Given the columns a run reads, only their cells count.
    read = ("id", "x")
    assert fingerprint(tuple(row.items()), read) == \
        fingerprint(tuple({**row, "score": "1"}.items()), read)
    assert fingerprint(tuple(row.items()), read) != \
        fingerprint(tuple({**row, "x": "2.0"}.items()), read)
    # A kept row and its exact duplicate share a fingerprint but not a key: the duplicate's
    # rejection never hides the kept instance.
    kept, dup = _instance(1, row), DeadLetter("duplicate_id", "", "ReadTable", 1, RowRef(0, 2),
                                              tuple(sorted(row.items())))
    (entry,) = _memory_left(tmp_path, [dup], run=1)
    assert (entry["kind"], entry["fingerprint"]) == (ROW, fingerprint(kept.row))
    assert _memory_left(tmp_path, [DeadLetter("fetch_error", "", "Fetch", 1, None, kept.row)],
                        1) == []


def test_a_row_with_extra_cells_is_not_remembered(tmp_path):
    # Its fingerprint covers only the columns read, which may be unchanged when the export is
    # fixed (the comma was in a later, unread cell, now quoted): remembered, the fixed row would
    # stay skipped. It is rejected again each run until it is fixed.
    row = (("id", "5"), ("x", "1"), ("y", "2"), ("z", "3"))
    letter = DeadLetter("extra_cells", "", "ReadTable", 5, RowRef(0, 0), row)
    assert _memory_left(tmp_path, [letter], run=1) == []


def test_the_memory_a_run_leaves_is_merged_from_sorted_runs_by_key_and_priority(tmp_path):
    """Found by review: every dead letter of a run was gathered in one list to write the
    memory (about 7 KB and 0.2 ms per rejected row on an incremental night). Entries now go
    through sorted runs on disk, a few per run here, merged in one streaming step."""
    rows = {i: (("id", str(i)), ("x", str(i))) for i in range(7)}
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("".join(json.dumps(e) + "\n" for e in [
        {"kind": ROW, "fingerprint": fingerprint(rows[1]), "reason": "outside_volume",
         "instance_id": 1, "first_run": 3},      # fails again: keeps its first run
        {"kind": ROW, "fingerprint": fingerprint(rows[2]), "reason": "outside_volume",
         "instance_id": 2, "first_run": 2}]))    # not failing now: forgotten
    skipped = {"kind": INSTANCE, "fingerprint": fingerprint(rows[6]), "reason": "empty_target",
               "instance_id": 6, "first_run": 1}
    letters = [DeadLetter("outside_volume", "", "ReadTable", i, RowRef(0, i), rows[i])
               for i in (0, 1, 3, 4, 5)] + [
        DeadLetter("fetch_error", "", "Fetch", 9, RowRef(0, 9), rows[0]),   # not permanent
        DeadLetter("outside_volume", "", "ReadTable", 0, RowRef(0, 8), rows[0])]   # a repeat
    out = tmp_path / "run"
    with TestPipeline() as p:
        dead = p | "Dead" >> beam.Create(letters)
        remembered = p | "Skipped" >> beam.Create([skipped, skipped])
        memory = dead | RememberFailures(str(out), 4, remembered, earlier=str(earlier))
        assert_that(memory | beam.Map(lambda m: (m["records"], m["remembered"])),
                    equal_to([(6, {"empty_target": 2})]))
    lines = (out / "remembered_failures.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries == sorted(
        [{"kind": ROW, "fingerprint": fingerprint(rows[i]), "reason": "outside_volume",
          "instance_id": i, "first_run": 3 if i == 1 else 4} for i in (0, 1, 3, 4, 5)]
        + [skipped], key=lambda e: (e["kind"], e["fingerprint"]))
    assert len(list((out / "_tmp" / "remembered").iterdir())) >= 1   # the sorted runs


def test_damaged_memory_lines_are_tried_again_not_a_traceback(tmp_path, caplog):
    """Found by review: a memory line without a fingerprint, a non-object or a cut line ended
    the next run in a traceback. Such a line can match no row: it is left out, with a warning,
    and what it may have stood for is tried again."""
    import logging

    from synanno_datagen.transforms.remembered import memory_entries

    good = {"kind": ROW, "fingerprint": "0" * 32, "reason": "outside_volume",
            "instance_id": 1, "first_run": 1}
    path = tmp_path / "remembered_failures.jsonl"
    path.write_text(json.dumps(good) + "\n[1, 2]\n" + json.dumps({"kind": ROW}) + "\n"
                    + json.dumps({**good, "reason": None}) + "\n"
                    + json.dumps({**good, "reason": {"a": 1}}) + "\n"
                    + json.dumps({**good, "kind": "other"}) + "\n" + "[" * 100_000 + "\n"
                    + '{"kind": "row", "fingerpr\n'
                    # without a first run, or not a whole one (found by a mutation review)
                    + json.dumps({k: v for k, v in good.items() if k != "first_run"}) + "\n"
                    + json.dumps({**good, "first_run": "1"}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert list(memory_entries(str(path))) == [good]
    assert (f"{path}: 9 lines are not a memory entry (first: line 2), left out: the rows it "
            "stood for are tried again") in caplog.text


def test_skip_remembered_failures_stage(tmp_path):
    rows = {i: {"id": str(i), "x": str(i)} for i in range(4)}
    memory = tmp_path / "memory.jsonl"
    remembered = [  # instance 1 failed for good; the rejection of row 3 too
        {"kind": INSTANCE, "fingerprint": fingerprint(rows[1].items()), "reason": "empty_target",
         "instance_id": 1, "first_run": 1},
        {"kind": ROW, "fingerprint": fingerprint(rows[3].items()), "reason": "outside_volume",
         "instance_id": 3, "first_run": 1},
        {"kind": ROW, "fingerprint": fingerprint(rows[0].items()), "reason": "invalid_id",
         "instance_id": 0, "first_run": 1}]   # a row-kind entry never drops an instance
    memory.write_text("".join(json.dumps(e) + "\n" for e in remembered))
    with TestPipeline() as p:
        instances = p | "Instances" >> beam.Create([_instance(i, rows[i]) for i in (0, 1, 2)])
        rejected = p | "Rejected" >> beam.Create([
            DeadLetter("outside_volume", "", "ReadTable", 3, RowRef(0, 3),
                       tuple(sorted(rows[3].items())))])
        out = {"instances": instances, "rejected": rejected} | SkipRememberedFailures(str(memory))
        assert_that(out["ok"] | beam.Map(lambda i: i.instance_id), equal_to([0, 2]), label="Ok")
        assert_that(out["dead_letter"], equal_to([]), label="Dead")
        assert_that(out[REMEMBERED] | beam.Map(lambda e: e["reason"]),
                    equal_to(["empty_target", "outside_volume"]), label="Remembered")


def test_a_night_whose_only_tries_fail_again_says_nothing_new():
    """A night with no new row whose only candidates are failures tried again (not
    remembered: fetch errors, or --retry-failed) that fail again writes no instance: the
    summary says so as a night with no candidate does ("empty": true in the closing line)."""
    from synanno_datagen.summary import summary

    manifest = {
        "counts": {"rows_read": 9, "instances_selected": 2, "instances_written": 0,
                   "variants_written": 0, "failures": {"fetch_error": 2}},
        "incremental": {"run_dir": "runs/00006", "instances_before": 7},
        "config": {"num_instances": None, "formats": ["tfrecord"]},
        "splits": {"train": {"instances": 7, "records": 7, "shards": 1}},
    }
    printed = summary(manifest, "root/runs/00006")
    assert ("nothing new: runs/00006 adds no instance (the 2 tried all failed: see failures)"
            in printed.splitlines())


def test_which_failures_are_remembered_and_as_what():
    """A failure that would come again on the same row (its table cells, an id written earlier
    with other points, its empty target, its missing chunks) is remembered; one that may pass
    (a fetch error, an unexpected error) or whose row holds only extra text is tried again
    (found by mutation review: missing_chunks dropped from the remembered reasons passed every
    test)."""
    from synanno_datagen.transforms.remembered import new_entry

    row = (("id", "7"), ("x", "1"), ("y", "2"), ("z", "3"))
    kinds = {}
    for reason in ("missing_coordinate", "not_a_number", "outside_volume", "invalid_id",
                   "duplicate_id", "empty_target", "missing_chunks", "extra_cells",
                   "fetch_error", "unexpected_error", "changed_since_written"):
        entry = new_entry(DeadLetter(reason, "", "Stage", 7, RowRef(0, 7), row), 3)
        kinds[reason] = entry and (entry["kind"], entry["first_run"], entry["instance_id"])
    assert kinds == {
        "missing_coordinate": (ROW, 3, 7), "not_a_number": (ROW, 3, 7),
        "outside_volume": (ROW, 3, 7), "invalid_id": (ROW, 3, 7), "duplicate_id": (ROW, 3, 7),
        "empty_target": (INSTANCE, 3, 7), "missing_chunks": (INSTANCE, 3, 7),
        "changed_since_written": (ROW, 3, 7), "extra_cells": None, "fetch_error": None,
        "unexpected_error": None}
