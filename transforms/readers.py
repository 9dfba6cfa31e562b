"""Volume reading engines: tensorstore (default) and cloud-volume, behind one small interface.

A reader reads one box of one scale of a precomputed volume; an absent chunk is never taken for
zeros silently (the caller decides what it means): cloud-volume's strict read raises
ChunkMissing; tensorstore reads it as zeros and ``absent`` tells which of the chunks that read
as all zeros are not in storage (so a box with absent chunks is read once, not again chunk by
chunk after a failed read, whose loads still in flight would go uncounted).
Each reader keeps read counters in ``io`` (a Counter), which the fetching DoFn reports:

- tensorstore: measured from tensorstore's own metrics around each read: ``storage_reads`` and
  ``storage_bytes`` (requests to and bytes from the kvstore: file, gcs or http) and
  ``chunks_loaded`` (cache entries loaded from storage: chunks, absent ones included, plus the
  minishard indices of a sharded volume). The metrics are per process, and reads of several
  threads run at once (no lock is held while reading): a read that ends takes the growth since
  the last read ended, or since it started when no other read was under way. So the figures of a
  process add up exactly to what its reads did; which reader they go to is exact while one read
  runs at a time (the DirectRunner's default), and approximate while reads overlap.
- cloud-volume: ``chunks_decoded`` and ``decoded_bytes``, the chunks a cutout will decode (those
  not in its in-memory LRU), counted just before the read.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
from typing import Dict, List, Set, Tuple

import numpy as np

from synanno_datagen.transforms.geometry import Box, xyzc_to_zyx
from synanno_datagen.transforms.volumes import VolumeSpec, chunk_id, chunk_names, chunk_voxels, spec_from_info

TENSORSTORE, CLOUDVOLUME = "tensorstore", "cloudvolume"
ENGINES = (TENSORSTORE, CLOUDVOLUME)
# --fetch-strategy: a worker's crops read by spatial block (each chunk once) or one by one
GROUPED, PER_INSTANCE = "grouped", "per-instance"
FETCH_STRATEGIES = (GROUPED, PER_INSTANCE)


class ChunkMissing(LookupError):
    """A strict read touched a chunk that is not in storage (404, absent file or shard entry)."""


def precomputed_url(url: str) -> str:
    """A volume URL without cloud-volume's optional ``precomputed://`` prefix."""
    prefix = "precomputed://"
    return url[len(prefix):] if url.startswith(prefix) else url


def kvstore_url(url: str) -> str:
    """The volume's directory as a tensorstore kvstore URL (``file://``, ``gs://``, ``http(s)://``).

    A GCS emulator named by ``STORAGE_EMULATOR_HOST`` (the variable Google's clients read) is
    passed on to tensorstore as ``TENSORSTORE_GCS_HTTP_URL``.
    """
    url = precomputed_url(url)
    if url.startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = os.environ["STORAGE_EMULATOR_HOST"]
    scheme, sep, path = url.partition("://")
    if scheme in ("file", "gs"):   # tensorstore decodes escapes there: '%41' names itself
        path = "".join(_KVSTORE_ESCAPES.get(c, c) for c in path)
    return scheme + sep + path.rstrip("/") + "/"


# Characters of a file or object name that a tensorstore URL would take for escapes, a query
# or a fragment; cloud-volume, Beam and the bucket take them as written.
_KVSTORE_ESCAPES = {"%": "%25", "?": "%3F", "#": "%23"}


def scale_url(url: str, key: str) -> str:
    """The folder of the scale whose info ``key`` is ``key`` in the volume at ``url``, as a
    kvstore URL ending in ``/`` (see ``kvstore_url``). The precomputed format's keys are
    relative paths: a ``..`` (``../shared/8_8_33``, a scale kept beside the volume) is resolved
    here, by the text, as tensorstore's own reads resolve it (its file kvstore refuses a key
    holding ``..``, so the existence checks of ``absent`` failed). ValueError for a key that is
    no such path: starting with ``/``, naming a scheme (``gs://...``), holding an empty or ``.``
    segment (tensorstore reads ``./8_8_33`` or ``8_8_33/`` elsewhere than cloud-volume: not at
    all, or another folder), holding ``..`` after a folder name (``a/../8_8_33``: tensorstore
    resolves it by the text, cloud-volume through the disk, where ``a`` may be a link or
    missing), or whose ``..`` climb above the volume's root (the file system's, the bucket, the
    host)."""
    if key.startswith("/") or "://" in key:
        raise ValueError("a scale's key is a path relative to the volume's folder")
    segments = key.split("/")
    if "" in segments or "." in segments:
        raise ValueError("a scale's key is folder names and '..' joined by single '/' (no "
                         "'.', no empty name, no '/' at the end)")
    if ".." in itertools.dropwhile(lambda s: s == "..", segments):
        raise ValueError("a '..' after a folder name ('a/../b'), which the engines resolve "
                         "differently (by the text, or by the disk: through a link or a "
                         "folder that is not there); write the key without it")
    base = kvstore_url(url)
    scheme, sep, path = base.partition("://")
    if scheme in ("file", "gs"):   # escaped as kvstore_url escapes the volume's path
        segments = ["".join(_KVSTORE_ESCAPES.get(c, c) for c in s) for s in segments]
    if ".." not in segments:
        return base + "/".join(segments) + "/"
    root, _, rest = ("", "", path[1:]) if scheme == "file" else path.partition("/")
    parts = [p for p in rest.split("/") if p]
    for segment in segments:
        if segment != "..":
            parts.append(segment)
        elif parts:
            parts.pop()
        else:
            raise ValueError(f"its '..' climb above {scheme + sep + root}/")
    return scheme + sep + root + "/" + "".join(p + "/" for p in parts)


