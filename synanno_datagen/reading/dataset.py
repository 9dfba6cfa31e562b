"""Open a finished dataset (local or gs://, a run's directory or an incremental root) and read
its manifest, index lines, dead letters and files. Local files are read with Python's own file
and gzip modules; other storage (gs://) through Beam's FileSystems, so every path the generator
can write, this can read, and a training job reading a local dataset never imports Beam.

Everything a reader needs to find is named by ``synanno_datagen.layout``; problems a user can fix
(no manifest, no such split, a format the dataset was not written in) raise DatasetError.
"""
from __future__ import annotations

import dataclasses
import gzip as gzip_files
import hashlib
import json
import os
import posixpath
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

from synanno_datagen import layout
from synanno_datagen.errors import DAMAGED, DatasetError, UsageError, first_line
from synanno_datagen.reading.manifest_checks import manifest_problem
from synanno_datagen.reading.npy_items import NpyItems

__all__ = ["Dataset", "DatasetError", "open_dataset"]

MAX_CROP_SIDE = 1 << 16   # voxels per axis of a record's arrays; a manifest saying more is damaged


def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def open_file(path: str, gzip: bool = False) -> BinaryIO:
    """A file of a dataset (a local path or a gs:// URL) opened for reading bytes; ``gzip``: its
    decompressed bytes."""
    if "://" not in path:   # local: no Beam to import (seconds in every reading process)
        if not stat.S_ISREG(os.stat(path).st_mode):   # (a FIFO would wait for a writer for
            raise OSError(f"{path} is not a regular file")   # good, /dev/zero never end)
        return gzip_files.open(path, "rb") if gzip else open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.GZIP if gzip else CompressionTypes.UNCOMPRESSED
    return _filesystems().open(path, compression_type=kind)


def write_view(flag: str, path: str, data: bytes) -> None:
    """Write a view (a PNG) to ``path``, local or gs://; UsageError naming ``flag`` when it
    cannot be written."""
    try:
        if "://" not in path:   # local: no Beam to import (a second or two of start-up)
            if os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        else:
            _write_object(flag, path, data)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - no such bucket, a folder that is a file, no access
        raise UsageError(f"{flag} {path}: cannot write it ({type(e).__name__}: "
                         f"{first_line(e, 200)}); choose a place you can write") from None


def _write_object(flag: str, path: str, data: bytes) -> None:
    """write_view to a bucket, where an object may stand where a folder is wanted."""
    from synanno_datagen.transforms.files import object_holding, write_bytes

    try:
        above = object_holding(path)
    except Exception:  # noqa: BLE001 - storage that does not answer: the write will tell
        above = None
    if above is not None:   # (on a disk, no file can be written under a file either)
        raise UsageError(f"{flag} {path}: {above} is an object, not a folder; choose a folder "
                         "(a prefix) for the view")
    write_bytes(path, data)


def _sizes(directory: str) -> Dict[str, int]:
    """{file name: bytes} of the files directly in ``directory`` (local, or one listing)."""
    try:
        if "://" not in directory:
            return {e.name: e.stat().st_size for e in os.scandir(directory or ".") if e.is_file()}
        listed = _filesystems().match([directory + "/*"])[0].metadata_list
        return {m.path.rpartition("/")[2]: m.size_in_bytes for m in listed}
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 - no access, a storage error: name the directory
        raise DatasetError(f"{directory}: cannot list it ({type(e).__name__}: "
                           f"{first_line(e, 200)})") from None


def _read_manifest(path: str) -> Tuple[dict, str]:
    """The JSON object at ``path`` and the sha256 (hex) of its bytes."""
    with open_file(path) as f:
        data = f.read()
    return json.loads(data), hashlib.sha256(data).hexdigest()


