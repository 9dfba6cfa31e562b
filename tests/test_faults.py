"""Storage faults: missing chunks (error or zero), transient errors retried, kills and reruns."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.chunk_server import ChunkServer
from tests.conftest import GOOD_IDS, SCALE, TARGET_OFFSET, expected_crop_zyx, make_small_data
from tests.test_pipeline import read_records, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
# Source chunk (scale 4_4_33) that only synapse 14's crop touches, and its voxels' box (x, y, z).
LONE_SOURCE_CHUNK = "264-296_464-480_18-20"
LONE_BOX = ((264, 464, 18), (296, 480, 20))
LONE_ID = 14


def _by_key(records):
    return {(r["instance_id"], r["variant"]): r for r in records}


def _dead_letters(out: Path):
    return [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]


def _remove_chunk(data, name):
    [path] = (data.root / "source" / "4_4_33").glob(name + "*")
    path.unlink()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = make_small_data(root / "data")
    out = root / "clean"
    _, manifest = run_pipeline(data.argv(out, "--variants", "2"))
    return data, out, manifest


def test_a_missing_chunk_dead_letters_the_instance_by_default(clean_run, tmp_path):
    _, clean_out, _ = clean_run
    data = make_small_data(tmp_path / "data")
    _remove_chunk(data, LONE_SOURCE_CHUNK)
    out = tmp_path / "out"
    _, manifest = run_pipeline(data.argv(out, "--variants", "2"))

    assert manifest["counts"]["failures"]["missing_chunks"] == 1
    assert manifest["counts"]["instances_written"] == len(GOOD_IDS) - 1
    [letter] = [d for d in _dead_letters(out) if d["reason"] == "missing_chunks"]
    assert letter["instance_id"] == LONE_ID and letter["stage"] == "FetchSubvolumes"
    assert letter["details"].startswith("source: 1 chunk(s) missing")
    assert f"4_4_33/{LONE_SOURCE_CHUNK}" in letter["details"]
    expected = {k: r for k, r in _by_key(read_records(clean_out)).items() if k[0] != LONE_ID}
    got = _by_key(read_records(out))
    assert sorted(got) == sorted(expected)
    for key, record in got.items():
        np.testing.assert_array_equal(record["source"], expected[key]["source"])
        np.testing.assert_array_equal(record["seed_target"], expected[key]["seed_target"])


def test_zero_fills_a_missing_chunk_and_counts_it(clean_run, tmp_path):
    data = make_small_data(tmp_path / "data")
    _remove_chunk(data, LONE_SOURCE_CHUNK)
    out = tmp_path / "out"
    config, manifest = run_pipeline(data.argv(out, "--variants", "2",
                                              "--missing-chunks", "source=zero"))

    assert config.missing_chunks == ("zero", "zero")   # the target keeps its default
    assert manifest["config"]["missing_chunks"] == {"source": "zero", "target": "zero"}
    assert manifest["counts"]["filled_chunks"] == {"source": 1, "target": 0}
    assert "missing_chunks" not in manifest["counts"]["failures"]
    entries = [json.loads(line) for f in sorted((out / "index").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    filled = {e["instance_id"]: e["filled_chunks"] for e in entries}
    assert filled[LONE_ID] == {"source": 1, "target": 0}
    assert all(f == {"source": 0, "target": 0} for i, f in filled.items() if i != LONE_ID)

    # The record holds the volume with that chunk's voxels zero (not the pad value).
    source = data.source_xyz.copy()
    offset = [o * s for o, s in zip(TARGET_OFFSET, SCALE)]
    source[tuple(slice(a - o, b - o) for a, b, o in zip(*LONE_BOX, offset))] = 0
    for record in read_records(out):
        if record["instance_id"] == LONE_ID:
            start = record["source_box_xyz"][:3]
            size = [b - a for a, b in zip(start, record["source_box_xyz"][3:])]
            want = expected_crop_zyx(source, offset, start, size, 148)
            np.testing.assert_array_equal(record["source"], want)
            assert (want == 0).sum() > 0


def test_transient_faults_are_retried_and_a_404_is_dead_lettered(clean_run):
    data, clean_out, _ = clean_run
    with ChunkServer(data.root) as server:
        # Chunks of synapse 11/12 (target) and 15 (source) fail transiently first, then serve.
        server.transient["116-132_216-232_14-18"] = [503, 503]
        server.transient["232-264_400-432_14-18"] = [429]
        server.missing.add(LONE_SOURCE_CHUNK)
        out = data.root.parent / "served"
        _, manifest = run_pipeline(
            ["--materialization", data.table_path, "--source-url", server.url("source"),
             "--target-url", server.url("target"), "--output-dir", str(out),
             "--crop-size", "12", "12", "4", "--variants", "2"])
        served = dict(server.served)

    assert served[("116-132_216-232_14-18", 503)] == 2
    assert served[("116-132_216-232_14-18", 200)] >= 1
    assert served[("232-264_400-432_14-18", 429)] == 1
    assert served[("232-264_400-432_14-18", 200)] >= 1
    assert manifest["counts"]["failures"]["missing_chunks"] == 1
    [letter] = [d for d in _dead_letters(out) if d["reason"] == "missing_chunks"]
    assert letter["instance_id"] == LONE_ID

    expected = {k: r for k, r in _by_key(read_records(clean_out)).items() if k[0] != LONE_ID}
    got = _by_key(read_records(out))
    assert sorted(got) == sorted(expected)
    for key, record in got.items():
        for field in ("source", "target", "seed_target", "seed_slices", "source_box_xyz"):
            np.testing.assert_array_equal(record[field], expected[key][field])


def test_npy_files_an_earlier_attempt_wrote_for_an_instance_its_retry_dead_letters_are_deleted(
        clean_run, tmp_path, monkeypatch):
    """Found by review: npy files take their final names as they are written, so a bundle
    attempt that wrote an instance's and then failed left them, unlisted, when its retry
    dead-lettered the instance (a read that failed that time): the directory was no longer the
    files its index lists. The local runner retries no bundle, so the earlier attempt's files are
    written here as the retry's writer starts; its read fails on a damaged chunk (fetch_error)."""
    from synanno_datagen.layout import npy_paths
    from synanno_datagen.transforms import write as write_module
    from synanno_datagen.transforms.files import npy_bytes

    _, clean_out, _ = clean_run
    data = make_small_data(tmp_path / "data")
    [chunk] = (data.root / "source" / "4_4_33").glob(LONE_SOURCE_CHUNK + "*")
    chunk.write_bytes(b"\xff\xd8 not a JPEG")
    out = tmp_path / "out"
    paths = npy_paths(LONE_ID, 2)
    earlier = [paths["source"], paths["target"], *paths["seed_target"]]
    start_bundle = write_module.WriteShardsFn.start_bundle

    def after_a_failed_attempt(self):
        for rel in earlier:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(npy_bytes(np.zeros((4, 24, 24), np.uint8)))
        start_bundle(self)

    monkeypatch.setattr(write_module.WriteShardsFn, "start_bundle", after_a_failed_attempt)
    _, manifest = run_pipeline(data.argv(out, "--variants", "2"))

    [letter] = [d for d in _dead_letters(out) if d["instance_id"] == LONE_ID]
    assert letter["reason"] == "fetch_error"
    assert not any((out / rel).exists() for rel in earlier)
    listed = {f["path"] for line in (out / "index").glob("*.jsonl")
              for e in map(json.loads, line.read_text().splitlines()) for f in e["npy"]["files"]}
    on_disk = {str(p.relative_to(out)) for p in (out / "npy").rglob("*.npy")}
    assert on_disk == listed and len(listed) == manifest["npy"]["files"] > 0
    clean = {str(p.relative_to(clean_out)) for p in (clean_out / "npy").rglob("*.npy")}
    assert on_disk == clean - set(earlier)


