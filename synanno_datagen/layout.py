"""The dataset layout contract: every name a run writes and a reader looks for. No Beam here.

A dataset directory::

    manifest.json                                   the commit point, written last
    dead_letter.jsonl                               one line per rejected row or instance
    tfrecord/{split}-{i:05d}-of-{n:05d}.tfrecord     records (tf.train.Example; .tfrecord.gz with
                                                    --compression gzip)
    index/{split}-{i:05d}-of-{n:05d}.jsonl           one line per instance of that shard
    npy/source/source_{id}.npy, npy/gt/target_{id}.npy,
    npy/target/augmented_target_{id}_{variant}.npy

An incremental root::

    LATEST                                          "runs/NNNNN/manifest.json", written last
    runs/NNNNN/...                                  one dataset directory per run
    runs/NNNNN/remembered_failures.jsonl            permanent failures so far (not fetched again)

While a run writes, ``LEASE`` at the top of its output directory (a dataset directory or an
incremental root) names it (host, pid, start, expiry); the run removes it when it ends.

An incremental run's manifest lists file paths relative to the root; npy paths in its index
lines are relative to the run's own directory. The writer and every reader use these functions;
nothing parses a path back into its parts (the manifest lists split, shard and run with each file).
"""
from __future__ import annotations

import json
import posixpath
import urllib.parse
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

MANIFEST = "manifest.json"
DEAD_LETTER = "dead_letter.jsonl"
TFRECORD_DIR = "tfrecord"
INDEX_DIR = "index"
NPY_DIR = "npy"
FRAGMENTS_DIR = "_tmp"          # shard files of an unfinished run, before their final names
LATEST = "LATEST"
RUNS_DIR = "runs"
LEASE = "LEASE"                 # one writer per output directory (pipeline/lease.py)
# A run's mark on its output directory from its start until its manifest is written: what a run
# finds there without a manifest is an unfinished run's, to replace, only when it is present.
UNFINISHED = "UNFINISHED"
REMEMBERED_FAILURES = "remembered_failures.jsonl"   # in each incremental run's directory

# Everything a run writes at the top of its output directory (nothing else is ever deleted).
DATASET_ENTRIES = (MANIFEST, DEAD_LETTER, TFRECORD_DIR, INDEX_DIR, NPY_DIR, FRAGMENTS_DIR)
DATASET_FILES = (MANIFEST, DEAD_LETTER)   # of those, the files (the rest are folders)

# npy layout, compatible with the prototype's (source/, gt/, target/).
NPY_LAYOUT = {
    "source": "npy/source/source_{instance_id}.npy",
    "target": "npy/gt/target_{instance_id}.npy",
    "seed_target": "npy/target/augmented_target_{instance_id}_{variant}.npy",
}


def json_line(obj) -> bytes:
    """One line of the JSON-lines files a run writes (index, dead letters, remembered
    failures): compact, keys sorted, UTF-8."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def json_lines(lines: Iterable) -> Iterator[dict]:
    """The objects of a JSON-lines file's lines (bytes or text); blank lines are skipped."""
    for line in lines:
        if line.strip():
            yield json.loads(line)


def is_manifest(obj) -> bool:
    """Whether ``obj`` (parsed JSON) has the shape of a manifest this tool writes: an object with
    ``config``, ``counts`` and ``files`` objects (another tool's manifest.json has not)."""
    return isinstance(obj, dict) and all(isinstance(obj.get(k), dict)
                                         for k in ("config", "counts", "files"))


# The records of a manifest without a "records" section (written before record layouts).
LEGACY_RECORDS = {"layout": "variant", "compression": "none"}


def tf_compression_type(compression: str) -> str:
    """tf.data's ``compression_type`` for TFRecord shards of ``--compression``."""
    return {"none": "", "gzip": "GZIP"}[compression]


