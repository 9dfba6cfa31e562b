"""The manifest: what every array is, which options made it, what went where, what failed.

``manifest.json`` is the dataset's commit point: it is written last (its step takes the written
files and the counts as side inputs), under a temporary name and then renamed. Everything in it is
a pure function of inputs, options and seed except the ``run`` key (timestamps).
"""
from __future__ import annotations

import datetime
import itertools
import json
from typing import Dict, Iterator, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from synanno_datagen import GENERATOR_NAME, __version__
from synanno_datagen.layout import (
    DATASET_ENTRIES, DATASET_FILES, FRAGMENTS_DIR, LATEST, MANIFEST, NPY_LAYOUT, UNFINISHED, join,
    latest_pointer, run_dir, tf_compression_type,
)
from synanno_datagen.errors import LeaseLost
from synanno_datagen.pipeline.config import Config
from synanno_datagen.pipeline.lease import Heartbeat
from synanno_datagen.record_format import features
from synanno_datagen.transforms.files import (
    before_commit, delete_file, delete_objects, delete_tree, listed, write_atomic, write_bytes,
)
from synanno_datagen.layout import NPY, TFRECORD

SCHEMA_VERSION = 1
CLEAR_BATCH = 1000   # gs:// objects one deletion element of ClearEarlierRun names


def feature_spec(config: Config) -> List[dict]:
    """The features records carry (pre/post points only when the table has them), with the
    array shape filled in; none when no TFRecords are written."""
    if TFRECORD not in config.formats:
        return []
    shape = list(config.source_shape_zyx)
    return [{**f, "shape": shape if f["shape"] == "shape" else f["shape"]}
            for f in features(config.points.point_features(), config.record_layout)]


RECORDS = {  # how a layout's records hold the variants (the manifest's "records")
    "instance": "one record per instance: source and target once, and every variant's seed "
                "slices (seed_slices, concatenated in variant order; seed_slice_counts, one per "
                "variant); variant v's seed mask is target with every slice but its own zeroed",
    "variant": "one record per variant: source, target, seed_target (target with every slice "
               "but seed_slices zeroed), seed_slices and variant",
}


def records_section(config: Config) -> dict:
    """The record layout, the shards' framing and what a record holds."""
    return {"written": TFRECORD in config.formats,
            "layout": config.record_layout, "compression": config.compression,
            "tfrecord_compression_type": tf_compression_type(config.compression),
            "variants_per_instance": config.variants, "holds": RECORDS[config.record_layout],
            "order": "in a shard: by work block, then instance id (then variant)",
            "split_by": config.split_by,
            **({"split_block_size_xyz": list(config.split_blocks())}
               if config.split_by == "block" else {})}


def build_manifest(config: Config, counts: Dict, files: List[dict], dead_letter: dict,
                   npy_totals: Dict) -> dict:
    """The manifest as a JSON-ready dict (``run`` left for the writer)."""
    listing = {
        "tfrecord": [_public(f) for f in sorted(
            (f for f in files if f["kind"] == "tfrecord"), key=_file_key)],
        "index": [_public(f) for f in sorted(
            (f for f in files if f["kind"] == "index"), key=_file_key)],
        "dead_letter": _public(dead_letter),
    }
    if config.incremental:
        listing = config.incremental.merge_files(listing)
        npy_totals = config.incremental.merge_npy(npy_totals)
    splits = {}
    for name, fraction in config.splits:
        mine = [f for f in listing["index"] if f["split"] == name]
        records = [f for f in listing["tfrecord"] if f["split"] == name]
        splits[name] = {
            "fraction": fraction,
            "instances": sum(f["records"] for f in mine),
            "records": sum(f["records"] for f in records),
            "shards": len(mine),
            "bytes": sum(f["bytes"] for f in records),
        }
    res = config.source.resolution_nm_xyz
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": GENERATOR_NAME, "version": __version__},
        "config": config.to_manifest(),
        "volumes": {
            "source": config.source.to_manifest(),
            "target": config.target.to_manifest(),
            "scale_xyz": list(config.scale_xyz),
        },
        "arrays": {"axes": "zyx", "order": "C", "shape_zyx": list(config.source_shape_zyx),
                   "resolution_nm_zyx": [res[2], res[1], res[0]],
                   "note": "all arrays are on the source grid at source_mip"},
        "features": feature_spec(config),
        "records": records_section(config),
        "table": config.table_manifest(),
        "seed_model": {**config.seed_model.to_manifest(),
                       "in_records": "seed_slices and seed_slice_counts" if
                       config.record_layout == "instance" else "seed_slices and seed_target"},
        "counts": counts,
        "splits": splits,
        "files": listing,
        "npy": {
            "written": NPY in config.formats,
            "layout": dict(NPY_LAYOUT),
            "listed_in": "index (per instance: path, bytes, sha256 of each file; paths relative "
                         "to the folder holding the index shard's index/)",
            **npy_totals,
        },
        **({"incremental": config.incremental.to_manifest()} if config.incremental else {}),
    }


