"""The demo data maker and the demo command, on real volumes under tmp_path."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cloudvolume import CloudVolume

from synanno_datagen.cli import main
from synanno_datagen.pipeline.demo_data import (N_SYNAPSES, TARGET_OFFSET_XYZ, TARGET_SIZE_XYZ,
                                default_cache_dir, make_demo_data, write_precomputed)

SMALL_XYZ = (192, 192, 24)


def _read_all(url, mip=0) -> np.ndarray:
    cv = CloudVolume(url, mip=mip, progress=False, fill_missing=True)  # absent label chunks: 0
    return np.asarray(cv[cv.bounds])[..., 0]


def _files(root) -> dict:
    return {os.path.relpath(os.path.join(d, f), root): os.path.join(d, f)
            for d, _, names in os.walk(root) for f in names}


def _reference_mean_xy(data_xyz, offset_xyz, lo_xy, hi_xy):
    """Independent reference for one (2, 2, 1) mip: each coarse voxel i averages the fine voxels
    at absolute 2i and 2i + 1, clamped into the data (edge replication)."""
    out = np.zeros((hi_xy[0] - lo_xy[0], hi_xy[1] - lo_xy[1], data_xyz.shape[2]))
    for dx in (0, 1):
        for dy in (0, 1):
            xs = np.clip(2 * np.arange(lo_xy[0], hi_xy[0]) + dx - offset_xyz[0], 0,
                         data_xyz.shape[0] - 1)
            ys = np.clip(2 * np.arange(lo_xy[1], hi_xy[1]) + dy - offset_xyz[1], 0,
                         data_xyz.shape[1] - 1)
            out += data_xyz[xs][:, ys]
    return np.round(out / 4).astype(data_xyz.dtype)


def test_write_precomputed_round_trips_raw_with_odd_offset_and_mips(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(37, 30, 6), dtype=np.uint8)
    url = write_precomputed(str(tmp_path / "raw"), raw, resolution_nm_xyz=(4, 4, 33),
                            voxel_offset_xyz=(11, 20, 3), chunk_size_xyz=(16, 16, 4),
                            downsample_mips=2)
    assert url == "file://" + str(tmp_path / "raw")
    cv = CloudVolume(url, mip=0, progress=False)
    assert list(cv.bounds.minpt) == [11, 20, 3] and list(cv.bounds.maxpt) == [48, 50, 9]
    np.testing.assert_array_equal(cv[11:48, 20:50, 3:9][..., 0], raw)
    low = CloudVolume(url, mip=1, progress=False)
    assert list(low.resolution) == [8, 8, 33]
    assert list(low.bounds.minpt) == [5, 10, 3] and list(low.bounds.maxpt) == [24, 25, 9]
    np.testing.assert_array_equal(_read_all(url, mip=1),
                                  _reference_mean_xy(raw, (11, 20), (5, 10), (24, 25)))
    lowest = CloudVolume(url, mip=2, progress=False)
    assert list(lowest.resolution) == [16, 16, 33] and list(lowest.bounds.minpt) == [2, 5, 3]


def test_write_precomputed_round_trips_compressed_segmentation(tmp_path):
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 5, size=(33, 32, 8)).astype(np.uint64) * np.uint64(1 << 40)
    seg[2:4, 4:6, 0] = [[9, 9], [9, 0]]   # coarse voxel (51, 2) covers absolute (102:104, 4:6)
    seg[2:4, 4:6, 1] = [[0, 0], [0, 9]]
    url = write_precomputed(str(tmp_path / "seg"), seg, resolution_nm_xyz=(8, 8, 33),
                            voxel_offset_xyz=(100, 0, 7), chunk_size_xyz=(16, 16, 4),
                            encoding="compressed_segmentation", layer_type="segmentation",
                            downsample_mips=1, gzip=True)
    cv = CloudVolume(url, progress=False)
    assert cv.meta.encoding(0) == cv.meta.encoding(1) == "compressed_segmentation"
    assert cv.info["scales"][1]["compressed_segmentation_block_size"] == [8, 8, 8]
    assert cv.layer_type == "segmentation" and cv.dtype == np.uint64
    np.testing.assert_array_equal(cv[100:133, 0:32, 7:15][..., 0], seg)
    chunk = tmp_path / "seg" / "8_8_33" / "100-116_0-16_7-11.gz"   # local files get a suffix
    assert chunk.read_bytes()[:2] == b"\x1f\x8b"
    coarse = _read_all(url, mip=1)
    assert coarse.shape == (17, 16, 8)
    assert coarse[1, 2, 0] == 9 and coarse[1, 2, 1] == 0   # the mode of each 2x2 block
    assert set(np.unique(coarse)) <= set(np.unique(seg))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert default_cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("SYNANNO_DATAGEN_CACHE")
    assert default_cache_dir() == str(tmp_path / "b" / "synanno-datagen")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "synanno-datagen")


def test_a_cache_that_cannot_be_written_is_one_line_and_the_cache_follows_the_umask(tmp_path):
    """Found by review: a read-only cache ended in a traceback; the cache's folder was always
    mode 0700 (a temporary folder renamed into place), so a cache shared by users, or made in
    an image as root, failed for everyone else."""
    from synanno_datagen.errors import ConfigError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError) as err:
        make_demo_data(str(tmp_path / "a-file" / "cache"), size_xyz=SMALL_XYZ)
    assert str(err.value).startswith(f"demo data cache {tmp_path / 'a-file' / 'cache'}: cannot "
                                     "write it (")
    assert str(err.value).endswith("); set SYNANNO_DATAGEN_CACHE to a writable folder")
    old = os.umask(0o022)
    try:
        make_demo_data(str(tmp_path / "cache"), size_xyz=SMALL_XYZ)
    finally:
        os.umask(old)
    assert (tmp_path / "cache" / "demo-v2-192x192x24").stat().st_mode & 0o777 == 0o755


def test_the_demo_reads_a_cache_whose_path_holds_escapes_or_glob_characters(tmp_path):
    """Found by review: the demo passed its volumes to run as file:// URLs it had not escaped,
    so a cache under 'a%41b' was read from 'aAb'."""
    from synanno_datagen.pipeline import probes
    from synanno_datagen.pipeline.demo import demo_argv
    from synanno_datagen.pipeline.table_options import match_table

    cache = tmp_path / "a%41b [x]"
    data = make_demo_data(str(cache))
    argv = demo_argv(str(tmp_path / "out"), str(cache))
    for flag, url in (("--source-url", data.source_url), ("--target-url", data.target_url)):
        assert probes.to_url(flag, argv[argv.index(flag) + 1]) == url
        assert (Path(url[len("file://"):]) / "info").is_file()
    # a table path is a glob only when no file has that name
    assert match_table(argv[argv.index("--materialization") + 1]) == [data.table_path]


def test_the_demo_views_go_beside_any_spelling_of_the_dataset_folder(tmp_path, monkeypatch):
    """Found by review: --output-dir . put the views in './.-views', inside the dataset."""
    from synanno_datagen.pipeline.demo import views_dir

    monkeypatch.chdir(tmp_path)
    assert views_dir(".") == views_dir("./") == str(tmp_path) + "-views"
    assert views_dir("out/dx/.") == views_dir("out/dx/") == views_dir("out//dx") == "out/dx-views"
    assert views_dir("out/dx/..") == "out-views"
    assert views_dir("gs://b/d/") == "gs://b/d-views"


# sha256 over the small demo's files (names and contents): the bytes every earlier build made
# (a change to the maker that changes them must bump the cache's "demo-v2" name too)
SMALL_DEMO_DIGEST = "cfc4ce43c74ca6e173b506675ec4fcc8098f607ef8d0f0d7304396c086863dba"


def _tree_digest(root) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, path in sorted(_files(root).items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


def test_small_demo_is_byte_identical_and_reused(tmp_path):
    first = make_demo_data(str(tmp_path / "one"), size_xyz=SMALL_XYZ)
    root = tmp_path / "one" / "demo-v2-192x192x24"
    assert _tree_digest(root) == SMALL_DEMO_DIGEST
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in _files(root).items()}
    assert make_demo_data(str(tmp_path / "one"), size_xyz=SMALL_XYZ) == first
    assert {k: os.stat(p).st_mtime_ns for k, p in _files(root).items()} == mtimes
    assert os.listdir(tmp_path / "one") == ["demo-v2-192x192x24"]   # no partial copies left

    second = make_demo_data(str(tmp_path / "two"), size_xyz=SMALL_XYZ)
    a, b = _files(root), _files(tmp_path / "two" / "demo-v2-192x192x24")
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [k for k in sorted(a) if open(a[k], "rb").read() != open(b[k], "rb").read()] == []
    np.testing.assert_array_equal(_read_all(first.target_url), _read_all(second.target_url))


@pytest.mark.parametrize("slab_x", [2, 6])
def test_the_texture_is_the_same_whatever_its_slabs(monkeypatch, slab_x):
    """Found by review: the raw texture was made in one pass of several float32 volumes (37 bytes
    of memory per source voxel: 18 GB for a 1600 x 1600 x 48 demo). Made in slabs of x planes,
    it is the same voxels, and leaves the generator where the table's rows draw from next."""
    from synanno_datagen.pipeline import demo_data

    labels_xyz = np.zeros((21, 17, 5), np.uint64)
    labels_xyz[3:9, 4:10, 1:4] = 7

    def texture(slab):
        monkeypatch.setattr(demo_data, "TEXTURE_SLAB_X", slab)
        rng = np.random.default_rng(3)
        return demo_data._em_texture(rng, labels_xyz), rng.integers(0, 2**63, size=4)

    whole, after = texture(10_000)
    assert whole.shape == (42, 34, 5) and whole.dtype == np.uint8
    assert whole[6:18, 8:20, 1:4].mean() < whole[30:, 24:, :].mean() - 40   # the cleft is dark
    sliced, after_slabs = texture(slab_x)
    np.testing.assert_array_equal(sliced, whole)
    np.testing.assert_array_equal(after_slabs, after)


