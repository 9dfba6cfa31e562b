"""The items of a split's npy files, one per (instance, variant), held compactly.

A map-style dataset holds every item for the whole training run, and a DataLoader's forked
workers each copy every memory page whose Python objects they touch (reference counts are
written on access). So the items are a few numpy arrays, about 200 bytes per item for 4
variants, not a dict of strings per item (about 1 KB, copied into every worker). A file is
read no further than its listing and checked against it (``load_npy``).
"""
from __future__ import annotations

import hashlib
import io
import math
import re
from array import array
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from synanno_datagen import layout
from synanno_datagen.errors import DAMAGED, DatasetError, first_line

NPY_HEADER_MOST = 4096   # bytes of an npy file's header (numpy pads it to 64 or 4096 bytes)
NOT_LISTED = -1          # a file its index line lists no size and sha256 for
BAD_LISTING = -2         # a listing that is no npy file of the dataset's arrays (see ``bad``)
ROLES = ("source", "seed_target", "target")
_SHA256 = re.compile("[0-9a-f]{64}")


class NpyItems:
    """Items in index order. Item i: ``instance_ids[i]``, ``variants[i]`` and ``files[i]``, the
    numbers of its (source, seed_target, target) files. File k: its path relative to the
    dataset's root, ``text[ends[k - 1]:ends[k]]`` (UTF-8), the bytes its index line lists,
    ``sizes[k]`` (NOT_LISTED, or BAD_LISTING with ``bad[k]`` saying what was listed), and its
    sha256, ``sha256[k]`` (32 bytes). An instance's source and target are one file each,
    shared by its items."""

    def __init__(self, entries: Iterable[Tuple[str, str, dict]], shape_zyx: Tuple[int, ...],
                 check_path: Callable[[str], str], variants_per_instance: int):
        """``entries``: (index shard's path, npy base relative to the root, index line) in
        index order; ``check_path`` refuses a path that leaves the dataset (DatasetError);
        ``variants_per_instance``: the seed masks each line lists."""
        self.shape_zyx = tuple(shape_zyx)
        most = math.prod(shape_zyx) + NPY_HEADER_MOST
        ids, variants, files = array("q"), array("i"), array("q")
        self._text, self._ends, self._sizes, self._sha256 = (bytearray(), array("q"),
                                                             array("q"), bytearray())
        self.bad: Dict[int, str] = {}
        for index_path, base, entry in entries:
            npy = entry.get("npy") if isinstance(entry, dict) else None
            if not (isinstance(npy, dict) and isinstance(npy.get("files"), list)
                    and isinstance(npy.get("seed_target"), list)):
                raise DatasetError(f"{index_path}: a line without the npy files of its "
                                   f"instance ({str(entry)[:60]}); {DAMAGED}")
            # (each is an item: a line listing a million made a million items of one file)
            if len(npy["seed_target"]) != variants_per_instance:
                raise DatasetError(f"{index_path}: a line listing {len(npy['seed_target'])} "
                                   f"npy seed masks, not the manifest's {variants_per_instance} "
                                   f"variants'; {DAMAGED}")
            instance_id = entry.get("instance_id")
            if type(instance_id) is not int or not -2**63 <= instance_id < 2**63:
                raise DatasetError(f"{index_path}: a line whose instance_id is "
                                   f"{str(instance_id)[:30]}; {DAMAGED}")
            listed = {f["path"]: (f.get("bytes"), f.get("sha256")) for f in npy["files"]
                      if isinstance(f, dict) and isinstance(f.get("path"), str)}
            numbers: Dict[str, int] = {}   # this instance's files: path -> file number
            for variant, seed in enumerate(npy["seed_target"]):
                ids.append(instance_id)
                variants.append(variant)
                for path in (npy.get("source"), seed, npy.get("target")):
                    if not isinstance(path, str):
                        raise DatasetError(f"{index_path}: a line naming the npy file "
                                           f"{str(path)[:30]}; {DAMAGED}")
                    if path not in numbers:
                        relative = layout.join(base, path) if base else path
                        check_path(relative)
                        numbers[path] = self._add_file(relative, path in listed,
                                                       *listed.get(path, (None, None)), most)
                    files.append(numbers[path])
        self.instance_ids = np.asarray(ids, np.int64)
        self.variants = np.asarray(variants, np.int32)
        self.files = np.asarray(files, np.int64).reshape(-1, len(ROLES))
        self.text = np.frombuffer(bytes(self._text), np.uint8)
        self.ends = np.asarray(self._ends, np.int64)
        self.sizes = np.asarray(self._sizes, np.int64)
        self.sha256 = np.frombuffer(bytes(self._sha256), np.uint8).reshape(-1, 32)
        del self._text, self._ends, self._sizes, self._sha256

    def _add_file(self, relative: str, is_listed: bool, size, sha, most: int) -> int:
        """Add one file (its listing as the index line gives it); its number."""
        k = len(self._sizes)
        self._text.extend(relative.encode("utf-8"))
        self._ends.append(len(self._text))
        if not is_listed:
            size, digest = NOT_LISTED, bytes(32)
        elif type(size) is int and 0 <= size <= most and _is_sha256(sha):
            digest = bytes.fromhex(sha)
        else:
            self.bad[k] = f"{str(size)[:20]} bytes and sha256 {str(sha)[:16]}"
            size, digest = BAD_LISTING, bytes(32)
        self._sizes.append(size)
        self._sha256.extend(digest)
        return k

    def __len__(self) -> int:
        return len(self.instance_ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (``bad`` aside: it holds damaged listings only)."""
        return sum(a.nbytes for a in (self.instance_ids, self.variants, self.files, self.text,
                                      self.ends, self.sizes, self.sha256))

    def relative_path(self, k: int) -> str:
        start = int(self.ends[k - 1]) if k else 0
        return self.text[start:int(self.ends[k])].tobytes().decode("utf-8")

    def load(self, k: int, path: str) -> np.ndarray:
        """File k's array (uint8, z-y-x) from ``path``, its full path, checked against its
        listing; DatasetError naming it when the index lists none, or not what an npy file of
        the dataset's arrays holds."""
        size = int(self.sizes[k])
        if size == NOT_LISTED:
            raise DatasetError(f"{path}: its index line lists no size and sha256 for it; "
                               f"{DAMAGED}")
        if size == BAD_LISTING:
            raise DatasetError(f"{path}: its index line lists {self.bad[k]}, not what an npy "
                               f"file of the dataset's arrays holds; {DAMAGED}")
        return load_npy(path, (size, self.sha256[k].tobytes().hex()), self.shape_zyx)


def _is_sha256(sha: Optional[str]) -> bool:
    """A sha256 as ``hexdigest()`` writes it (64 lower-case hex digits)."""
    return isinstance(sha, str) and _SHA256.fullmatch(sha) is not None


READ_BLOCK = 1 << 26   # bytes read at once: a listing is data from storage, never allocated


def _read_at_most(stream, limit: int) -> bytes:
    """The first ``limit`` bytes of ``stream`` (all of it when shorter), read in blocks of at
    most READ_BLOCK: memory grows with what the file holds, not with ``limit``."""
    blocks = []
    while limit > 0:
        block = stream.read(min(limit, READ_BLOCK))
        if not block:
            break
        blocks.append(block)
        limit -= len(block)
    return b"".join(blocks)


def load_npy(path: str, listed: Tuple[int, str], shape_zyx) -> np.ndarray:
    """One npy file, local or gs:// (never unpickled), of ``listed`` (bytes, sha256) as its
    index line lists them (checked: NpyItems) and the manifest's array shape; DatasetError
    naming a file that does not read or is not what was written."""
    from synanno_datagen.reading.dataset import open_file

    try:   # no further than the listing: a larger file is not what was written
        with open_file(path) as f:
            data = _read_at_most(f, listed[0] + 1)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read it ({type(e).__name__}: {first_line(e, 200)}); "
                           f"{DAMAGED}") from None
    if len(data) > listed[0]:
        raise DatasetError(f"{path}: more bytes than the index lists ({listed[0]} bytes); "
                           f"{DAMAGED}")
    if (len(data), hashlib.sha256(data).hexdigest()) != tuple(listed):
        raise DatasetError(f"{path}: {len(data)} bytes that are not the ones the index lists "
                           f"({listed[0]} bytes, sha256 {listed[1][:12]}...); {DAMAGED}")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError) as e:
        raise DatasetError(f"{path}: not a readable npy file ({type(e).__name__}: "
                           f"{first_line(e, 200)}); {DAMAGED}") from None
    if loaded.dtype != np.uint8 or loaded.shape != tuple(shape_zyx):
        raise DatasetError(f"{path}: holds {loaded.dtype} {list(loaded.shape)}, the manifest says "
                           f"uint8 {list(shape_zyx)}; {DAMAGED}")
    return loaded
