"""File helpers over Beam's FileSystems, so the same code serves local paths and gs://."""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from synanno_datagen.layout import file_url_path, json_lines

_RAW = CompressionTypes.UNCOMPRESSED


def storage_location(location: str) -> str:
    """``location`` as Beam's FileSystems name it: a ``file:///ABSOLUTE/PATH`` URL (the form
    volume URLs take) as that local path, other URLs and paths as they are. Raises ValueError,
    its text the reason, for ``file://HOST/...`` and for a scheme no filesystem here reads."""
    location = file_url_path(location)
    if "://" not in location:
        return location
    try:
        FileSystems.get_filesystem(location)
    except ValueError:
        raise ValueError(f"no storage here reads {location.partition('://')[0]}:// URLs; use "
                         "gs://BUCKET/... or a local path") from None
    return location


def before_commit(keepalive) -> None:
    """Look at the run's lease right before files get their final names, however recently the
    run last looked (``keepalive``: a pipeline.lease.Heartbeat, or None without a lease). Raises
    LeaseLost when the output is no longer the run's: a run that stalled past its lease's
    expiry, while another run took the output, must not rename over that run's files."""
    if keepalive is not None:
        keepalive.beat(force=True)


def write_bytes(path: str, data: bytes, digest: bool = True) -> Tuple[int, str]:
    """Write ``data`` to ``path``; return (bytes, sha256 hex, or "" when ``digest`` is False)."""
    with FileSystems.create(path, compression_type=_RAW) as f:
        f.write(data)
    return len(data), hashlib.sha256(data).hexdigest() if digest else ""


def write_atomic(path: str, chunks: Iterable[bytes]) -> Tuple[int, str]:
    """Write the chunks under a temporary name, then rename to ``path``; return (bytes, sha256)."""
    tmp = path + ".incomplete"
    digest, size = hashlib.sha256(), 0
    with FileSystems.create(tmp, compression_type=_RAW) as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    rename(tmp, path)
    return size, digest.hexdigest()


def _gcs():
    from apache_beam.io.gcp.gcsio import GcsIO

    return GcsIO()


def rename(src: str, dst: str) -> None:
    """Move one file, replacing ``dst`` in one step where the storage can: a reader finds the
    old ``dst`` or the new one, never none (LATEST, manifest.json).

    Local files: os.replace. On gs:// one copy over ``dst`` and one delete of ``src``
    (GcsIO.rename; the copy replaces the object at once): FileSystems' list form sends GCS
    batch requests, which we do not need for one object and which GCS emulators do not serve.
    Beam's other filesystems: ``dst`` deleted, then the move.
    """
    if src.startswith("gs://"):
        _gcs().rename(src, dst)
        return
    if "://" not in dst:   # local files: the directory must exist (buckets have none)
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)   # (other bundles may too)
        os.replace(src, dst)
        return
    if FileSystems.exists(dst):
        FileSystems.delete([dst])
    FileSystems.rename([src], [dst])


def move_once(src: str, dst: str, size_bytes: int) -> None:
    """``rename(src, dst)``, or nothing when an earlier attempt of the same step moved it
    already (``src`` gone, ``dst`` there with ``size_bytes``): a retried step must not fail on
    its own earlier work. RuntimeError when ``src`` is not ``size_bytes`` long: not the file
    its writer closed (another attempt's?), which must not take the final name."""
    found = FileSystems.match([src])[0].metadata_list
    if not found and FileSystems.exists(dst):
        moved = FileSystems.match([dst])[0].metadata_list
        if moved and moved[0].size_in_bytes == size_bytes:
            return
    if found and found[0].size_in_bytes != size_bytes:
        raise RuntimeError(f"{src} is {found[0].size_in_bytes} bytes, not the {size_bytes} its "
                           "writer closed: not the file its writer closed; run again")
    rename(src, dst)


def holds_anything(path: str) -> bool:
    """Whether a file, or anything under a directory/prefix, is at ``path`` (on gs:// at most
    one object is listed per pattern, whatever the prefix holds)."""
    if path.startswith("gs://"):
        prefix = path.rstrip("/")
        return any(found.metadata_list
                   for found in FileSystems.match([prefix, prefix + "/**"], limits=[1, 1]))
    return FileSystems.exists(path)


