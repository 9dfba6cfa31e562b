"""WriteExamples and FinalizeShards: records are made and written where the arrays are.

Only small things cross a shuffle: each instance's variants are written as one TFRecord fragment
file next to its npy files, and the fragments' paths are grouped by (split, shard) and concatenated,
sorted by instance id, into the final shard (TFRecord files concatenate into valid TFRecord files),
under a temporary name that is renamed when complete.
"""
from __future__ import annotations

import io
import json
from typing import Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.tfrecordio import _TFRecordUtil  # Beam's framing + masked CRC32C

from synanno_datagen.layout import (
    DEAD_LETTER, FRAGMENTS_DIR, index_path, npy_paths, shard_name, tfrecord_path,
)
from synanno_datagen.transforms.examples import OPTIONAL_POINT_FEATURES, encode_example
from synanno_datagen.transforms.files import join, npy_bytes, read_chunks, write_atomic, write_bytes
from synanno_datagen.transforms.progress import ProgressCounter
from synanno_datagen.transforms.dead_letters import guarded_pardo
from synanno_datagen.transforms.records import DEAD, UNEXPECTED_ERROR, Varied, WrittenInstance
from synanno_datagen.transforms.seeds import seed_mask

TFRECORD, NPY = "tfrecord", "npy"


def json_line(obj) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def foreground_slices(target_zyx) -> List[int]:
    """Sorted z indices where the (z, y, x) mask has foreground: the slices seeds are drawn from."""
    depth = target_zyx.shape[0]
    return [int(z) for z in target_zyx.reshape(depth, -1).any(axis=1).nonzero()[0]]


def index_entry(varied: Varied) -> dict:
    """The per-instance index record (small, JSON-ready)."""
    inst = varied.instance
    points = {name: list(getattr(inst, name)) for name in OPTIONAL_POINT_FEATURES
              if getattr(inst, name) is not None}  # absent when the table has no such points
    return {
        "instance_id": inst.instance_id, "split": inst.split, "shard": inst.shard,
        "center_xyz": list(inst.center_xyz), **points,
        "target_box_xyz": varied.target_box.to_list(),
        "source_box_xyz": varied.source_box.to_list(),
        "target_padding_xyz": [list(p) for p in varied.target_padding_xyz],
        "source_padding_xyz": [list(p) for p in varied.source_padding_xyz],
        "shape_zyx": list(varied.source_zyx.shape),
        "foreground_voxels": int(varied.target_zyx.sum(dtype="int64")),
        "foreground_slices": foreground_slices(varied.target_zyx),
        "seed_slices": [list(s) for s in varied.seed_slices],
        "filled_chunks": {v: varied.filled_chunks.get(v, 0) for v in ("source", "target")},
        "table_shard": inst.ref.shard, "table_row": inst.ref.row,
    }


class WriteExampleFn(beam.DoFn):
    """Varied -> ((split, shard, num_shards), WrittenInstance), writing fragment and npy files."""

    def __init__(self, output_dir: str, formats: Sequence[str]):
        self._output_dir = output_dir
        self._formats = tuple(formats)
        self._instances = ProgressCounter("instances_written")
        self._variants = ProgressCounter("variants_written")

    def process(self, varied: Varied):
        inst = varied.instance
        seeds = [seed_mask(varied.target_zyx, s) for s in varied.seed_slices]
        entry = index_entry(varied)
        fragment, fragment_bytes = None, 0
        if TFRECORD in self._formats:
            buffer = io.BytesIO()
            for variant, seed_zyx in enumerate(seeds):
                _TFRecordUtil.write_record(buffer, encode_example(varied, variant, seed_zyx))
            fragment = join(self._output_dir, FRAGMENTS_DIR,
                            shard_name(inst.split, inst.shard, inst.num_shards),
                            f"{inst.instance_id}.tfrecord")
            # A fragment lives until its shard is assembled: no checksum (the shard gets one).
            fragment_bytes, _ = write_bytes(fragment, buffer.getvalue(), digest=False)
        if NPY in self._formats:
            entry["npy"] = self._write_npy(varied, seeds)
        self._instances.inc()
        self._variants.inc(len(seeds))
        yield (inst.split, inst.shard, inst.num_shards), WrittenInstance(
            inst.instance_id, inst.split, inst.shard, inst.num_shards, fragment, len(seeds),
            fragment_bytes, entry)

    def _write_npy(self, varied: Varied, seeds) -> dict:
        paths = npy_paths(varied.instance.instance_id, len(seeds))
        arrays = [(paths["source"], varied.source_zyx), (paths["target"], varied.target_zyx)]
        arrays += list(zip(paths["seed_target"], seeds))
        files = []
        for rel, array in arrays:
            size, sha = write_bytes(join(self._output_dir, rel), npy_bytes(array))
            files.append({"path": rel, "bytes": size, "sha256": sha})
        return {"files": files, **paths}