def _sha256_of(path: str) -> str:
    """The sha256 (hex) of a file's bytes, read a MiB at a time (a whole-H01 manifest is
    about 190 MB: held whole by every DataLoader worker at once at each epoch's start, or
    parsed to compare, it would cost gigabytes and seconds)."""
    digest = hashlib.sha256()
    with open_file(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A finished dataset: ``root`` is what the manifest's file paths are relative to (the
    directory, or the incremental root), ``manifest_path`` the manifest read."""

    root: str
    manifest_path: str
    manifest: dict
    manifest_sha256: str   # of the manifest's bytes as read: what check_unchanged compares

    def path(self, relative: str) -> str:
        """The full path of a file the manifest or an index line lists, relative to ``root``.
        Listed paths are data from storage: one that would leave the dataset (absolute, with a
        scheme, or climbing with '..') is refused with DatasetError, never opened."""
        try:
            return layout.join_inside(self.root, relative)
        except ValueError as e:
            raise DatasetError(f"{self.manifest_path}: {e}; the manifest or an index line was "
                               "changed, generate the dataset again") from None

    def open(self, relative: str, gzip: bool = False) -> BinaryIO:
        """A file of the dataset, opened for reading bytes (local or gs://; ``gzip``: its
        decompressed bytes)."""
        return open_file(self.path(relative), gzip)

    def check_unchanged(self, reader: str) -> None:
        """DatasetError when the manifest read is no longer the one at ``manifest_path`` (the
        directory was generated again: files of the same names, other counts), for a
        ``reader`` that holds what it read from it."""
        try:
            now = _sha256_of(self.manifest_path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.manifest_path}: cannot read it again ({type(e).__name__}: "
                               f"{first_line(e, 200)})") from None
        if now != self.manifest_sha256:
            raise DatasetError(f"{self.manifest_path}: the dataset was written again since this "
                               f"{reader} was made; make it again")

    def without_listings(self) -> "Dataset":
        """This dataset without the manifest's lists of TFRecord and index shards (a whole-H01
        manifest lists about 540,000: some 80 MB for every spawn-started DataLoader worker to
        unpickle and hold), for a reader that took the entries it reads already."""
        files = {k: v for k, v in self.manifest["files"].items()
                 if k not in (layout.TFRECORD, "index")}
        return dataclasses.replace(self, manifest={**self.manifest, "files": files})

    @property
    def variants(self) -> int:
        """Variants per instance (``config.variants``)."""
        return self.manifest["config"]["variants"]

    @property
    def variants_per_record(self) -> int:
        """Samples in one record: every variant (instance layout) or one (variant layout)."""
        instance_records = layout.records_info(self.manifest)["layout"] == "instance"
        return self.variants if instance_records else 1

    def npy_totals(self) -> Dict[str, int]:
        """The dataset's npy files and bytes (every run's, on an incremental root whose
        manifests an earlier version wrote with their own run's)."""
        def run_manifest(run: int) -> dict:
            relative = f"{layout.run_dir(run)}/{layout.MANIFEST}"
            try:
                with self.open(relative) as f:
                    return json.load(f)
            except (OSError, ValueError, RecursionError) as e:
                raise DatasetError(f"{self.path(relative)}: cannot read it ({type(e).__name__}: "
                                   f"{first_line(e, 200)})") from None

        return layout.npy_totals(self.manifest, run_manifest)

    def read_jsonl(self, relative: str, listed_bytes=None) -> Iterator[dict]:
        """The objects of a JSON-lines file of the dataset, streaming; with ``listed_bytes``
        (the manifest's size of it, a whole number as opening checked) read no further than
        that (a file grown past its listing, one long line among them, is refused, not held)."""
        path = self.path(relative)
        try:
            with self.open(relative) as f:
                lines = f if listed_bytes is None else _lines_within(f, listed_bytes)
                yield from layout.json_lines(lines)
        except (OSError, ValueError, RecursionError) as e:   # (JSON nested past the stack)
            raise DatasetError(f"{path}: cannot read it ({type(e).__name__}: "
                               f"{first_line(e, 200)})") from None

    @property
    def formats(self) -> Tuple[str, ...]:
        return tuple(self.manifest["config"]["formats"])

    def files(self, kind: str, split: str = None) -> List[dict]:
        """The manifest's entries of ``kind`` ('tfrecord' or 'index'), of ``split`` if given
        (DatasetError for a split the dataset does not have)."""
        if split is not None and split not in self.manifest["splits"]:
            raise DatasetError(f"split {split!r} is not in this dataset (it has "
                               f"{', '.join(self.manifest['splits']) or 'no splits'})")
        if kind == layout.TFRECORD and layout.TFRECORD not in self.formats:
            raise DatasetError("this dataset has no TFRecord shards (made with --formats "
                               f"{','.join(self.formats)}); read its npy files")
        if kind not in self.manifest["files"]:
            raise DatasetError(f"{self.manifest_path}: this copy of the dataset was passed to a "
                               "worker without its lists of files; call open_dataset there")
        return layout.shard_files(self.manifest, kind, split)

    def checked_files(self, entries: List[dict]) -> List[dict]:
        """``entries`` (manifest file entries), once each file is there with the manifest's
        ``bytes`` (one listing per directory): a file cut short, even after a whole record or
        without its gzip trailer, would otherwise read as fewer records without an error.
        DatasetError names the first that is not."""
        sizes: Dict[str, Dict[str, int]] = {}
        for f in entries:
            if "bytes" not in f:
                continue
            path = self.path(f["path"])
            directory, _, name = path.rpartition("/")
            if directory not in sizes:
                sizes[directory] = _sizes(directory)
            size = sizes[directory].get(name)
            if size != f["bytes"]:
                found = "it is missing" if size is None else f"it has {size} bytes"
                raise DatasetError(f"{path}: {found}, the manifest says {f['bytes']}: the file "
                                   f"was cut short or changed; {DAMAGED}")
        return entries

    def iter_index_shards(self, split: str = None) -> Iterator[Tuple[dict, List[dict]]]:
        """(index file entry, its lines) for every index shard, in manifest order, one shard
        at a time; DatasetError when a shard holds other than the manifest's number of lines."""
        for f in self.files("index", split):
            yield f, self.index_lines(f)

    def index_lines(self, index_file: dict) -> List[dict]:
        """The lines of one index shard (a manifest entry); DatasetError when it holds other
        than the manifest's number of lines."""
        lines = list(self.read_jsonl(index_file["path"], index_file.get("bytes")))
        if "records" in index_file and len(lines) != index_file["records"]:
            raise DatasetError(f"{self.path(index_file['path'])}: {len(lines)} lines, the "
                               f"manifest says {index_file['records']}: the file was cut short "
                               f"or changed; {DAMAGED}")
        return lines

    def index_shards(self, split: str = None) -> List[Tuple[dict, List[dict]]]:
        """iter_index_shards, as a list."""
        return list(self.iter_index_shards(split))

    def iter_index(self, split: str = None) -> Iterator[dict]:
        """Every index line, in manifest order, streaming."""
        for _, lines in self.iter_index_shards(split):
            yield from lines

    def index(self, split: str = None) -> List[dict]:
        """Every index line, in manifest order."""
        return list(self.iter_index(split))

    def iter_dead_letters(self) -> Iterator[dict]:
        """The dead-letter lines of the (latest) run, in file order, streaming; DatasetError for
        a line that is not a dead letter (an object with a ``reason``)."""
        listing = self.manifest["files"]["dead_letter"]
        relative = listing["path"]
        for d in self.read_jsonl(relative, listing.get("bytes")):
            if not (isinstance(d, dict) and isinstance(d.get("reason"), str)):
                raise DatasetError(f"{self.path(relative)}: a line without a reason, not a dead "
                                   f"letter; {DAMAGED}")
            yield d

    def dead_letters(self) -> List[dict]:
        """iter_dead_letters, as a list."""
        return list(self.iter_dead_letters())

    def tfrecord_for(self, index_file: dict) -> dict:
        """The TFRecord shard entry holding the records of an index shard entry (same run,
        split, shard and shard count)."""
        key = _shard_key(index_file)
        for f in self.files("tfrecord"):
            if _shard_key(f) == key:
                return f
        raise DatasetError(f"{self.root}: no TFRecord shard for {index_file['path']}")

    def npy_items(self, split: str) -> NpyItems:
        """One item per (instance, variant) of ``split`` in index order (reading its index
        shards one at a time): ids and its npy files with the sizes and sha256 the index lists."""
        if layout.NPY not in self.formats:
            raise DatasetError("this dataset has no npy files (made with --formats "
                               f"{','.join(self.formats)}); read its TFRecord shards")
        return self.npy_lines_items(self.iter_index_shards(split))

    def npy_lines_items(self, shards: Iterable[Tuple[dict, List[dict]]]) -> NpyItems:
        """The items of index lines: (index shard entry, some of its lines) pairs."""
        entries = ((self.path(f["path"]), layout.index_npy_base(f), line)
                   for f, lines in shards for line in lines)
        return NpyItems(entries, tuple(self.manifest["arrays"]["shape_zyx"]), self.path,
                        self.variants)

    def npy_array(self, items: NpyItems, k: int, reader: Optional[str] = None):
        """File k of ``items``: its array (uint8, z-y-x), checked against its listing. With
        ``reader`` (a reader holding what it read from the manifest), one that does not read,
        or is not what was listed, in a directory generated again since is told as that
        (check_unchanged), not as a damaged file."""
        try:
            return items.load(k, self.path(items.relative_path(k)))
        except DatasetError:
            if reader is not None:
                self.check_unchanged(reader)
            raise