def _file_key(f):
    return f["split"], f["shard"]


def _public(f: dict) -> dict:
    return {k: v for k, v in f.items() if k != "kind"}


class WriteManifestFn(beam.DoFn):
    """Runs once, after every file is final: removes fragments, then writes manifest.json."""

    def __init__(self, config: Config):
        self._config = config

    def process(self, _, files, dead_letter, counts, npy_totals, io, *after):
        """``after``: results of steps that must be done first (not used)."""
        lease = self._config.lease
        if lease is not None:
            committed = self._committed_by(lease.token)
            if committed is not None:   # a retry of this step after the run finished
                yield committed
                return
            # still ours? (else LeaseLost: nothing committed)
            Heartbeat(lease, self._config.lease_hours).beat(force=True)
        manifest = build_manifest(self._config, counts, list(files), dead_letter, npy_totals)
        # Facts of this execution, not of the data: they may differ between identical runs
        # (time; chunk decodes depend on how work was spread over workers; the run's id).
        manifest["run"] = {"created_utc": datetime.datetime.now(datetime.timezone.utc)
                           .strftime("%Y-%m-%dT%H:%M:%SZ"), "io": io,
                           **({"id": lease.token} if lease is not None else {})}
        delete_tree(join(self._config.output_dir, FRAGMENTS_DIR))
        data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        write_atomic(join(self._config.output_dir, MANIFEST), [data])
        incremental = self._config.incremental
        if incremental:  # the root now points at this complete run
            if self._config.lease is not None:   # (a stall since the look above?)
                Heartbeat(self._config.lease, self._config.lease_hours).beat(force=True)
            if check_latest_before_move(incremental.root, incremental.run):
                pointer = latest_pointer(incremental.run_dir).encode("utf-8")
                write_atomic(join(incremental.root, LATEST), [pointer])
        # last: until the root points at it, a run folder is an unfinished run's to replace
        delete_tree(join(self._config.output_dir, UNFINISHED))
        if incremental and incremental.run > 1:   # a kill just after the last run's LATEST
            delete_tree(join(incremental.root, run_dir(incremental.run - 1), UNFINISHED))
        yield manifest

    def _committed_by(self, run_id: str) -> Optional[dict]:
        """The manifest this run committed, when an earlier attempt of this step finished
        (its UNFINISHED mark gone, last), else None. A runner may retry the step after the
        run's lease was released (a worker lost before it reported), when the lease look
        would fail a finished run."""
        output_dir = self._config.output_dir
        if FileSystems.exists(join(output_dir, UNFINISHED)) or \
                not FileSystems.exists(join(output_dir, MANIFEST)):
            return None
        manifest = load_manifest(output_dir)
        return manifest if manifest.get("run", {}).get("id") == run_id else None


def check_latest_before_move(root: str, run: int) -> bool:
    """Whether run ``run`` may point ``root``'s LATEST at itself: True when LATEST names an
    earlier run (or none), False when it names this run already (a retried step). LeaseLost
    when it names a later run: another run committed after this one's lease was broken, and
    moving LATEST back would hide it (and have the next run write its folder again)."""
    from synanno_datagen.pipeline.incremental import latest_run_number

    latest = latest_run_number(root)
    if latest is not None and latest > run:
        raise LeaseLost(f"{LATEST} names {run_dir(latest)}, a later run than this one "
                        f"({run_dir(run)}): another run committed after this one's lease was "
                        "broken; this run stops without moving it")
    return latest != run


def mark_unfinished(output_dir: str) -> None:
    """Leave UNFINISHED in ``output_dir`` until the manifest is written: what a run that does not
    finish leaves there is then known as its own, for a rerun to replace."""
    write_bytes(join(output_dir, UNFINISHED),
                b"a synanno-datagen run writes here; it is gone once the run is committed "
                b"(manifest.json written, and in an incremental root LATEST moved here)\n",
                digest=False)