def _cli(*argv):
    return [sys.executable, "-m", "synanno_datagen", "run", *argv]


def _dataset_files(out: Path):
    """{relative path: bytes} of a finished dataset; the manifest without its run/config.output_dir."""
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = str(path.relative_to(out))
        if rel == "manifest.json":
            manifest = json.loads(path.read_text())
            manifest.pop("run")
            manifest["config"].pop("output_dir")
            files[rel] = manifest
        else:
            files[rel] = path.read_bytes()
    return files


def test_a_killed_run_leaves_no_manifest_and_a_rerun_matches_a_clean_run(clean_run, tmp_path):
    data, clean_out, _ = clean_run    # the same volumes and flags, run cleanly in process
    argv = data.argv(tmp_path / "killed", "--variants", "2")
    child = subprocess.Popen(_cli(*argv), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    tmp_dir = tmp_path / "killed" / "_tmp"
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:
        if tmp_dir.is_dir() and any(p.is_file() for p in tmp_dir.rglob("*")):
            break
        time.sleep(0.01)
    assert child.poll() is None, "the run ended before it wrote its first fragment"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert any(p.is_file() for p in (tmp_path / "killed").rglob("*"))  # it was part-way

    subprocess.run(_cli(*argv), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    rerun, clean = _dataset_files(tmp_path / "killed"), _dataset_files(clean_out)
    assert sorted(rerun) == sorted(clean)
    assert any(name.endswith(".tfrecord") for name in rerun)
    for name in clean:
        assert rerun[name] == clean[name], name


def test_a_password_in_a_volume_url_is_written_nowhere(clean_run, tmp_path):
    """A volume behind HTTP basic auth (``http://user:password@host/...``, which the readers
    pass on) reads as any other; its password is in no output, message or log line: the manifest,
    dead letters and the closing line show ``user:***@``. A refused run's one line too."""
    data, _, _ = clean_run
    with ChunkServer(data.root) as server:
        server.missing.add(LONE_SOURCE_CHUNK)        # a dead letter that names the volume
        source, target = (server.url(v).replace("://", "://reader:s3cret@")
                          for v in ("source", "target"))
        out = tmp_path / "out"
        done = subprocess.run(_cli("--materialization", data.table_path, "--source-url", source,
                                   "--target-url", target, "--output-dir", str(out),
                                   "--crop-size", "12", "12", "4", "--variants", "1"),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"s3cret" not in written and "s3cret" not in done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["source_url"] == source.replace("s3cret", "***")
    assert manifest["counts"]["failures"]["missing_chunks"] == 1
    [letter] = [d for d in _dead_letters(out) if d["reason"] == "missing_chunks"]
    assert "reader:***@127.0.0.1" in letter["details"]

    nowhere = "http://reader:s3cret@127.0.0.1:9/"             # nothing answers there
    refused = subprocess.run(_cli("--materialization", data.table_path, "--source-url",
                                  nowhere + "source", "--target-url", nowhere + "target",
                                  "--output-dir", str(tmp_path / "refused")),
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "reader:***@127.0.0.1:9" in refused.stderr
    assert "s3cret" not in refused.stdout + refused.stderr


@pytest.mark.parametrize("flag, volume, query", [
    ("--target-url", "target/", "?access_token=SECRET&x=1"),
    ("--source-url", "source", "?access_token=SECRET"),
    ("--source-url", "source", "#SECRET"),
])
def test_a_volume_url_with_a_query_or_fragment_is_refused_and_its_token_shown_nowhere(
        small_data, tmp_path, flag, volume, query):
    """Found by review: with a token in --target-url's query a run read the volume (every
    request's path with a '/' after the token) and wrote the token into manifest.json; in
    --source-url's, the refusal and the closing line printed it. Now refused before any work,
    the query's names shown, not its values; credentials come from the environment."""
    with ChunkServer(small_data.root) as server:
        argv = small_data.argv(tmp_path / "out", "--variants", "1")
        for f, v in (("--source-url", "source"), ("--target-url", "target")):
            argv[argv.index(f) + 1] = server.url(v)
        url = server.url(volume) + query
        argv[argv.index(flag) + 1] = url
        done = subprocess.run(_cli(*argv), cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert not server.served   # refused before either volume is read
    assert done.returncode == 2, done.stderr[-2000:]
    shown = url.replace("SECRET", "***").replace("x=1", "x=***")
    assert done.stderr == (f"synanno-datagen: error: {flag} {shown}: a volume URL takes no "
                           "query string or fragment (a token there would be sent with a '/' "
                           "appended and written where the URL is); give the volume's folder "
                           "alone: credentials come from the environment (Google application "
                           "default credentials or GOOGLE_APPLICATION_CREDENTIALS, "
                           "cloud-volume's ~/.cloudvolume/secrets/)\n")
    event = json.loads(done.stdout.splitlines()[-1])
    assert (event["status"], event["exit_code"]) == ("refused", 2)
    assert "SECRET" not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
    assert not any(b"SECRET" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_redact_hides_only_the_password_of_each_url():
    from synanno_datagen.errors import redact

    assert redact("in http://u:p4ss@h:80/v and https://x:y@z/w, not gs://b/o") \
        == "in http://u:***@h:80/v and https://x:***@z/w, not gs://b/o"
    assert redact("precomputed://https://:tok@h/v") == "precomputed://https://:***@h/v"
    assert redact("http://alice:S3c@retPW@host/v") == "http://alice:***@host/v"   # a raw @
    # found by review: a password with a raw / (tokens, base64) was shown whole
    assert redact("'https://bob:pw9q/x@127.0.0.1:9/vol'") == "'https://bob:***@127.0.0.1:9/vol'"
    assert redact("https://bob:a?b#c/d@h/v x") == "https://bob:***@h/v x"
    # found by review: a quote in a password, an e-mail address as the user name
    assert redact("https://u:pa'ss@127.0.0.1:1/v") == "https://u:***@127.0.0.1:1/v"
    assert redact("https://me@example.com:pw123@h:1/v") == "https://me@example.com:***@h:1/v"
    assert redact("http://u:p@[::1]:8080/v") == "http://u:***@[::1]:8080/v"
    # every URL on its own: one after another without a space, one in another's query
    assert redact("['https://u:p@h/a','https://u2:SECRET2@h2/b']") == \
        "['https://u:***@h/a','https://u2:***@h2/b']"
    assert redact("https://proxy/fetch?url=https://u:SECRET@h/v") == \
        "https://proxy/fetch?url=https://u:***@h/v"
    assert redact("https://ng.example/#!precomputed://https://u:SECRET@h/v") == \
        "https://ng.example/#***precomputed://https://u:***@h/v"
    assert redact('{"a": "https://u:p@h/v", "b": "http://x:1234@z"}') == \
        '{"a": "https://u:***@h/v", "b": "http://x:***@z"}'
    assert redact("https://ghp_TOKEN@host/v and gs://b/sa@p.iam/o") == \
        "https://***@host/v and gs://b/sa@p.iam/o"          # a token as the user name
    for plain in ("['gs://b','ops@x.org']", "file:///tmp/a@b",
                  # found by review: a port and an @ in the path were taken for a password
                  # (in the manifest, and the generation hash then missed a changed volume)
                  "http://127.0.0.1:18731/data@2023/em", "http://[::1]:8080/a@b"):
        assert redact(plain) == plain                        # no user information there


def test_redact_hides_the_values_of_a_urls_query_and_its_fragment():
    """Found by review: a token in a query (``?access_token=...``) was shown whole, by the
    refusal's line and the closing line; '?' and '#' in file:// and gs:// names are names."""
    from synanno_datagen.errors import redact

    assert redact("http://h/target/?access_token=SECRET&x=1") == \
        "http://h/target/?access_token=***&x=***"
    assert redact("--source-url 'https://h:8/v?X-Goog-Signature=S1&k=': no") == \
        "--source-url 'https://h:8/v?X-Goog-Signature=***&k=': no"
    assert redact("(https://u:pw@h/v?SECRET#tok=S2), s3://b/o?t=S3") == \
        "(https://u:***@h/v?***#***), s3://b/o?t=***"
    assert redact("https://host?email=a@b.com and https://example.com#me@x") == \
        "https://host?email=*** and https://example.com#***"
    assert redact('{"url": "precomputed://http://h/v?t=S4"}') == \
        '{"url": "precomputed://http://h/v?t=***"}'
    for plain in ("gs://b/a?b#c", "precomputed://gs://b/x?y=1", "file:///tmp/a?b=1#c",
                  "http://h/v", "GS://b/a?b"):
        assert redact(plain) == plain


def test_an_uncaught_exception_is_printed_without_a_urls_password(capsys):
    from synanno_datagen.cli import _redacted_traceback

    try:
        raise RuntimeError("worker failed reading http://alice:S3cretPW@h/x/info")
    except RuntimeError:
        _redacted_traceback(*sys.exc_info())
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "S3cretPW" not in err
    assert "RuntimeError: worker failed reading http://alice:***@h/x/info" in err


def test_a_root_an_earlier_version_made_with_a_password_in_a_url_is_extended(clean_run,
                                                                             tmp_path,
                                                                             monkeypatch):
    """An earlier version hashed the volume URLs with their password; the root it made is
    extended, not started again (found by review), as a changed password's is."""
    from synanno_datagen.cli import main
    from synanno_datagen.pipeline import config as config_module

    data, _, _ = clean_run
    root = tmp_path / "root"
    with ChunkServer(data.root) as server:
        def argv(password):
            urls = [server.url(v).replace("://", f"://reader:{password}@")
                    for v in ("source", "target")]
            return ["run", "--materialization", data.table_path, "--source-url", urls[0],
                    "--target-url", urls[1], "--output-dir", str(root), "--incremental",
                    "--crop-size", "12", "12", "4", "--variants", "1", "--num-instances", "2"]

        with monkeypatch.context() as m:    # the earlier version: URLs hashed as typed
            m.setattr(config_module, "redact", lambda text: text)
            assert main(argv("old")) == 0
        assert main(argv("old")[:-2] + ["--num-instances", "4"]) == 0
        assert main(argv("new")[:-2] + ["--num-instances", "5"]) == 0
    runs = [json.loads((root / "runs" / f"0000{n}" / "manifest.json").read_text())
            for n in (1, 2, 3)]
    assert [r["incremental"]["extends"] is not None for r in runs] == [False, True, True]
    assert all(r["incremental"]["replaces"] is None for r in runs)
    assert runs[2]["config"]["source_url"].startswith("http://reader:***@")


def test_the_log_filter_redacts_a_records_traceback_too():
    import logging

    from synanno_datagen.cli import _redacted

    try:
        raise ValueError("Error reading http://alice:S3cretPW@h/x/info")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed on %s", ("it",),
                                   sys.exc_info())
    assert _redacted(record)
    text = logging.Formatter().format(record)
    assert "S3cretPW" not in text and "http://alice:***@h/x/info" in text
    # and the message itself (found by mutation review: an inverted '@' test passed every test)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "reading %s",
                               ("http://alice:S3cretPW@h/x/info",), None)
    assert _redacted(record) and record.getMessage() == "reading http://alice:***@h/x/info"