def bucket_path(path: str) -> str:
    """A ``scheme://bucket/key`` path without empty parts (``gs://b//x/``: ``gs://b/x``)."""
    scheme, _, rest = path.partition("://")
    return f"{scheme}://" + "/".join(p for p in rest.split("/") if p)


def object_holding(path: str) -> Optional[str]:
    """The nearest of the folders holding ``path`` in a bucket (``gs://b/x/y/z``: ``gs://b/x/y``,
    then ``gs://b/x``) that is an object, under which nothing can be a file as it is on a disk
    (a folder of the console, ``x/``, is none); None when none is, and for local paths."""
    if "://" not in path:
        return None
    folders = bucket_path(path).split("/")[2:-1]   # bucket, folders... (not path's own name)
    for depth in range(len(folders), 1, -1):
        above = path.partition("://")[0] + "://" + "/".join(folders[:depth])
        if FileSystems.exists(above):
            return above
    return None


def open_streamed(path: str, read_ahead_bytes: int):
    """``path`` (local or gs://) opened for reading in binary; a gs:// object is fetched
    ``read_ahead_bytes`` at a time (Beam's FileSystems.open fetches 16 MB)."""
    if path.startswith("gs://"):
        return _gcs().open(path, "rb", read_buffer_size=read_ahead_bytes)
    return FileSystems.open(path, compression_type=_RAW)


DELETE_THREADS = 32   # object deletions a process sends at once (gs://)
LIST_PAGE = 1000      # object names one gs:// listing request returns


def delete_objects(paths: Iterable[str]) -> None:
    """Delete these gs:// objects (gone already: nothing), DELETE_THREADS requests at a time:
    one request per object (GCS batch requests would send 100 in one, but GCS emulators do not
    serve them), and a run's ``_tmp`` holds an object per shard group and split, its
    ``--overwrite`` of a dataset two per shard, or per npy file. ``paths`` are taken as
    requests finish (at most 2 * DELETE_THREADS ahead), so a listing can stream in. Raises the
    first error met."""
    local = threading.local()

    def delete(path: str) -> None:
        if not hasattr(local, "gcs"):
            local.gcs = _gcs()   # a client per thread
        local.gcs.delete(path)

    with ThreadPoolExecutor(DELETE_THREADS) as pool:
        pending: deque = deque()
        for path in paths:
            pending.append(pool.submit(delete, path))
            if len(pending) >= 2 * DELETE_THREADS:
                pending.popleft().result()
        for done in pending:
            done.result()


def listed(folder: str) -> Iterator[str]:
    """The gs:// objects under ``folder`` (``gs://b/x``: every ``gs://b/x/...``), LIST_PAGE
    names per request, as they come (a dataset of npy files can hold hundreds of millions)."""
    gcs = _gcs()
    bucket, _, name = folder[len("gs://"):].partition("/")
    for blob in gcs.client.list_blobs(bucket, prefix=f"{name}/" if name else None,
                                      page_size=LIST_PAGE):
        yield f"gs://{bucket}/{blob.name}"


def delete_tree(path: str) -> None:
    """Delete a file or everything under a directory/prefix, if anything is there (a local
    link: the link). On gs:// the objects are deleted as they are listed."""
    if path.startswith("gs://"):
        prefix = path.rstrip("/")
        delete_objects(itertools.chain([prefix], listed(prefix)))
        return
    if "://" not in path and os.path.islink(path):
        os.remove(path)   # a link itself (dangling ones too), never what it points at
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def delete_file(path: str) -> None:
    """Delete one file or object if it is there (gone already, by another process: nothing)."""
    if path.startswith("gs://"):
        _gcs().delete(path)   # GcsIO: NotFound is no error
    elif "://" in path:       # another filesystem of Beam's
        try:
            FileSystems.delete([path])
        except Exception:  # noqa: BLE001 - Beam's BeamIOError; gone is fine, else raise
            if FileSystems.exists(path):
                raise
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def read_jsonl(path: str) -> Iterator[dict]:
    """The objects of the JSON-lines file at ``path`` (layout.json_lines)."""
    with FileSystems.open(path, compression_type=_RAW) as f:
        yield from json_lines(f)


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy encoding of ``array`` (no pickled objects: loadable with allow_pickle=False)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