def test_other_layouts_hold_the_demo_voxels_and_table(tmp_path):
    """Every scale sharded, or none (benchmarks compare layouts): same voxels, same table."""
    demo = make_demo_data(str(tmp_path), size_xyz=SMALL_XYZ)
    for layout, sharded in (("sharded", True), ("unsharded", False)):
        data = make_demo_data(str(tmp_path), size_xyz=SMALL_XYZ, layout=layout)
        assert data.source_url != demo.source_url and data.n_synapses == demo.n_synapses
        assert open(data.table_path).read() == open(demo.table_path).read()
        for url, reference, mips in ((data.source_url, demo.source_url, (0, 1)),
                                     (data.target_url, demo.target_url, (0,))):
            scales = CloudVolume(url, progress=False).info["scales"]
            assert [("sharding" in scale) for scale in scales] == [sharded] * len(scales)
            for mip in mips:
                np.testing.assert_array_equal(_read_all(url, mip), _read_all(reference, mip))
    with pytest.raises(ValueError, match="layout 'zarr'"):
        make_demo_data(str(tmp_path), size_xyz=SMALL_XYZ, layout="zarr")


def test_a_copy_without_marker_is_rebuilt(tmp_path):
    root = tmp_path / "demo-v2-192x192x24"
    (root / "target").mkdir(parents=True)
    (root / "synapses.csv").write_text("half written")
    data = make_demo_data(str(tmp_path), size_xyz=SMALL_XYZ)
    assert json.loads((root / "COMPLETE").read_text())["n_synapses"] == data.n_synapses
    assert open(data.table_path).readline().startswith("id,x,y,z,pre_pt_x")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, make_demo_data(str(cache))


