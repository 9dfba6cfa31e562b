"""Incremental runs (``--incremental``): the plan of one run, made before any work.

Each run writes only instances that the latest complete dataset under the output root does not
hold yet, into ``ROOT/runs/NNNNN/``; its manifest lists the earlier shards plus the new ones, and
``ROOT/LATEST`` is updated last to point at it. Earlier shards are never rewritten. A run whose
generation config (volumes, crop, seed model, seed, formats, splits, ids) differs from the latest
one's starts a fresh dataset (no earlier files listed) instead of mixing.

A run extending a dataset skips the rows its previous run remembered as permanent failures
(``transforms/remembered.py``; not with ``--retry-failed``) and leaves its own memory file. With
``--num-instances N`` the dataset holds at most N instances: a run adds up to N minus the
instances earlier runs hold.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from synanno_datagen import layout
from synanno_datagen.errors import LeaseLost, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousRun:
    """The complete run a new run extends: its number, manifest (relative to the root), the
    sha256 of its file listing (``listing_sha256``: the listing itself, which grows with the
    dataset, is read again in the job, not carried in the job's description), splits and
    remembered failures (relative to the root; None for runs made before they were
    remembered)."""

    run: int
    manifest: str
    listing_sha256: str
    splits: Dict[str, dict]
    memory: Optional[str] = None
    # Its block splits' grid (None in manifests written before it was recorded: then its work
    # blocks, from ``work_blocks``, the options that chose them, were the grid).
    split_block_size_xyz: Optional[Tuple[int, int, int]] = None
    work_blocks: Dict[str, object] = field(default_factory=dict)
    npy: Dict[str, int] = field(default_factory=dict)   # its npy totals: files, bytes

    @property
    def instances(self) -> int:
        """Instances the dataset holds (every run's, vanished ones included)."""
        return sum(s["instances"] for s in self.splits.values())


@dataclass(frozen=True)
class IncrementalPlan:
    """Which run this is, where it writes and what it builds on (plain values for workers)."""

    root: str
    run: int
    generation_hash: str
    previous: Optional[PreviousRun] = None
    retry_failed: bool = False
    # LATEST's manifest when its generation config differs: this run starts a fresh dataset
    replaces: Optional[str] = None

    @property
    def run_dir(self) -> str:
        return layout.run_dir(self.run)

    @property
    def output_dir(self) -> str:
        return layout.join(self.root, self.run_dir)

    def memory_to_skip(self) -> Optional[str]:
        """The remembered failures this run skips: the previous run's file, unless
        --retry-failed (or there is none)."""
        if self.retry_failed or self.previous is None or self.previous.memory is None:
            return None
        return layout.join_inside(self.root, self.previous.memory)

    def retried_memory(self) -> Optional[str]:
        """The remembered failures a run with --retry-failed tries again (their first runs are
        kept for the rows that fail again), or None."""
        if not self.retry_failed or self.previous is None or self.previous.memory is None:
            return None
        return layout.join_inside(self.root, self.previous.memory)

    def allowed(self, num_instances: int) -> int:
        """How many instances this run may add under ``--num-instances``: the dataset holds
        at most that many in total."""
        held = self.previous.instances if self.previous else 0
        return max(0, num_instances - held)

    def previous_files(self) -> Dict[str, object]:
        """The file listing of the run this run extends ({} for none), read from its manifest
        (paths relative to the root). When it cannot be read again or is not the one the run
        was planned with: LeaseLost (one line, nothing of the run committed), as another writer
        changed the root under this run's lease."""
        if self.previous is None:
            return {}
        from apache_beam.io.filesystems import FileSystems

        path = layout.join(self.root, self.previous.manifest)
        try:
            with FileSystems.open(path) as f:
                files = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LeaseLost(f"{path} cannot be read again ({type(e).__name__}: "
                            f"{first_line(e, 200)}): the root was changed while this run held "
                            "its lease; nothing of this run is committed") from None
        if listing_sha256(files) != self.previous.listing_sha256:
            raise LeaseLost(f"{path} lists other files than when this run started: the root "
                            "was changed while this run held its lease; nothing of this run "
                            "is committed")
        return files

    def previous_index_paths(self) -> List[str]:
        """Paths of every index shard of the dataset this run extends (read in the job)."""
        return [layout.join_inside(self.root, f["path"])
                for f in self.previous_files().get("index", [])]

    def merge_files(self, files: Dict[str, list]) -> Dict[str, list]:
        """This run's file lists (paths relative to its run folder) + the earlier runs' ->
        one listing, paths relative to the root, each shard with the run that wrote it."""
        prefix = self.run_dir + "/"
        earlier = self.previous_files()
        merged = {kind: list(earlier.get(kind, [])) + [
            {**f, "path": prefix + f["path"], "run": self.run} for f in files[kind]]
            for kind in ("tfrecord", "index")}
        merged["dead_letter"] = {**files["dead_letter"],
                                 "path": prefix + files["dead_letter"]["path"]}
        return merged

    def merge_npy(self, totals: Dict[str, int]) -> Dict[str, int]:
        """This run's npy totals + the earlier runs' (the dataset's, as its splits are)."""
        earlier = self.previous.npy if self.previous else {}
        return {**{k: int(v) + int(earlier.get(k, 0)) for k, v in totals.items()},
                "totals": layout.NPY_TOTALS}

    def to_manifest(self) -> dict:
        return {
            "run": self.run, "run_dir": self.run_dir,
            "manifest": self.run_dir + "/" + layout.MANIFEST,
            "generation_hash": self.generation_hash,
            "extends": self.previous.manifest if self.previous else None,
            "replaces": self.replaces,
            "remembered_failures": self.run_dir + "/" + layout.REMEMBERED_FAILURES,
            "retried_failures": self.retry_failed,
            "instances_before": self.previous.instances if self.previous else 0,
            "paths_relative_to": "the dataset root (two levels above this manifest)",
        }


def listing_sha256(files: Dict[str, object]) -> str:
    """sha256 of a manifest's file listing (``files``), as canonical JSON."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def generation_hash(generation: Dict) -> str:
    """sha256 of the options that decide the records' bytes (not the table, not the layout)."""
    text = json.dumps(generation, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _latest_manifest(root: str) -> Optional[str]:
    """The manifest ``ROOT/LATEST`` names (``runs/NNNNN/manifest.json``), None without LATEST."""
    from apache_beam.io.filesystems import FileSystems

    latest = layout.join(root, layout.LATEST)
    if not FileSystems.exists(latest):
        return None
    with FileSystems.open(latest) as f:
        return layout.manifest_of_latest(f.read().decode("utf-8"))


def latest_run_number(root: str) -> Optional[int]:
    """The number of the run ``ROOT/LATEST`` names, or None without LATEST."""
    rel = _latest_manifest(root)
    return None if rel is None else layout.run_number(rel)


def read_latest(root: str) -> Optional[dict]:
    """The manifest ``ROOT/LATEST`` points at, or None for a new root. ValueError, naming the
    manifest, for one that is not an incremental run's manifest of this tool."""
    from apache_beam.io.filesystems import FileSystems

    rel = _latest_manifest(root)
    if rel is None:
        return None
    path = layout.join(root, rel)
    if not FileSystems.exists(path):
        raise ValueError(f"{path} is missing ({layout.LATEST} names it)")
    with FileSystems.open(path) as f:
        try:
            manifest = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not JSON ({e})") from None
    if not layout.is_manifest(manifest) or not isinstance(manifest.get("incremental"), dict):
        raise ValueError(f"{path} is not the manifest of an incremental run of synanno-datagen")
    return manifest


def _check_nothing_committed_after(root: str, run: int) -> None:
    """ValueError when the run folder after LATEST's run is a committed run (a manifest and no
    UNFINISHED marker): LATEST was moved back (a run that stalled past its broken lease), and
    the next run would write that folder again."""
    from apache_beam.io.filesystems import FileSystems

    after = layout.join(root, layout.run_dir(run + 1))
    if FileSystems.exists(layout.join(after, layout.MANIFEST)) and \
            not FileSystems.exists(layout.join(after, layout.UNFINISHED)):
        raise ValueError(f"{layout.LATEST} names {layout.run_dir(run)} while "
                         f"{layout.run_dir(run + 1)} is committed too; write "
                         f"{_pointer(max(_committed_runs(root)))} (the newest committed run) "
                         "into it")


def _pointer(run: int) -> str:
    """The LATEST text naming run ``run``, quoted for a message."""
    return repr(layout.latest_pointer(layout.run_dir(run)).strip())


def _committed_runs(root: str) -> List[int]:
    """The numbers of the run folders under ``root`` that hold a manifest and no UNFINISHED
    marker (runs that committed, or whose LATEST move a kill may have stopped)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = layout.join(root, layout.RUNS_DIR, "*", layout.MANIFEST)
    found = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        folder = meta.path[:-len(layout.MANIFEST)].rstrip("/")
        name = folder.rsplit("/", 1)[-1]
        if name.isdigit() and not FileSystems.exists(layout.join(folder, layout.UNFINISHED)):
            found.append(int(name))
    return found


def _npy_totals(root: str, latest: dict) -> Dict[str, int]:
    """The npy files and bytes of every run of the dataset ``latest`` (a manifest) closes."""
    from apache_beam.io.filesystems import FileSystems

    def run_manifest(run: int) -> dict:
        with FileSystems.open(layout.join(root, layout.run_dir(run), layout.MANIFEST)) as f:
            return json.load(f)

    return layout.npy_totals(latest, run_manifest)


def plan(root: str, generation: Dict, retry_failed: bool = False,
         same_records: Callable[[str, dict], bool] = lambda digest, config: False
         ) -> IncrementalPlan:
    """The plan of the next run under ``root`` for a run with this generation config.
    ``same_records(hash, config)``, asked only when the root's generation hash is not this
    config's (``config``: its latest manifest's): whether a config with that hash makes the same
    records (its --splits in another order, as an earlier version laid them out); such a root
    is extended under its own hash."""
    digest = generation_hash(generation)
    latest = read_latest(root)
    if latest is None:
        committed = _committed_runs(root)
        if committed:   # not a new root: starting over would write over runs/00001
            raise ValueError(f"{layout.LATEST} is missing while {layout.RUNS_DIR}/ holds "
                             f"committed runs; write {_pointer(max(committed))} (the newest one) "
                             "into it")
        return IncrementalPlan(root, 1, digest, retry_failed=retry_failed)
    info = latest["incremental"]
    _check_nothing_committed_after(root, info["run"])
    previous = None
    if info["generation_hash"] != digest and \
            same_records(info["generation_hash"], latest.get("config", {})):
        digest = info["generation_hash"]
    if info["generation_hash"] == digest:
        previous = _previous_run(root, latest)
    return IncrementalPlan(root, info["run"] + 1, digest, previous, retry_failed,
                           None if previous else info["manifest"])


def _previous_run(root: str, latest: dict) -> PreviousRun:
    """The run ``latest`` (its manifest) that the next run extends; ValueError, naming the
    manifest, for a path it lists outside the root or a block grid that is no grid (a damaged
    or crafted manifest: the readers refuse the first, the run would fail on the second)."""
    info = latest["incremental"]
    where = info["manifest"]
    memory = info.get("remembered_failures")
    try:
        for kind in ("tfrecord", "index"):
            for f in latest["files"].get(kind, []):
                layout.join_inside(root, f["path"])
        if memory is not None:
            layout.join_inside(root, memory)
    except ValueError as e:
        raise ValueError(f"{where} {e}") from None
    from apache_beam.io.filesystems import FileSystems

    if memory is not None and not FileSystems.exists(layout.join(root, memory)):
        # deleted, or left out of a copy (the manifest's files do not list it): like a memory
        # line that is not an entry, it can match no row
        log.warning("%s is missing: the failures it remembered are tried again (and "
                    "remembered again)", layout.join(root, memory))
        memory = None
    bad_run = layout.bad_run_entry(latest)
    if bad_run:
        raise ValueError(f"{where}: {bad_run}; the manifest was changed")
    grid = latest.get("records", {}).get("split_block_size_xyz")
    options = latest.get("config", {})
    block = options.get("block_size_xyz")
    for name, xyz in (("records.split_block_size_xyz", grid), ("config.block_size_xyz", block)):
        if xyz is not None and not (isinstance(xyz, list) and len(xyz) == 3 and all(
                type(n) is int and n >= 1 for n in xyz)):
            raise ValueError(f"{where}: {name} {xyz!r} is not three whole numbers from 1 "
                             "(voxels); the manifest was changed")
    memory_mb = options.get("fetch_memory_mb")
    if "fetch_memory_mb" in options and not (type(memory_mb) is int and memory_mb >= 1):
        raise ValueError(f"{where}: config.fetch_memory_mb {memory_mb!r} is not a whole number "
                         "from 1; the manifest was changed")
    return PreviousRun(
        info["run"], where, listing_sha256(latest["files"]), latest["splits"], memory,
        tuple(grid) if grid else None,
        {"block_size_xyz": tuple(block) if block else None,
         **({"fetch_memory_mb": memory_mb} if "fetch_memory_mb" in options else {})},
        _npy_totals(root, latest))
