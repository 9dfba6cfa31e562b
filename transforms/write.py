"""WriteShards and FinalizeShards: every record is written once, by the worker that made it.

A shard group's instances reach one worker together (see transforms.shards) and leave the fused
fetch -> clean -> variants chain in a fixed order (block, then id); the writer appends each
instance's records to its group's file for its split, under a temporary name, and closes a
group's files when the next group's instances begin or the bundle ends (a group never spans
bundles), with its instances' index lines in a file beside. Only small things cross the next
shuffle: per group and split, the files' names, size, checksum and counts, whatever the group
holds. FinalizeShards then numbers the shards of each split (``train-00003-of-00016``), renames
the record files into place (a rename, not a copy) and writes the index shards from the index
lines, adding each line's shard number. A group whose instances all failed writes nothing, so a
run that writes no instance writes no shard.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import secrets
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.tfrecordio import _TFRecordUtil  # Beam's framing + masked CRC32C
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from synanno_datagen.layout import (
    NPY, TFRECORD, group_index_path, group_tfrecord_path, index_path, join, json_line, npy_paths,
    tfrecord_path,
)
from synanno_datagen.record_format import OPTIONAL_POINT_FEATURES, seed_mask
from synanno_datagen.transforms.examples import encode_example, encode_instance
from synanno_datagen.transforms.files import (
    FileSystems, before_commit, delete_file, move_once, npy_bytes, read_jsonl, write_atomic,
    write_bytes,
)
from synanno_datagen.transforms.progress import ProgressCounter
from synanno_datagen.transforms.records import (
    DEAD, FETCH_ERROR, UNEXPECTED_ERROR, DeadLetter, Varied, WrittenShard, exception_text,
)
from synanno_datagen.transforms.seeds import foreground_slices

log = logging.getLogger(__name__)



def index_entry(varied: Varied) -> dict:
    """The per-instance index record (small, JSON-ready; its shard is added when numbered)."""
    inst = varied.instance
    points = {name: list(getattr(inst, name)) for name in OPTIONAL_POINT_FEATURES
              if getattr(inst, name) is not None}  # absent when the table has no such points
    return {
        "instance_id": inst.instance_id, "split": inst.split,
        "center_xyz": list(inst.center_xyz), **points,
        "target_box_xyz": varied.target_box.to_list(),
        "source_box_xyz": varied.source_box.to_list(),
        "target_padding_xyz": [list(p) for p in varied.target_padding_xyz],
        "source_padding_xyz": [list(p) for p in varied.source_padding_xyz],
        "shape_zyx": list(varied.source_zyx.shape),
        "foreground_voxels": int(varied.target_zyx.sum(dtype="int64")),
        "center_distance_nm": varied.center_distance_nm,
        "foreground_slices": foreground_slices(varied.target_zyx).tolist(),
        "seed_slices": [list(s) for s in varied.seed_slices],
        "filled_chunks": {v: varied.filled_chunks.get(v, 0) for v in ("source", "target")},
        "table_shard": inst.ref.table_shard, "table_row": inst.ref.row,
    }


def tfrecord_bytes(varied: Varied, layout: str) -> Tuple[bytes, int]:
    """(TFRecord-framed bytes of the instance's records, number of records)."""
    buffer = io.BytesIO()
    if layout == "instance":
        _TFRecordUtil.write_record(buffer, encode_instance(varied))
        return buffer.getvalue(), 1
    for variant, slices in enumerate(varied.seed_slices):
        seed = seed_mask(varied.target_zyx, slices)
        _TFRecordUtil.write_record(buffer, encode_example(varied, variant, seed))
    return buffer.getvalue(), len(varied.seed_slices)


class _ShardFile:
    """One group's TFRecord file for one split, written once under its temporary name: bytes,
    sha256 and records counted as they pass; gzip framing with a fixed header (mtime 0)."""

    def __init__(self, path: str, compression: str):
        from apache_beam.io.filesystem import CompressionTypes

        self.path = path
        self.records = self.size = 0
        self._digest = hashlib.sha256()
        self._raw = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._out = self._raw
        if compression == "gzip":
            self._out = gzip.GzipFile(fileobj=_Counting(self._raw, self), mode="wb", mtime=0,
                                      filename="", compresslevel=6)
        else:
            self._out = _Counting(self._raw, self)

    def append(self, data: bytes, records: int) -> None:
        self._out.write(data)
        self.records += records

    def close(self) -> str:
        if isinstance(self._out, gzip.GzipFile):
            self._out.close()
        self._raw.close()
        return self._digest.hexdigest()

    def discard(self) -> None:
        """Close and delete the file of a failed attempt (whatever state it is in)."""
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a broken file is still to delete
            pass
        delete_file(self.path)


class _Counting:
    """A write-only stream that counts and hashes what reaches the file."""

    def __init__(self, raw, shard: _ShardFile):
        self._raw, self._shard = raw, shard

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self._shard.size += len(data)
        self._shard._digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass


class _Group:
    """A shard group's file for one split in a writer's bundle (None without the tfrecord
    format), its instances' index lines and WrittenShard counts."""

    def __init__(self, shard: Optional[_ShardFile]):
        self.shard = shard
        self.entries: List[dict] = []
        self.counts = dict.fromkeys(("instances", "variants", "npy_files", "npy_bytes",
                                     "filled_source", "filled_target", "centers_off_label"), 0)

    def add(self, entry: dict, data: bytes, records: int) -> None:
        if self.shard is not None:
            self.shard.append(data, records)
        self.entries.append(entry)
        npy = entry.get("npy", {}).get("files", [])
        for key, n in (("instances", 1), ("variants", len(entry["seed_slices"])),
                       ("npy_files", len(npy)), ("npy_bytes", sum(f["bytes"] for f in npy)),
                       ("filled_source", entry["filled_chunks"]["source"]),
                       ("filled_target", entry["filled_chunks"]["target"]),
                       ("centers_off_label", int(entry["center_distance_nm"] > 0))):
            self.counts[key] += n


class WriteShardsFn(beam.DoFn):
    """Varied -> the instance's records appended to its group's file and its npy files written;
    as a group ends (the next group begins, or the bundle ends), a WrittenShard per (group,
    split) it wrote.

    ``keepalive``: an object whose ``beat()`` is called as each bundle starts and before each
    instance is written (the run's lease heartbeat, pipeline.lease.Heartbeat, which looks at
    the lease at most every few minutes, and before each instance whose npy files it writes:
    it raises when the output directory is no longer the run's, so a bundle that stalled past
    the lease's expiry, or whose lease was broken, writes no further instance)."""

    def __init__(self, output_dir: str, formats: Sequence[str], layout: str, compression: str,
                 keepalive=None):
        self._output_dir = output_dir
        self._keepalive = keepalive
        self._formats = tuple(formats)
        self._layout = layout
        self._compression = compression
        self._instances = ProgressCounter("instances_written")
        self._variants = ProgressCounter("variants_written")
        self._open: Dict[Tuple[int, str], _Group] = {}
        self._attempt = ""

    def start_bundle(self):
        self._discard_open()   # a bundle that failed on this writer left its files open
        self._attempt = secrets.token_hex(6)   # this attempt's temporary files: its own
        if self._keepalive is not None:
            self._keepalive.beat()

    def _discard_open(self) -> None:
        for opened in self._open.values():
            if opened.shard is not None:
                opened.shard.discard()
        self._open = {}

    def process(self, varied: Varied, after=None):  # after: a step that must come first
        inst = varied.instance
        try:  # what one instance can fail at: making its index line, records and npy bytes
            entry = index_entry(varied)
            data, records = (tfrecord_bytes(varied, self._layout)
                             if TFRECORD in self._formats else (b"", 0))
            npy = self._npy_files(varied) if NPY in self._formats else None
        except Exception as e:  # noqa: BLE001 - a dead letter for this instance
            yield beam.pvalue.TaggedOutput(DEAD, DeadLetter.for_instance(
                inst, UNEXPECTED_ERROR, exception_text(type(e), repr(e)), "WriteShards"))
            return
        # Storage from here on: bytes written cannot be taken back, so a failure fails the
        # bundle, which a runner retries from the start (its files written again), rather
        # than leave part of an instance beside its dead letter.
        if self._keepalive is not None:
            # npy files get their final names as they are written: look at the lease before
            # each instance's (a run whose lease was broken must not write over the files of
            # the run that took it, whose run folder may be this one's); records go to
            # temporary files, named after a look of their own (before_commit)
            self._keepalive.beat(force=npy is not None)
        if npy is not None:
            entry["npy"] = self._write_npy(*npy)
        key = (inst.group, inst.split)
        if key not in self._open:
            # A group's instances come together (FetchShardFn gives out one group's before the
            # next's), so the groups before this one are done: closed now, not at the bundle's
            # end, where a bundle of many groups (the DirectRunner's is the whole run) kept every
            # index line and an open file per group.
            yield from self._finish([k for k in self._open if k[0] != inst.group])
            shard = None
            if TFRECORD in self._formats:
                shard = _ShardFile(join(self._output_dir, group_tfrecord_path(
                    inst.split, inst.group, self._compression, self._attempt)),
                    self._compression)
            self._open[key] = _Group(shard)
        self._open[key].add(entry, data, records)
        self._instances.inc()
        self._variants.inc(len(varied.seed_slices))

    def finish_bundle(self):
        for written in self._finish(list(self._open)):
            yield WindowedValue(written, MIN_TIMESTAMP, [GlobalWindow()])

    def _finish(self, keys: List[Tuple[int, str]]) -> Iterable[WrittenShard]:
        """Close the files of these open (group, split)s, write their index lines: a
        WrittenShard each, in (group, split) order."""
        if keys and self._keepalive is not None:
            # still ours? (else its files would be finished beside another run's, in a run
            # folder that run may have committed)
            self._keepalive.beat(force=True)
        for group, split in sorted(keys):
            opened = self._open[(group, split)]
            index = join(self._output_dir, group_index_path(split, group, self._attempt))
            write_atomic(index, (json_line(e) for e in opened.entries))
            shard = opened.shard
            if shard is None:
                written = WrittenShard(group, split, None, 0, 0, "", index, opened.counts)
            else:
                sha = shard.close()
                written = WrittenShard(group, split, shard.path, shard.records, shard.size, sha,
                                       index, opened.counts)
            del self._open[(group, split)]   # closed: no longer this bundle's to discard
            yield written

    def teardown(self):
        self._discard_open()   # a failed bundle's files, when the runner drops this writer

    @staticmethod
    def _npy_files(varied: Varied) -> Tuple[dict, List[Tuple[str, bytes]]]:
        """(npy paths, [(path, npy bytes)]) of one instance: source, target, a seed mask per
        variant."""
        seeds = [seed_mask(varied.target_zyx, s) for s in varied.seed_slices]
        paths = npy_paths(varied.instance.instance_id, len(seeds))
        arrays = [(paths["source"], varied.source_zyx), (paths["target"], varied.target_zyx)]
        arrays += list(zip(paths["seed_target"], seeds))
        return paths, [(rel, npy_bytes(array)) for rel, array in arrays]

    def _write_npy(self, paths: dict, files: List[Tuple[str, bytes]]) -> dict:
        listed = []
        for rel, data in files:
            size, sha = write_bytes(join(self._output_dir, rel), data)
            listed.append({"path": rel, "bytes": size, "sha256": sha})
        return {"files": listed, **paths}


class DeleteLeftoverNpyFn(beam.DoFn):
    """DeadLetter of a selected instance -> the relative paths of npy files of it deleted.

    npy files take their final names as they are written, so an attempt of a bundle that wrote
    an instance's and then failed left them behind, unlisted, when the retry dead-lettered the
    instance: only a failure that one attempt meets and another not (``fetch_error``, a read
    that failed this time; ``unexpected_error``), other reasons repeat in every attempt. Run
    with a side input made of every WrittenShard (``written``: their npy totals, one element
    whatever the run's size), so after the last write; ``keepalive`` as for WriteShardsFn."""

    RETRY_DEPENDENT = (FETCH_ERROR, UNEXPECTED_ERROR)

    def __init__(self, output_dir: str, variants: int, keepalive=None):
        self._output_dir = output_dir
        self._variants = variants
        self._keepalive = keepalive   # looked at before a deletion (still this run's folder?)
        self._deleted = beam.metrics.Metrics.counter("synanno", "npy_leftovers_deleted")

    def process(self, letter: DeadLetter, written=None):
        if letter.reason not in self.RETRY_DEPENDENT or letter.instance_id is None:
            return
        paths = npy_paths(letter.instance_id, self._variants)
        for rel in (paths["source"], paths["target"], *paths["seed_target"]):
            path = join(self._output_dir, rel)
            if FileSystems.exists(path):
                if self._keepalive is not None:
                    self._keepalive.beat(force=True)
                delete_file(path)
                self._deleted.inc()
                log.warning("deleted %s: an earlier attempt wrote it before instance %d "
                            "failed (%s)", rel, letter.instance_id, letter.reason)
                yield rel


class WriteShards(beam.PTransform):
    """Varied -> outputs ``ok`` (WrittenShard per group and split) and ``dead_letter``
    (instances whose records could not be made)."""

    def __init__(self, output_dir: str, formats: Sequence[str], layout: str = "instance",
                 compression: str = "none", keepalive=None, after=None):
        super().__init__()
        self._fn = WriteShardsFn(output_dir, formats, layout, compression, keepalive)
        self._after = [after] if after is not None else []   # a side input to wait for

    def expand(self, varied):
        out = varied | "Write" >> beam.ParDo(self._fn, *self._after).with_outputs(DEAD,
                                                                                 main="ok")
        return {"ok": out.ok, DEAD: out[DEAD]}


def number_shards(written: Iterable[WrittenShard]) -> List[Tuple[WrittenShard, int, int]]:
    """(shard, its number in its split, shards in its split), in (split, group) order.

    Raises RuntimeError when a (group, split) came twice: its instances reached the writer in
    two bundles, or in one after another group's (a runner that did not fuse fetching with
    writing), and the second file would have replaced the first under their one temporary
    name."""
    by_split: Dict[str, List[WrittenShard]] = {}
    for w in sorted(written, key=lambda w: (w.split, w.group)):
        shards = by_split.setdefault(w.split, [])
        if shards and shards[-1].group == w.group:
            raise RuntimeError(f"shard group {w.group} of split {w.split} reached the writer "
                               "twice (in two bundles, or after another group's instances); "
                               "its records would be lost (the writer needs a group's "
                               "instances together: fetching and writing fused into one stage)")
        shards.append(w)
    return [(w, i, len(shards)) for shards in by_split.values() for i, w in enumerate(shards)]


class FinalizeShardFn(beam.DoFn):
    """(WrittenShard, its number in its split, shards in its split) -> file infos of its final
    TFRecord and index shard (``keepalive``: see files.before_commit; looked at before a
    bundle's first rename, and between shards)."""

    def __init__(self, output_dir: str, compression: str, keepalive=None):
        self._output_dir = output_dir
        self._compression = compression
        self._keepalive = keepalive
        self._looked = False

    def start_bundle(self):
        self._looked = False

    def process(self, numbered: Tuple[WrittenShard, int, int]):
        if not self._looked:
            before_commit(self._keepalive)
            self._looked = True
        elif self._keepalive is not None:   # a stall between shards: looked at once it ends
            self._keepalive.beat()
        try:
            yield from self._finalize(*numbered)
        except Exception:
            # a temporary file gone: removed by the run that took this one's output after
            # its lease was broken (LeaseLost then), or the error it is
            if self._keepalive is not None:
                self._keepalive.beat(force=True)
            raise

    def _finalize(self, w: WrittenShard, shard: int, num_shards: int):
        common = {"split": w.split, "shard": shard, "num_shards": num_shards,
                  "instances": w.counts["instances"]}
        if w.path is not None:
            rel = tfrecord_path(w.split, shard, num_shards, self._compression)
            move_once(w.path, join(self._output_dir, rel), w.bytes)
            yield {"kind": TFRECORD, "path": rel, "records": w.records, "bytes": w.bytes,
                   "sha256": w.sha256, **common}
        rel = index_path(w.split, shard, num_shards)
        lines = ({**e, "shard": shard} for e in read_jsonl(w.index))
        size, sha = write_atomic(join(self._output_dir, rel), (json_line(e) for e in lines))
        yield {"kind": "index", "path": rel, "records": w.counts["instances"], "bytes": size,
               "sha256": sha, **common}


class FinalizeShards(beam.PTransform):
    """WrittenShards -> file infos (dicts) of the final shards, numbered per split: the
    numbering sees every group at once (names and sizes only); the renames and index shards
    fan out, one element per shard, so that a runner spreads them over its workers (a rename
    on GCS is a copy and a delete, and a large run has thousands of shards)."""

    def __init__(self, output_dir: str, compression: str = "none", keepalive=None):
        super().__init__()
        self._fn = FinalizeShardFn(output_dir, compression, keepalive)

    def expand(self, written):
        return (written
                | "AllWritten" >> beam.combiners.ToList()
                | "Number" >> beam.FlatMap(number_shards)
                | "Spread" >> beam.Reshuffle()
                | "Finalize" >> beam.ParDo(self._fn))
