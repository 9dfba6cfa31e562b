"""The demo data maker and the demo command, on real volumes under tmp_path."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from cloudvolume import CloudVolume

from pipeline.cli import main
from pipeline.demo_data import TARGET_OFFSET_XYZ, make_demo_data, write_precomputed


def test_write_precomputed_round_trips_with_offset_and_mips(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(40, 36, 6), dtype=np.uint8)
    url = write_precomputed(str(tmp_path / "raw"), raw, resolution_nm=(4, 4, 33),
                            voxel_offset_xyz=(10, 20, 3), chunk_size_xyz=(16, 16, 4),
                            downsample_mips=1)
    cv = CloudVolume(url, mip=0)
    np.testing.assert_array_equal(cv[10:50, 20:56, 3:9][..., 0], raw)
    low = CloudVolume(url, mip=1)
    assert list(low.meta.resolution(1)) == [8, 8, 33]
    expected = np.round(raw.reshape(20, 2, 18, 2, 6).mean(axis=(1, 3))).astype(np.uint8)
    np.testing.assert_array_equal(low[5:25, 10:28, 3:9][..., 0], expected)
    seg = rng.integers(0, 5, size=(32, 32, 8)).astype(np.uint64) * (1 << 40)
    url = write_precomputed(str(tmp_path / "seg"), seg, resolution_nm=(8, 8, 33),
                            voxel_offset_xyz=(100, 0, 7), chunk_size_xyz=(16, 16, 4),
                            encoding="compressed_segmentation", layer_type="segmentation")
    cv = CloudVolume(url)
    assert cv.meta.encoding(0) == "compressed_segmentation"
    np.testing.assert_array_equal(cv[100:132, 0:32, 7:15][..., 0], seg)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, make_demo_data(str(cache))


def test_demo_data_is_deterministic_and_cached(demo, tmp_path):
    cache, data = demo
    marker = cache / "demo-v1" / "COMPLETE"
    before = marker.stat().st_mtime_ns
    assert make_demo_data(str(cache)) == data and marker.stat().st_mtime_ns == before
    fresh = make_demo_data(str(tmp_path))
    assert (tmp_path / "demo-v1" / "synapses.csv").read_bytes() == \
        (cache / "demo-v1" / "synapses.csv").read_bytes()
    a = CloudVolume(data.target_url)[:, :, :]
    b = CloudVolume(fresh.target_url)[:, :, :]
    np.testing.assert_array_equal(a, b)


def test_demo_table_points_at_synapses_and_has_bad_rows(demo):
    _, data = demo
    cv = CloudVolume(data.target_url)
    labels = np.asarray(cv[:, :, :])[..., 0]
    off = np.array(TARGET_OFFSET_XYZ)
    rows = list(csv.DictReader(open(data.table_path)))
    good = [r for r in rows if r["type"] in ("E", "I")]
    assert len(good) == data.n_synapses >= 200 and len(rows) == len(good) + 4
    assert len({r["id"] for r in rows}) == len(rows)
    for r in good:
        c = np.array([int(float(r[k])) for k in "xyz"]) - off
        assert all(0 <= c) and all(c < labels.shape)
        assert labels[c[0], c[1], c[2]] == (1 if r["type"] == "E" else 2)
    bad = [r for r in rows if r["type"] == "bad"]
    assert sorted(r["z"] for r in bad)[0] == "" and any(r["x"] == "n/a" for r in bad)


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