class FinalizeShardFn(beam.DoFn):
    """((split, shard, n), [WrittenInstance | None]) -> file infos of the TFRecord and index shards."""

    def __init__(self, output_dir: str, formats: Sequence[str]):
        self._output_dir = output_dir
        self._formats = tuple(formats)

    def process(self, element):
        (split, shard, num_shards), items = element
        written: List[WrittenInstance] = sorted(
            (w for w in items if w is not None), key=lambda w: w.instance_id)
        common = {"split": split, "shard": shard, "num_shards": num_shards,
                  "instances": len(written)}
        if TFRECORD in self._formats:
            rel = tfrecord_path(split, shard, num_shards)
            fragments = [w.fragment_path for w in written]
            size, sha = write_atomic(join(self._output_dir, rel),
                                     (c for path in fragments for c in read_chunks(path)))
            yield {"kind": TFRECORD, "path": rel, "records": sum(w.records for w in written),
                   "bytes": size, "sha256": sha, **common}
        rel = index_path(split, shard, num_shards)
        size, sha = write_atomic(join(self._output_dir, rel),
                                 (json_line(w.index_entry) for w in written))
        yield {"kind": "index", "path": rel, "records": len(written), "bytes": size,
               "sha256": sha, **common}


class WriteExamples(beam.PTransform):
    """Varied -> outputs ``ok`` (((split, shard, num_shards), WrittenInstance)) and
    ``dead_letter`` (exceptions)."""

    def __init__(self, output_dir: str, formats: Sequence[str]):
        super().__init__()
        self._fn = WriteExampleFn(output_dir, formats)

    def expand(self, varied):
        ok, dead = guarded_pardo(varied, "Write", self._fn, UNEXPECTED_ERROR, "WriteExamples")
        return {"ok": ok, DEAD: dead}


class FinalizeShards(beam.PTransform):
    """Keyed WrittenInstances + every expected shard key -> file infos (dicts) of final shards.

    ``shard_keys`` is a PCollection of (split, shard, num_shards) naming every shard, so a shard
    that no instance reached is still written (empty) and the ``-of-N`` names stay true.
    """

    def __init__(self, output_dir: str, formats: Sequence[str], shard_keys):
        super().__init__()
        self._output_dir = output_dir
        self._formats = formats
        self._shard_keys = shard_keys

    def expand(self, keyed_written):
        markers = self._shard_keys | "ShardMarkers" >> beam.Map(lambda key: (key, None))
        return ((keyed_written, markers) | "WithMarkers" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "Finalize" >> beam.ParDo(FinalizeShardFn(self._output_dir, self._formats)))


class WriteDeadLetterFn(beam.DoFn):
    """[DeadLetter] -> file info of ``dead_letter.jsonl`` (sorted by table position)."""

    PATH = DEAD_LETTER

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, letters: Optional[Iterable]):
        ordered = sorted(letters or [], key=lambda d: d.sort_key())
        size, sha = write_atomic(join(self._output_dir, self.PATH),
                                 (json_line(d.to_json()) for d in ordered))
        yield {"kind": "dead_letter", "path": self.PATH, "records": len(ordered), "bytes": size,
               "sha256": sha}