def _classify(rows, labels_xyz):
    """Good rows (parseable, inside, on a label) and the bad rows, by what is wrong with them."""
    off, size = np.array(TARGET_OFFSET_XYZ), np.array(labels_xyz.shape)
    good, bad = [], {}
    for r in rows:
        try:
            c = np.array([float(r[k]) for k in "xyz"]).astype(int) - off
        except ValueError:
            bad["empty" if "" in (r["x"], r["y"], r["z"]) else "not_a_number"] = r
            continue
        if not (np.all(c >= 0) and np.all(c < size)):
            bad["outside"] = r
        elif labels_xyz[tuple(c)] == 0:
            bad["empty_target"] = (r, c)
        else:
            good.append((r, c))
    return good, bad


def test_demo_volumes_have_the_documented_geometry(demo):
    _, data = demo
    target = CloudVolume(data.target_url, progress=False)
    assert list(target.bounds.minpt) == [1000, 2000, 100]
    assert list(target.bounds.maxpt) == [1384, 2384, 148]
    assert list(target.resolution) == [8, 8, 33] and target.dtype == np.uint64
    assert target.meta.encoding(0) == "compressed_segmentation"
    assert list(target.meta.chunk_size(0)) == [64, 64, 16]
    source = CloudVolume(data.source_url, mip=0, progress=False)
    assert list(source.bounds.minpt) == [2000, 4000, 100]
    assert list(source.bounds.maxpt) == [2768, 4768, 148]
    assert list(source.resolution) == [4, 4, 33] and source.dtype == np.uint8
    assert source.meta.encoding(0) == source.meta.encoding(1) == "jpeg"
    # Laid out as H01: raw in shard files; label chunks that are all background not stored.
    assert all("sharding" in scale for scale in source.info["scales"])
    assert "sharding" not in target.info["scales"][0]
    stored = len(list((Path(data.target_url[len("file://"):]) / "8_8_33").iterdir()))
    assert 0 < stored < 6 * 6 * 3
    low = CloudVolume(data.source_url, mip=1, progress=False)
    assert list(low.resolution) == [8, 8, 33] and low.bounds == target.bounds
    raw, labels = _read_all(data.source_url, mip=1), _read_all(data.target_url)
    assert raw[labels != 0].mean() < raw[labels == 0].mean() - 40   # clefts are visible
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_demo_table_points_at_synapses_and_has_the_bad_rows(demo):
    _, data = demo
    labels = _read_all(data.target_url)
    text = open(data.table_path).read()
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == ["id", "x", "y", "z", "pre_pt_x", "pre_pt_y", "pre_pt_z",
                             "post_pt_x", "post_pt_y", "post_pt_z", "type", "score"]
    assert len({r["id"] for r in rows}) == len(rows) and min(int(r["id"]) for r in rows) >= 10**12
    good, bad = _classify(rows, labels)
    assert len(good) == data.n_synapses == N_SYNAPSES and len(rows) == len(good) + 4
    for r, c in good:
        assert labels[tuple(c)] == {"E": 1, "I": 2}[r["type"]]
        assert 0.5 <= float(r["score"]) <= 1
    assert any(r["x"].endswith(".0") for r, _ in good)
    centers = np.array([c for _, c in good])
    assert np.any(centers[:, 2] < 4) and np.any(centers[:, 2] >= TARGET_SIZE_XYZ[2] - 4)
    assert np.any(centers[:, :2] < 16) and np.any(centers[:, :2] >= 384 - 16)
    assert sorted(bad) == ["empty", "empty_target", "not_a_number", "outside"]
    assert bad["empty"]["z"] == "" and bad["not_a_number"]["x"] == "n/a"
    _, c = bad["empty_target"]   # no label within one default crop (128 x 128 x 16) around it
    assert not labels[max(c[0] - 64, 0):c[0] + 64, max(c[1] - 64, 0):c[1] + 64,
                      max(c[2] - 8, 0):c[2] + 8].any()
    assert not np.isin(labels[tuple(centers.T)], [0, 3]).any()