# Retries of a check before any work: a few seconds, so that a host or port nothing answers on
# is named at once. (tensorstore's defaults, 32 retries up to 32 s apart, kept such a run silent
# for about 15 minutes; reads during the run keep them.)
_CHECK_RETRIES = {"max_retries": 4, "initial_delay": "0.5s", "max_delay": "4s"}


def read_info(url: str, engine: str = TENSORSTORE, check: bool = False) -> dict:
    """The volume's ``info`` JSON. Raises the engine's error when it cannot be read; ``check``:
    give up after a few seconds of retries (cloud-volume's own take about as long)."""
    if engine == CLOUDVOLUME:
        return dict(_cloudvolume(url, 0).meta.info)
    import json

    import tensorstore as ts

    context = ts.Context({"http_request_retries": _CHECK_RETRIES,
                          "gcs_request_retries": _CHECK_RETRIES,
                          "s3_request_retries": _CHECK_RETRIES}) if check else None
    store = ts.KvStore.open(kvstore_url(url), context=context).result()
    found = store.read("info").result()
    if found.state != "value":
        raise FileNotFoundError(f"no info file at {precomputed_url(url).rstrip('/')}/info")
    return json.loads(bytes(found.value).decode("utf-8"))


_CONTEXTS: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_CONTEXTS_KEPT = 2
_CONTEXTS_LOCK = threading.Lock()
_METRICS_LOCK = threading.Lock()


def shared_context(cache_bytes: int, run_token: str = ""):
    """One tensorstore Context per process, run and cache budget, so the threads of a worker
    share one chunk cache. Only the latest few are kept here (readers hold their own), so a
    long-lived process does not keep the caches of finished runs."""
    import tensorstore as ts

    key = (int(cache_bytes), run_token)
    with _CONTEXTS_LOCK:
        if key not in _CONTEXTS:
            _CONTEXTS[key] = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})
            while len(_CONTEXTS) > _CONTEXTS_KEPT:
                _CONTEXTS.popitem(last=False)
        return _CONTEXTS[key]


_COUNTED: Dict[str, str] = {}   # Prometheus name of a metric -> key in the totals, or ""


def _counted(prometheus_name: str) -> str:
    """The key (``storage_reads``, ``storage_bytes``, ``chunks_loaded``) a metric adds to, by its
    Prometheus name, or "" when it is not counted. The Prometheus name has "_" for "/", so
    "/tensorstore/kvstore/gcs_grpc/read" cannot be told from it by rule: the names are learned
    from tensorstore's registry, once per process and again only for an unknown name that may be
    counted (``experimental_collect_matching_metrics`` leaks what it returns, see
    ``_storage_metrics``; histograms' ``_bucket`` and ``_sum`` lines are in no registry)."""
    if prometheus_name not in _COUNTED and (not _COUNTED or prometheus_name.endswith("_read")):
        import tensorstore as ts

        for metric in ts.experimental_collect_matching_metrics("/tensorstore/",
                                                               include_zero_metrics=True):
            name = metric["name"]
            parts = name.split("/")
            key = ""
            if name.startswith("/tensorstore/kvstore/") and parts[-1] in ("read", "bytes_read"):
                key = "storage_reads" if parts[-1] == "read" else "storage_bytes"
            elif name == "/tensorstore/cache/kvs_cache_read":
                key = "chunks_loaded"
            _COUNTED[name.lstrip("/").replace("/", "_")] = key
    return _COUNTED.setdefault(prometheus_name, "")   # not registered: not counted