@contextmanager
def damage_named(manifest_path: str, reader: str):
    """A dataset this tool wrote has every part ``reader`` (a command) reads: a KeyError,
    TypeError, ... on the way (not one of our own one-line errors) is a damaged or hand-edited
    manifest, or line of its index or dead letters, read alongside: DatasetError naming it."""
    try:
        yield
    except UsageError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError) as e:
        raise DatasetError(f"{manifest_path} (or an index or dead-letter line it lists) lacks "
                           f"or garbles a part {reader} reads ({type(e).__name__}: "
                           f"{first_line(e, 120)}); {DAMAGED}") from None


def _lines_within(stream, most: int) -> Iterator[bytes]:
    """The lines of an open file, ValueError once they hold more than ``most`` bytes (none is
    read past ``most + 1``)."""
    left = most
    while line := stream.readline(left + 1):
        left -= len(line)
        if left < 0:
            raise ValueError(f"more bytes than the manifest lists ({most})")
        yield line


def _checked_manifest(path: str, manifest) -> dict:
    """``manifest`` if it has the shape this tool writes (an object with ``config``, ``counts``
    and ``files`` objects), else DatasetError: a manifest.json of another tool; or one whose
    fields a reader takes are not what this tool writes (a changed or damaged one)."""
    if not layout.is_manifest(manifest):
        raise DatasetError(f"{path}: not a manifest of synanno-datagen (no config, counts and "
                           "files); point at a dataset this tool wrote")
    arrays = manifest.get("arrays")
    shape = arrays.get("shape_zyx") if isinstance(arrays, dict) else None
    if not (isinstance(shape, list) and len(shape) == 3
            and all(type(n) is int and 0 < n <= MAX_CROP_SIDE for n in shape)):
        raise DatasetError(f"{path}: arrays.shape_zyx {shape!r} is not a crop's shape (three "
                           f"whole numbers from 1 to {MAX_CROP_SIDE}); {DAMAGED}")
    problem = layout.bad_run_entry(manifest) or manifest_problem(manifest)
    if problem:
        raise DatasetError(f"{path}: {problem}; {DAMAGED}")
    return manifest


