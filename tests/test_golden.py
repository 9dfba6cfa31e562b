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
    """{"instance_id/variant": sha256 of the serialized record} over every TFRecord shard: the
    records' bytes, whichever shard holds them."""
    from tfrecord.reader import tfrecord_iterator

    from synanno_datagen.reading.records import decode

    found = {}
    for shard in sorted((out / "tfrecord").glob("*.tfrecord")):
        for raw in tfrecord_iterator(str(shard)):
            r = decode(bytes(raw), ("instance_id", "variant"))
            found[f"{r['instance_id']}/{r['variant']}"] = hashlib.sha256(bytes(raw)).hexdigest()
    return found


def dataset_digests(root: Path) -> dict:
    """Generate the golden dataset (the shared ``generated`` one) under ``root``; its digests."""
    from tests.conftest import make_small_data
    from tests.test_pipeline import run_pipeline

    data = make_small_data(root / "data")
    run_pipeline(data.argv(root / "out", *GENERATED_FLAGS))
    return digests(root / "out"), record_digests(root / "out")


def test_output_bytes_equal_the_recorded_checksums(generated):
    want = json.loads(GOLDEN.read_text())
    assert want["flags"] == list(GENERATED_FLAGS)
    assert digests(generated[1]) == want["files"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files, records = dataset_digests(Path(tmp))
    GOLDEN.write_text(json.dumps({"flags": list(GENERATED_FLAGS), "files": files,
                                  "records": records}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(files)} files", file=sys.stderr)