def _storage_metrics() -> Dict[str, int]:
    """Process-wide tensorstore counters: storage reads, bytes read and cache entries loaded.

    Read from tensorstore's Prometheus text (``name value``, ``name {labels} value``):
    ``ts.experimental_collect_matching_metrics`` (0.1.86) leaks the lists and dicts it returns,
    about 4.5 KB per call of the two prefixes read here, which is twice per read: a worker grew
    by gigabytes per million crops. The text form leaks nothing (about 0.05 ms more per call)."""
    import tensorstore as ts

    totals = collections.Counter()
    # only what is counted: collecting every metric costs 2.5x as much
    for line in (ts.experimental_collect_prometheus_format_metrics("/tensorstore/kvstore/")
                 + ts.experimental_collect_prometheus_format_metrics(
                     "/tensorstore/cache/kvs_cache_read")):
        name = line.partition(" ")[0].partition("{")[0]   # "name value", "name {labels} value"
        key = _COUNTED.get(name)
        if key is None and not line.startswith("#"):
            key = _counted(name)
        if key and (key != "chunks_loaded" or 'category="changed"' in line):
            value = line.rpartition(" ")[2]
            totals[key] += int(value) if value.isdigit() else int(float(value))
    return totals


class TensorstoreReader:
    """Reads of one scale through tensorstore's ``neuroglancer_precomputed`` driver.

    ``cache_bytes`` > 0 shares a decoded-chunk cache of that size with every reader of this
    process, run and budget, so a chunk read by one crop serves the next without a read or a
    decode. Volumes do not change during a run: cached chunks are not checked again.

    Reads fill absent chunks with zeros, and ``absent`` tells which of the chunks that read as
    all zeros are not stored, asking storage (the file, or the shard index of a sharded scale)
    once per chunk. (A strict read fails at the first absent chunk while the others' loads are
    still in flight; and in a sharded scale tensorstore 0.1.86 fills the chunks of an absent
    shard file even when told not to.)
    """

    engine = TENSORSTORE

    def __init__(self, url: str, mip: int, cache_bytes: int = 0, run_token: str = ""):
        import tensorstore as ts

        self.url = url
        self.io = collections.Counter()
        info = read_info(url, TENSORSTORE)
        self._spec = spec_from_info(url, info, mip)
        context = shared_context(cache_bytes, run_token)
        self._store = ts.open({
            "driver": "neuroglancer_precomputed", "kvstore": kvstore_url(url),
            "scale_index": int(mip), "fill_missing_data_reads": True,
            "recheck_cached_data": False, "recheck_cached_metadata": False},
            read=True, context=context).result()
        self._stored: Dict[str, bool] = {}  # chunk name -> stored?
        scale = scale_url(url, self._spec.key)   # the key's "..", resolved once
        if self._spec.sharded:
            self._chunks = ts.KvStore.open({
                "driver": "neuroglancer_uint64_sharded", "base": scale,
                "metadata": info["scales"][mip]["sharding"]}, context=context).result()
        else:
            self._chunks = ts.KvStore.open(scale, context=context).result()

    checks_absence = True  # reads fill absent chunks with zeros: see ``absent``

    def _chunk_key(self, name: str) -> bytes:
        """The key of chunk ``name`` in ``self._chunks``: its id in a sharded scale, else its
        file name in the scale's folder."""
        if self._spec.sharded:
            return chunk_id(self._spec, name).to_bytes(8, "big")
        return name.rpartition("/")[2].encode()

    def absent(self, names: List[str]) -> Tuple[Set[str], Dict[str, Exception]]:
        """(the chunks among ``names`` that are not in storage, {chunk: error} for those storage
        could not tell): each chunk asked once per reader, with a read of no bytes (volumes do
        not change during a run); a failed answer is asked again next time."""
        errors: Dict[str, Exception] = {}
        unknown = [n for n in names if n not in self._stored]
        if unknown:
            with _Measured(self.io):
                found = [(n, self._chunks.read(self._chunk_key(n), byte_range=slice(0, 0)))
                         for n in unknown]
                for n, future in found:
                    try:
                        self._stored[n] = future.result().state != "missing"
                    except Exception as error:  # noqa: BLE001 - reaches the crops of ``n``
                        errors[n] = error
        return {n for n in names if n not in errors and not self._stored[n]}, errors

    def read_zyx(self, box: Box) -> np.ndarray:
        """Voxels of ``box`` (inside the volume's bounds) as a (z, y, x) array; absent chunks
        read as zeros (see ``absent``)."""
        (x0, y0, z0), (x1, y1, z1) = box.start_xyz, box.stop_xyz
        view = self._store[x0:x1, y0:y1, z0:z1, 0].T   # (z, y, x): tensorstore lays it out
        with _Measured(self.io):
            array = view.read().result()
        return np.ascontiguousarray(array)