def _shard_key(f: dict):
    return f.get("run"), f["split"], f["shard"], f["num_shards"]


def _path_exists(path: str) -> bool:
    return os.path.exists(path) if "://" not in path else _filesystems().exists(path)


def _exists(path: str, location: str) -> bool:
    try:
        return _path_exists(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{location}: cannot read the manifest ({type(e).__name__}: {e})") \
            from None


def open_dataset(location: str) -> Dataset:
    """The dataset at ``location``: a run's output directory (holding ``manifest.json``), an
    incremental root (holding ``LATEST``, which names the latest run's manifest), or one run of
    an incremental root (its paths are relative to the root, two levels up); or the
    ``manifest.json`` of one of these (the path a run prints)."""
    try:
        local = layout.file_url_path(str(location))
    except ValueError as e:
        raise DatasetError(f"{location}: {e}") from None
    root = local.rstrip("/") or local
    direct = layout.join(root, layout.MANIFEST)
    pointer = layout.join(root, layout.LATEST)
    if root.rpartition("/")[2] == layout.MANIFEST and not _exists(direct, location):
        return open_dataset(posixpath.dirname(root) or ".")
    try:
        if _path_exists(direct):
            manifest, digest = _read_manifest(direct)
            manifest = _checked_manifest(direct, manifest)
            if "incremental" in manifest:   # a run of a root: local paths in one spelling
                base = root if "://" in root else os.path.abspath(root)
                root = layout.root_of_run(base, manifest["incremental"]["run_dir"])
            return Dataset(root, direct, manifest, digest)
        if _path_exists(pointer):
            with open_file(pointer) as f:
                manifest_path = layout.join(root, layout.manifest_of_latest(f.read().decode()))
            manifest, digest = _read_manifest(manifest_path)
            return Dataset(root, manifest_path, _checked_manifest(manifest_path, manifest),
                           digest)
    except DatasetError:   # (what is wrong with it, named already)
        raise
    except (OSError, ValueError, KeyError, RecursionError) as e:
        raise DatasetError(f"{location}: cannot read the manifest ({type(e).__name__}: {e})") \
            from None
    raise DatasetError(f"{location}: not a dataset directory (no {layout.MANIFEST}; "
                       "a run that did not finish writes none)")