def test_demo_command_runs_end_to_end(tmp_path, capsys, monkeypatch, demo):
    cache, data = demo
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(cache))
    out = tmp_path / "demo-out"
    assert main(["demo", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["instances_written"] == data.n_synapses
    assert counts["failures"] == {"empty_target": 1, "missing_coordinate": 1,
                                  "not_a_number": 1, "outside_volume": 1}
    assert counts["variants_written"] == 4 * data.n_synapses
    assert set(manifest["splits"]) == {"train", "val", "test"}
    assert f"written {data.n_synapses}" in printed and "manifest:" in printed
    event = json.loads(printed.splitlines()[-1])   # after the views: the run's last line
    assert (event["command"], event["status"], event["output_dir"]) == ("demo", "ok", str(out))
    assert event["instances_written"] == data.n_synapses
    # The demo's views sit beside the dataset, which keeps only what its manifest lists.
    views = tmp_path / "demo-out-views"
    plots = [views / "plots" / n for n in ("seed_count.png", "seed_z.png",
                                           "foreground_voxels.png", "failures.png")]
    assert f"preview: {views / 'preview.png'}" in printed
    assert "plots: " + " ".join(map(str, plots)) in printed
    assert sorted(p.name for p in out.iterdir()) == ["dead_letter.jsonl", "index", "manifest.json",
                                                     "npy", "tfrecord"]
    from PIL import Image

    from synanno_datagen.pipeline.demo import DEMO_PREVIEW
    from synanno_datagen.reading.preview import GAP_PX, HEADER_PX, STRIP_PX

    with Image.open(views / "preview.png") as image:   # 6 rows of 80 px tiles
        assert image.size[1] == HEADER_PX + DEMO_PREVIEW["n"] * (STRIP_PX + 80 + GAP_PX)
    assert (views / "preview.png").stat().st_size < 300_000
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)


def test_a_demo_stopped_while_drawing_its_views_says_its_dataset_is_complete(
        tmp_path, capsys, monkeypatch, demo):
    """Found by review: Ctrl-C while the demo drew its preview said 'run the same command again
    to finish the dataset', its closing line without the dataset's counts, although the
    dataset was complete. It still exits 130, and says which part was left."""
    import signal
    import time

    from synanno_datagen.reading import preview

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    cache, _ = demo
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(cache))
    monkeypatch.setattr(preview, "run_preview", interrupted)
    out = tmp_path / "demo-out"
    assert main(["demo", "--output-dir", str(out), "--num-instances", "5", "--quiet"]) == 130
    captured = capsys.readouterr()
    event = json.loads(captured.out.splitlines()[-1])
    assert (event["exit_code"], event["status"], event["error"]) == (130, "failed",
                                                                     "Interrupted: SIGINT")
    assert event["instances_written"] == 5 and (out / "manifest.json").exists()
    assert captured.err.splitlines()[-1] == (
        f"synanno-datagen: interrupted (SIGINT) once the dataset was complete: {out}; the "
        "demo's views may be missing (synanno-datagen preview and inspect --plots draw them)")


