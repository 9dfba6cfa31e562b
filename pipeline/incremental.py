"""Incremental runs (``--incremental``): each run writes only instances that the latest complete
dataset under the output root does not hold yet, into ``ROOT/runs/NNNNN/``; its manifest lists the
earlier shards plus the new ones, and ``ROOT/LATEST`` is updated last to point at it.

Earlier shards are never rewritten. A run whose generation config (volumes, crop, seed model,
seed, formats, splits, ids) differs from the latest one's starts a fresh dataset (no earlier
files listed) instead of mixing.
"""
from __future__ import annotations

import hashlib
import json
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

LATEST = "LATEST"
RUNS = "runs"


def generation_hash(generation: Dict) -> str:
    """sha256 of the options that decide the records' bytes (not the table, not the layout)."""
    text = json.dumps(generation, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_dir_name(number: int) -> str:
    return f"{RUNS}/{number:05d}"


def read_latest(root: str) -> Optional[dict]:
    """The manifest ``ROOT/LATEST`` points at, or None for a new root."""
    latest = FileSystems.join(root, LATEST)
    if not FileSystems.exists(latest):
        return None
    with FileSystems.open(latest) as f:
        rel = f.read().decode("utf-8").strip()
    if not rel.startswith(RUNS + "/") or ".." in rel.split("/"):
        raise ValueError(f"{latest} points at {rel!r}, not at a run folder under {RUNS}/")
    with FileSystems.open(FileSystems.join(root, rel)) as f:
        return json.load(f)


def plan(root: str, generation: Dict) -> dict:
    """Which run this is and what it builds on: plain values for the Config."""
    digest = generation_hash(generation)
    latest = read_latest(root)
    previous = None
    number = 1
    if latest is not None:
        info = latest["incremental"]
        number = info["run"] + 1
        if info["generation_hash"] == digest:
            previous = {"run": info["run"], "manifest": info["manifest"],
                        "files": latest["files"], "splits": latest["splits"]}
    return {"root": root, "run": number, "run_dir": run_dir_name(number),
            "generation_hash": digest, "previous": previous}


def previous_index_paths(incremental: Optional[dict]) -> List[str]:
    """Absolute paths of every index shard of the dataset this run extends."""
    if not incremental or not incremental["previous"]:
        return []
    root = incremental["root"]
    return [FileSystems.join(root, f["path"]) for f in incremental["previous"]["files"]["index"]]


def read_index_ids(path: str) -> Iterable[int]:
    with FileSystems.open(path) as f:
        for line in f:
            if line.strip():
                yield int(json.loads(line)["instance_id"])


class KeepNewInstances(beam.PTransform):
    """Instances -> dict ``instances`` (ids not in the earlier index shards) and ``vanished``
    (earlier ids no longer in the table). Only ids cross the shuffle."""

    def __init__(self, index_paths: List[str]):
        super().__init__()
        self._paths = list(index_paths)

    def expand(self, instances):
        keyed = instances | "KeyById" >> beam.Map(lambda i: (i.instance_id, i))
        earlier = (instances.pipeline
                   | "EarlierIndex" >> beam.Create(self._paths)
                   | "EarlierIds" >> beam.FlatMap(read_index_ids)
                   | "KeyEarlier" >> beam.Map(lambda i: (i, None)))
        joined = {"now": keyed, "earlier": earlier} | "Join" >> beam.CoGroupByKey()
        return {
            "instances": joined | "New" >> beam.FlatMap(
                lambda kv: [] if list(kv[1]["earlier"]) else list(kv[1]["now"])),
            "vanished": joined | "Vanished" >> beam.FlatMap(
                lambda kv: [kv[0]] if list(kv[1]["earlier"]) and not list(kv[1]["now"]) else []),
        }


def merge_files(incremental: dict, files: Dict[str, list]) -> Dict[str, list]:
    """This run's file lists (paths relative to the run folder) + the earlier runs' (relative
    to ROOT) -> one listing, paths relative to ROOT."""
    prefix = incremental["run_dir"] + "/"
    merged = {}
    previous = incremental["previous"]["files"] if incremental["previous"] else {}
    for kind in ("tfrecord", "index"):
        mine = [{**f, "path": prefix + f["path"], "run": incremental["run"]} for f in files[kind]]
        merged[kind] = list(previous.get(kind, [])) + mine
    merged["dead_letter"] = {**files["dead_letter"], "path": prefix + files["dead_letter"]["path"]}
    return merged