def clear_dataset(output_dir: str) -> None:
    """Delete an earlier run's files (only the names this tool writes), manifest first, with
    all its folders hold; on gs://, its files as objects (objects named under
    ``manifest.json/`` are not its; locally nothing can lie under a file, and a folder of
    that name is replaced, as --overwrite asks)."""
    for folder in clear_files(output_dir):
        for names in folder_batches(folder):
            delete_batch(names)


def clear_files(output_dir: str) -> Iterator[str]:
    """``clear_dataset``'s first part: on gs://, the earlier run's files deleted (manifest
    first), its folders yielded, for their objects to be listed and deleted in batches; on
    other storage everything deleted here (a folder is one deletion), nothing yielded."""
    on_gcs = output_dir.startswith("gs://")
    for name in DATASET_ENTRIES:
        if not on_gcs:
            delete_tree(join(output_dir, name))
        elif name in DATASET_FILES:
            delete_file(join(output_dir, name))
        else:
            yield join(output_dir, name)


def folder_batches(folder: str) -> Iterator[List[str]]:
    """``folder`` and the gs:// objects under it (``delete_tree``'s), CLEAR_BATCH names at a
    time, as they are listed."""
    names = itertools.chain([folder], listed(folder))
    while True:
        batch = list(itertools.islice(names, CLEAR_BATCH))
        if not batch:
            return
        yield batch


def delete_batch(names: List[str]) -> int:
    """Delete these gs:// objects (DELETE_THREADS at a time); return how many were named."""
    delete_objects(names)
    return len(names)


class ClearEarlierRun(beam.PTransform):
    """The job's first steps: ``mark_unfinished``, then ``clear_dataset``, in the job rather
    than in the process that launches it, so that a launch that fails (staging, submission)
    leaves the earlier dataset as it was. Its one True is a side input of the steps that
    write, so that they start after it. It looks at the lease first (``keepalive``: see
    files.before_commit): a job that starts after its lease expired, another run having
    taken the output since, must not delete that run's dataset. On gs:// each folder is
    listed by one worker and its objects are deleted in batches spread over the workers: an
    --overwrite of a dataset of npy files deletes six objects per instance, one worker a few
    hundred a second (``benchmarks/gcs_deletes.py``: 500 in 1.7 s at 30 ms per request)."""

    def __init__(self, output_dir: str, keepalive=None):
        super().__init__()
        self._output_dir = output_dir
        self._keepalive = keepalive

    def expand(self, pbegin):
        trigger = pbegin | "Trigger" >> beam.Create([None])
        if not self._output_dir.startswith("gs://"):   # a folder is one deletion: one step
            return trigger | "Files" >> beam.Map(_clear_here, self._output_dir, self._keepalive)
        return (trigger
                | "Files" >> beam.FlatMap(_start_clearing, self._output_dir, self._keepalive)
                | "Folders" >> DeleteFolders()
                | "Done" >> beam.Map(lambda _: True))


class DeleteFolders(beam.PTransform):
    """gs:// folders -> one int, the names deleted: each folder listed by one worker (after a
    shuffle), its objects deleted in batches of CLEAR_BATCH that cross another shuffle, so
    that any worker takes them."""

    def expand(self, folders):
        return (folders
                | "SpreadFolders" >> beam.Reshuffle()
                | "List" >> beam.FlatMap(folder_batches)
                | "SpreadBatches" >> beam.Reshuffle()
                | "Delete" >> beam.Map(delete_batch)
                | "Total" >> beam.CombineGlobally(sum))


def fragments_folder(_, output_dir: str, keepalive=None, *after) -> Iterator[str]:
    """The run's ``_tmp`` folder, for DeleteFolders, once the lease is looked at (another
    run's ``_tmp`` must not go); ``after``: results of the steps that read it (unused)."""
    before_commit(keepalive)
    yield join(output_dir, FRAGMENTS_DIR)


def _start_clearing(_, output_dir: str, keepalive=None) -> Iterator[str]:
    before_commit(keepalive)
    mark_unfinished(output_dir)
    yield from clear_files(output_dir)


def _clear_here(_, output_dir: str, keepalive=None) -> bool:
    before_commit(keepalive)
    mark_unfinished(output_dir)
    clear_dataset(output_dir)
    return True


def load_manifest(output_dir: str) -> dict:
    with FileSystems.open(join(output_dir, MANIFEST)) as f:
        return json.load(f)