def test_a_demo_of_npy_files_only_gets_its_views(tmp_path, capsys, monkeypatch, demo):
    """Found by review: 'demo --formats npy' wrote its dataset, then ended refused (exit 2): its
    preview read TFRecord shards only."""
    cache, _ = demo
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(cache))
    out = tmp_path / "npy-demo"
    assert main(["demo", "--output-dir", str(out), "--formats", "npy", "--num-instances",
                 "20"]) == 0
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (event["status"], event["instances_written"]) == ("ok", 20)
    with open(tmp_path / "npy-demo-views" / "preview.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_a_demo_output_dir_under_home_gets_its_views(tmp_path, capsys, monkeypatch, demo):
    """Found by review: with --output-dir '~/dm' (a quoted ~) run wrote the dataset to
    $HOME/dm, and the demo then looked for it at './~/dm' and ended refused."""
    cache, _ = demo
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["demo", "--output-dir", "~/dm", "--num-instances", "5", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "ok"
    assert (tmp_path / "dm" / "manifest.json").is_file()
    assert (tmp_path / "dm-views" / "preview.png").is_file()


def test_demo_replaces_only_its_own_earlier_output(tmp_path, capsys, monkeypatch, demo,
                                                    small_data):
    """`demo --output-dir DIR` passed --overwrite always: a mistyped DIR holding the user's own
    dataset was replaced without a word. It now replaces only a dataset made from the demo's
    table (an earlier demo, whatever its options); anything else is refused as `run` refuses."""
    from synanno_datagen.pipeline.demo import demo_argv

    cache, data = demo
    monkeypatch.setenv("SYNANNO_DATAGEN_CACHE", str(cache))
    mine = tmp_path / "mine"
    assert main(["run"] + small_data.argv(mine, "--variants", "1")) == 0
    before = (mine / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--output-dir", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "holds a dataset made with a different config" in err
    assert (mine / "manifest.json").read_bytes() == before

    earlier_demo = tmp_path / "earlier-demo"
    earlier_demo.mkdir()
    (earlier_demo / "manifest.json").write_text(json.dumps(
        {"config": {"materialization": data.table_path, "variants": 2}, "counts": {},
         "files": {}}))
    assert "--overwrite" in demo_argv(str(earlier_demo), str(cache))
    assert "--overwrite" not in demo_argv(str(mine), str(cache))
    assert "--overwrite" not in demo_argv(str(tmp_path / "new"), str(cache))