class _Measured:
    """Adds to ``io`` the growth of tensorstore's per-process storage counters that the block's
    read accounts for (see the module docstring). The lock is held only to take the counters."""

    _active = 0                                         # reads under way in this process
    _last: collections.Counter = collections.Counter()  # as a read last began or ended

    def __init__(self, io: collections.Counter):
        self._io = io

    def __enter__(self):
        with _METRICS_LOCK:
            if not _Measured._active:       # what happened between reads is not theirs
                _Measured._last = _storage_metrics()
            _Measured._active += 1

    def __exit__(self, *exc):
        with _METRICS_LOCK:
            now = _storage_metrics()
            self._io.update(now - _Measured._last)
            _Measured._last = now
            _Measured._active -= 1
        return False


def _cloudvolume(url: str, mip: int, lru_bytes: int = 0):
    from cloudvolume import CloudVolume

    return CloudVolume(precomputed_url(url), mip=mip, bounded=True, fill_missing=False,
                       progress=False, parallel=1, cache=False, lru_bytes=int(lru_bytes),
                       lru_encoding="raw")


class CloudVolumeReader:
    """Strict reads of one scale through cloud-volume (``--volume-reader cloudvolume``).

    ``cache_bytes`` > 0 keeps that many bytes of decoded chunks in cloud-volume's LRU.
    """

    engine = CLOUDVOLUME

    def __init__(self, url: str, mip: int, cache_bytes: int = 0, run_token: str = ""):
        self.url = url
        self.io = collections.Counter()
        self._cv = _cloudvolume(url, mip, cache_bytes)
        self._spec = spec_from_info(url, dict(self._cv.meta.info), mip)

    checks_absence = False  # a strict read raises ChunkMissing for an absent chunk, sharded or not

    def read_zyx(self, box: Box) -> np.ndarray:
        from cloudvolume import Bbox
        from cloudvolume.exceptions import EmptyVolumeException

        self._count(box)
        try:
            cutout = self._cv.download(Bbox(box.start_xyz, box.stop_xyz), mip=self._cv.mip)
        except EmptyVolumeException as e:
            self._raise_empty(box, e)
        return xyzc_to_zyx(np.asarray(cutout))

    def _raise_empty(self, box: Box, error: Exception):
        """cloud-volume reports an absent chunk and a stored one without bytes (a zero-byte
        file) alike: ChunkMissing only when storage has no chunk of ``box``'s one chunk, else
        an error of its own. (Regions of several chunks are read chunk by chunk after either;
        in sharded scales absence cannot be told from a damaged shard this way.)"""
        names = chunk_names(self._spec, box)
        if len(names) == 1 and not self._spec.sharded:
            from cloudfiles import CloudFiles

            if CloudFiles(self._cv.cloudpath).exists(names[0]):
                raise OSError(f"{self.url}: chunk {names[0]} is stored but has no bytes (a "
                              "write cut short?)") from None
        raise ChunkMissing(f"{self.url}: {error}") from None

    def _count(self, box: Box) -> None:
        """Add the chunks this read will decode (not in the LRU) to ``io``."""
        lru = self._cv.image.lru
        decoded = [n for n in chunk_names(self._spec, box) if lru.size == 0 or n not in lru]
        voxels = sum(chunk_voxels(n) for n in decoded)
        self.io.update({"chunks_decoded": len(decoded),
                        "decoded_bytes": voxels * np.dtype(self._spec.dtype).itemsize})


def describe_volume(url: str, mip: int = 0, engine: str = TENSORSTORE) -> VolumeSpec:
    """Read a volume's ``info`` (with the few retries of the run's checks) and describe scale
    ``mip``. Raises ValueError for a mip the volume does not have, BadInfo for a scale the format
    does not allow, the engine's error when the info cannot be read."""
    return spec_from_info(url, read_info(url, engine, check=True), mip)


def mip_resolutions(url: str, engine: str = TENSORSTORE) -> List[tuple]:
    """Resolution (nm, x, y, z) of every mip of a volume, from its ``info``; BadInfo names a
    scale the format does not allow."""
    info = read_info(url, engine, check=True)
    return [spec_from_info(url, info, mip).resolution_nm_xyz for mip in range(len(info["scales"]))]


def open_reader(url: str, mip: int, engine: str, cache_bytes: int = 0, run_token: str = ""):
    """A TensorstoreReader or CloudVolumeReader for scale ``mip`` of the volume at ``url``;
    ``run_token`` names the run whose readers may share a cache (tensorstore)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown volume reader {engine!r} (use {' or '.join(ENGINES)})")
    cls = TensorstoreReader if engine == TENSORSTORE else CloudVolumeReader
    return cls(url, mip, cache_bytes, run_token)