def records_info(manifest: dict) -> dict:
    """The manifest's ``records`` section (layout, compression, tfrecord_compression_type),
    with LEGACY_RECORDS' values where it lacks them."""
    info = {**LEGACY_RECORDS, **manifest.get("records", {})}
    return {**info, "tfrecord_compression_type": tf_compression_type(info["compression"])}


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """``train-00003-of-00016``: a shard's name within its split."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}"


# The choices that shape a dataset (run flags; the manifest records each).
TFRECORD, NPY = "tfrecord", "npy"
FORMATS = (TFRECORD, NPY)                  # --formats, in the order a run writes them
RECORD_LAYOUTS = ("instance", "variant")   # --record-layout: a record per instance or variant
SPLIT_BY = ("block", "instance")           # --split-by: splits by work block or by instance
COMPRESSIONS = ("none", "gzip")            # --compression of TFRecord shards


PROTOBUF_MESSAGE_MOST = 2**31 - 1   # bytes: no tf.train.Example is larger (the generator
# refuses crops whose records would be)


def record_arrays(record_layout: str, variants: int) -> Tuple[int, int]:
    """(records per instance, source-shaped arrays per record) of a record layout: one record of
    source and target, or one per variant of source, target and its seed mask."""
    return (1, 2) if record_layout == "instance" else (variants, 3)


def tfrecord_suffix(compression: str = "none") -> str:
    """``.tfrecord``, or ``.tfrecord.gz`` for TFRecord's GZIP framing (the whole file gzipped)."""
    return ".tfrecord.gz" if compression == "gzip" else ".tfrecord"


def tfrecord_path(split: str, shard: int, num_shards: int, compression: str = "none") -> str:
    return f"{TFRECORD_DIR}/{shard_name(split, shard, num_shards)}{tfrecord_suffix(compression)}"


def group_tfrecord_path(split: str, group: int, compression: str = "none",
                        attempt: str = "") -> str:
    """Where the worker writing shard group ``group`` puts the records of ``split`` until the
    run numbers its shards (then it is renamed to ``tfrecord_path``); ``attempt`` names the
    bundle attempt, so that a failed attempt's file, closed late, is not the retry's."""
    return (f"{FRAGMENTS_DIR}/{split}-group{group:06d}{'-' + attempt if attempt else ''}"
            f"{tfrecord_suffix(compression)}")


def group_index_path(split: str, group: int, attempt: str = "") -> str:
    """Where the worker writing shard group ``group`` puts the index lines of ``split`` (without
    their shard number) until the run numbers its shards; ``attempt`` names the bundle attempt,
    as for its records (two attempts running at once wrote one file: the index of the one that
    finished last beside the records of the one that was committed)."""
    return f"{FRAGMENTS_DIR}/{split}-group{group:06d}{'-' + attempt if attempt else ''}.jsonl"


def index_path(split: str, shard: int, num_shards: int) -> str:
    return f"{INDEX_DIR}/{shard_name(split, shard, num_shards)}.jsonl"


def npy_paths(instance_id: int, n_variants: int) -> Dict[str, object]:
    """Relative npy paths of one instance: source, target and one seed_target per variant."""
    return {
        "source": NPY_LAYOUT["source"].format(instance_id=instance_id),
        "target": NPY_LAYOUT["target"].format(instance_id=instance_id),
        "seed_target": [NPY_LAYOUT["seed_target"].format(instance_id=instance_id, variant=v)
                        for v in range(n_variants)],
    }


NPY_TOTALS = "every run"   # a manifest's ``npy.totals``: its files and bytes cover every run


def npy_totals(manifest: dict, run_manifest: Callable[[int], dict]) -> Dict[str, int]:
    """The npy files and bytes of the dataset ``manifest`` closes. Incremental manifests
    written before their totals covered every run counted their own run's: those are added up
    over the runs the dataset lists (``run_manifest(n)``: run n's manifest)."""
    npy = manifest.get("npy", {})
    totals = {k: int(npy.get(k, 0)) for k in ("files", "bytes")}
    if npy.get("totals") == NPY_TOTALS or "incremental" not in manifest:
        return totals
    latest = manifest["incremental"]["run"]
    for run in sorted({f["run"] for f in manifest["files"]["index"] if "run" in f} - {latest}):
        own = run_manifest(run).get("npy", {})
        for k in totals:
            totals[k] += int(own.get(k, 0))
    return totals


