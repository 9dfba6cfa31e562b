"""Output bytes are a contract: the same inputs and flags give the files recorded in
``tests/data/golden_output.json`` (sha256 of every dataset file but the manifest, whose ``config``
grows with new flags). It was made before the restructuring into one package (issue #12), and
guards every later change that must not alter what existing flags write.

Regenerate only for a change that is meant to alter the bytes: ``python -m tests.test_golden``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tests.conftest import GENERATED_FLAGS

GOLDEN = Path(__file__).parent / "data" / "golden_output.json"


def digests(out: Path) -> dict:
    """{relative path: sha256} of a dataset's files but its manifest."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def record_digests(out: Path) -> dict:
    """{"instance_id/variant" (variant layout) or "instance_id": sha256 of the serialized record}
    over every TFRecord shard: the records' bytes, whichever shard holds them."""
    from tfrecord.reader import tfrecord_iterator

    from synanno_datagen.reading.records import decode

    found = {}
    for shard in sorted((out / "tfrecord").glob("*.tfrecord")):
        for raw in tfrecord_iterator(str(shard)):
            r = decode(bytes(raw), ("instance_id", "variant"))
            key = f"{r['instance_id']}/{r['variant']}" if "variant" in r else str(r["instance_id"])
            found[key] = hashlib.sha256(bytes(raw)).hexdigest()
    return found


def dataset_digests(root: Path) -> dict:
    """Generate the golden datasets under ``root``: the default one (the shared ``generated``
    one) and the same with ``--record-layout variant``; their digests."""
    from tests.conftest import make_small_data
    from tests.test_pipeline import run_pipeline

    data = make_small_data(root / "data")
    run_pipeline(data.argv(root / "out", *GENERATED_FLAGS))
    run_pipeline(data.argv(root / "variant", *GENERATED_FLAGS, *VARIANT_FLAGS))
    return {"files": digests(root / "out"), "records": record_digests(root / "variant"),
            "variant_files": {k: v for k, v in digests(root / "variant").items()
                              if not k.startswith(("tfrecord/", "index/"))}}


VARIANT_FLAGS = ("--record-layout", "variant")


def test_output_bytes_equal_the_recorded_checksums(generated):
    want = json.loads(GOLDEN.read_text())
    assert want["flags"] == list(GENERATED_FLAGS)
    assert digests(generated[1]) == want["files"]


def test_variant_layout_writes_the_records_it_always_wrote(generated, tmp_path):
    """``--record-layout variant``: every record, npy file and dead letter byte for byte as the
    first layout wrote them (recorded before the instance layout and spatial shards existed;
    only which shard holds a record changed)."""
    from tests.test_pipeline import run_pipeline

    want = json.loads(GOLDEN.read_text())
    run_pipeline(generated[0].argv(tmp_path / "variant", *GENERATED_FLAGS, *VARIANT_FLAGS))
    assert record_digests(tmp_path / "variant") == want["records"]
    got = digests(tmp_path / "variant")
    assert {k: v for k, v in got.items() if not k.startswith(("tfrecord/", "index/"))} == \
        want["variant_files"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        made = dataset_digests(Path(tmp))
    before = json.loads(GOLDEN.read_text())
    if made["records"] != before["records"]:
        sys.exit("the variant layout's records changed: they are a contract; not written")
    GOLDEN.write_text(json.dumps({"flags": list(GENERATED_FLAGS), **made}, indent=1,
                                 sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(made['files'])} files, {len(made['records'])} records",
          file=sys.stderr)