def bad_run_entry(manifest: dict) -> Optional[str]:
    """The first file entry of ``manifest`` whose ``run`` is not a run number (a whole number
    from 1 to the manifest's own run), described for an error line; None when every one is (an
    entry's run names its folder: ``run_dir``)."""
    incremental = manifest.get("incremental")
    latest = incremental.get("run") if isinstance(incremental, dict) else None
    for kind, entries in manifest["files"].items():
        for i, f in enumerate(entries if isinstance(entries, list) else []):
            run = f.get("run", 1) if isinstance(f, dict) else 1
            if not (type(run) is int and run >= 1 and (type(latest) is not int or run <= latest)):
                return (f"files.{kind}[{i}].run {run!r} is not a run number (a whole number "
                        "from 1 to the manifest's own run)")
    return None


def run_dir(number: int) -> str:
    """An incremental run's directory, relative to the root: ``runs/00002``."""
    return f"{RUNS_DIR}/{number:05d}"


def run_number(manifest_path: str) -> int:
    """The number of the run whose manifest is ``runs/NNNNN/manifest.json`` (ValueError
    otherwise)."""
    return int(manifest_path.split("/")[1])


def latest_pointer(run_directory: str) -> str:
    """The text of ``LATEST`` naming a run's manifest."""
    return f"{run_directory}/{MANIFEST}\n"


def manifest_of_latest(text: str) -> str:
    """The run manifest a ``LATEST`` text names (relative to the root); ValueError unless it is
    a manifest inside the runs directory."""
    rel = text.strip()
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != RUNS_DIR or parts[2] != MANIFEST or ".." in parts:
        raise ValueError(f"{LATEST} names {rel!r}, not {RUNS_DIR}/NNNNN/{MANIFEST}")
    return rel


def root_of_run(run_location: str, run_directory: str) -> str:
    """The incremental root above a run opened directly (``ROOT/runs/00002`` -> ``ROOT``).
    ValueError unless ``run_directory`` (the run's manifest's ``run_dir``) is ``runs/NNNNN``:
    any other would make another ancestor the root, and every path under it the dataset's."""
    parts = str(run_directory).split("/")
    if len(parts) != 2 or parts[0] != RUNS_DIR or not (parts[1].isascii() and parts[1].isdigit()):
        raise ValueError(f"the manifest's run_dir {run_directory!r} is not {RUNS_DIR}/NNNNN")
    location = run_location.rstrip("/")
    if not location.endswith("/" + run_directory):
        raise ValueError(f"{run_location} holds the manifest of incremental run "
                         f"{run_directory} but is not ROOT/{run_directory}")
    return location[:-len(run_directory) - 1]


def file_url_path(location: str) -> str:
    """``location`` with a ``file:///ABSOLUTE/PATH`` URL (the form volume URLs take; also
    ``file://localhost/...``, in any case; percent-escapes decoded, ``%20`` a space) as that
    local path; anything else as it is. ValueError, its text the reason, for
    ``file://HOST/...`` and a URL naming no path."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme.lower() != "file":
        return location
    host, _, path = rest.partition("/")
    if host.lower() not in ("", "localhost"):
        raise ValueError(f"file:// is followed by an absolute path (file:///{rest}); or give a "
                         "plain path")
    if not path.strip("/"):
        raise ValueError("names no path (an unset variable?); give the absolute path, "
                         "file:///PATH, or a plain path")
    return "/" + urllib.parse.unquote(path)


def join(base: str, *relative: str) -> str:
    """``base`` (a local path or a URL such as gs://...) joined with relative '/' paths."""
    if "://" in base:
        return "/".join([base.rstrip("/")] + [r.strip("/") for r in relative])
    return posixpath.join(base, *relative)


def join_inside(root: str, relative) -> str:
    """``root`` joined with a path a manifest or an index line lists. Listed paths are data from
    storage: one that would leave the dataset (absolute, with a scheme or a drive, or climbing
    with '..') is a ValueError, never joined."""
    text = str(relative)
    parts = text.replace("\\", "/").split("/")
    if (not text or text.startswith("/") or "://" in text or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"lists the path {relative!r}, which is not inside the dataset")
    return join(root, text)


def index_npy_base(index_file: dict) -> str:
    """The directory (relative to the root) that one index shard's npy paths are relative to."""
    return run_dir(index_file["run"]) if "run" in index_file else ""


def shard_files(manifest: dict, kind: str, split: str = None) -> List[dict]:
    """The manifest's ``files[kind]`` entries ('tfrecord' or 'index'), of one split if given."""
    return [f for f in manifest["files"][kind] if split is None or f["split"] == split]
