"""Precomputed volumes: a plain-values description (VolumeSpec), their chunk grid and read plans."""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from synanno_datagen.errors import redact
from synanno_datagen.transforms.geometry import Box


@dataclass(frozen=True)
class VolumeSpec:
    """One scale (mip) of a precomputed volume, as plain values that pickle to workers."""

    url: str
    mip: int
    resolution_nm_xyz: Tuple[float, float, float]
    voxel_offset_xyz: Tuple[int, int, int]
    size_xyz: Tuple[int, int, int]
    chunk_size_xyz: Tuple[int, int, int]
    dtype: str
    encoding: str
    layer_type: str
    num_channels: int
    key: str = ""  # the scale's key: its chunks are named "{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
    sharded: bool = False  # chunks packed in shard files (neuroglancer_uint64_sharded_v1)

    @property
    def bounds(self) -> Box:
        return Box(self.voxel_offset_xyz,
                   tuple(o + s for o, s in zip(self.voxel_offset_xyz, self.size_xyz)))

    def to_manifest(self) -> dict:
        return {
            "url": redact(self.url), "mip": self.mip,
            "resolution_nm_xyz": list(self.resolution_nm_xyz),
            "voxel_offset_xyz": list(self.voxel_offset_xyz), "size_xyz": list(self.size_xyz),
            "chunk_size_xyz": list(self.chunk_size_xyz), "dtype": self.dtype,
            "encoding": self.encoding, "layer_type": self.layer_type, "sharded": self.sharded,
        }


class NoSuchMip(ValueError):
    """The volume has no scale of the mip asked for."""


class BadInfo(ValueError):
    """An ``info`` file without a key the precomputed format requires, or with a wrong value."""


def _xyz(scale: dict, key: str, kind, positive: bool) -> tuple:
    """Scale value ``key``: three finite numbers of ``kind`` (positive if asked); BadInfo."""
    value = scale.get(key)
    try:
        numbers = tuple(kind(v) for v in value)
        ok = len(numbers) == 3 and all(math.isfinite(v) and v == w and (v > 0 or not positive)
                                       for v, w in zip(numbers, value))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        what = "positive " if positive else ""
        raise BadInfo(f"scale {scale.get('key', '?')!r} has {key} {json_text(value)}, not three "
                      f"{what}{'integers' if kind is int else 'numbers'}")
    return numbers


def json_text(value) -> str:
    return "(none)" if value is None else repr(value)[:80]


def spec_from_info(url: str, info: dict, mip: int = 0) -> VolumeSpec:
    """Describe scale ``mip`` of a precomputed volume from its ``info`` JSON (a dict).

    Raises NoSuchMip when the volume has no such mip, BadInfo when the info lacks what the
    format requires (``type``, ``data_type``, ``num_channels``, ``scales``; per scale ``key``,
    ``size``, ``resolution``, ``chunk_sizes``, ``encoding``) or holds a wrong value.
    """
    if not isinstance(info, dict):
        raise BadInfo("the info is not a JSON object")
    missing = [k for k in ("type", "data_type", "num_channels", "scales") if k not in info]
    if missing:
        raise BadInfo(f"the info has no {', '.join(missing)}")
    scales = info["scales"]
    if not isinstance(scales, list) or not scales:
        raise BadInfo("the info lists no scales")
    if not 0 <= mip < len(scales):
        raise NoSuchMip(f"mip {mip} is not in {url} (it has mips 0..{len(scales) - 1})")
    scale = scales[mip]
    if not isinstance(scale, dict):
        raise BadInfo(f"scale {mip} is not a JSON object")
    missing = [k for k in ("key", "size", "resolution", "chunk_sizes", "encoding")
               if k not in scale]
    if missing:
        raise BadInfo(f"scale {mip} has no {', '.join(missing)}")
    chunk_sizes = scale["chunk_sizes"]
    if not isinstance(chunk_sizes, list) or not chunk_sizes:
        raise BadInfo(f"scale {scale['key']!r} lists no chunk_sizes")
    try:
        dtype = str(np.dtype(info["data_type"]))
        channels = int(info["num_channels"])
    except (TypeError, ValueError) as e:
        raise BadInfo(f"data_type {json_text(info['data_type'])} or num_channels "
                      f"{json_text(info['num_channels'])} is not valid ({e})") from None
    _check_encoding(scale, dtype)
    _check_sharding(scale)
    return VolumeSpec(
        url=url, mip=mip,
        resolution_nm_xyz=tuple(float(r) for r in _xyz(scale, "resolution", float, True)),
        voxel_offset_xyz=_xyz({"voxel_offset": (0, 0, 0), **scale}, "voxel_offset", int, False),
        size_xyz=_xyz(scale, "size", int, True),
        chunk_size_xyz=_xyz({"key": scale["key"], "chunk_sizes": chunk_sizes[0]}, "chunk_sizes",
                            int, True),
        dtype=dtype, encoding=str(scale["encoding"]),
        layer_type=str(info["type"]), num_channels=channels,
        key=str(scale["key"]), sharded=scale.get("sharding") is not None,
    )


def _check_encoding(scale: dict, dtype: str) -> None:
    """compressed_segmentation holds uint32 or uint64 labels in blocks of the scale's
    ``compressed_segmentation_block_size`` (a decoder divides by it); BadInfo otherwise."""
    if scale["encoding"] != "compressed_segmentation":
        return
    if dtype not in ("uint32", "uint64"):
        raise BadInfo(f"scale {scale['key']!r} is compressed_segmentation, which holds uint32 or "
                      f"uint64 labels, not {dtype}")
    _xyz(scale, "compressed_segmentation_block_size", int, True)


SHARDING_BITS = {"preshift_bits": 64, "minishard_bits": 32, "shard_bits": 64}  # largest values
SHARDING_CHOICES = {"hash": ("identity", "murmurhash3_x86_128"),
                    "minishard_index_encoding": ("raw", "gzip"), "data_encoding": ("raw", "gzip")}


def _check_sharding(scale: dict) -> None:
    """A scale's ``sharding`` (absent, or neuroglancer_uint64_sharded_v1 with its bit counts
    in range and known hash and encodings); BadInfo otherwise."""
    sharding = scale.get("sharding")
    if sharding is None:
        return
    where = f"scale {scale['key']!r} has sharding"
    if not isinstance(sharding, dict) or \
            sharding.get("@type") != "neuroglancer_uint64_sharded_v1":
        raise BadInfo(f"{where} {json_text(sharding)}, not a neuroglancer_uint64_sharded_v1 "
                      "object")
    for key, most in SHARDING_BITS.items():
        bits = sharding.get(key)
        if type(bits) not in (int, float) or not 0 <= bits <= most or bits != int(bits):
            raise BadInfo(f"{where} {key} {json_text(bits)}, not an integer from 0 to {most}")
    if sharding["minishard_bits"] + sharding["shard_bits"] > 64:
        raise BadInfo(f"{where} minishard_bits + shard_bits "
                      f"{sharding['minishard_bits'] + sharding['shard_bits']}, more than 64")
    for key, choices in SHARDING_CHOICES.items():
        value = sharding.get(key, None if key == "hash" else "raw")
        if value not in choices:
            raise BadInfo(f"{where} {key} {json_text(value)}, not one of {', '.join(choices)}")


def default_block_size(target: VolumeSpec, source: VolumeSpec, scale_xyz, crop_size_xyz,
                       memory_bytes: int) -> Tuple[int, int, int]:
    """Work block (target voxels) for the grouped strategy: whole chunks of both volumes per
    axis, about twice the crop, shrunk (in x and y) until one block's source and target voxels
    fill at most a quarter of the memory budget."""
    block = []
    for t, s, f, c in zip(target.chunk_size_xyz, source.chunk_size_xyz, scale_xyz, crop_size_xyz):
        unit = math.lcm(t, s // f) if s % f == 0 else t
        block.append(unit * max(1, math.ceil(2 * c / unit)))
    while block_bytes(block, scale_xyz, target.dtype) > memory_bytes // 4 and max(block[:2]) > 1:
        axis = 0 if block[0] >= block[1] else 1
        block[axis] = max(1, block[axis] // 2)
    return tuple(block)


def block_bytes(block_xyz, scale_xyz, target_dtype) -> int:
    """Bytes of one work block's voxels (``block_xyz`` target voxels): its uint8 source voxels
    (``scale_xyz`` per target voxel) and its target voxels."""
    return math.prod(block_xyz) * (math.prod(scale_xyz) + np.dtype(target_dtype).itemsize)


MISSING_CHUNK_MODES = ("error", "zero")
# (source, target): an absent chunk of the labels is background (tensorstore and igneous store
# no all-zero chunk); an absent chunk of the raw EM is missing data.
DEFAULT_MISSING_CHUNKS = ("error", "zero")


class MissingChunks(LookupError):
    """A crop touched chunks that are not in storage (``names`` as ``chunk_names`` gives them)."""

    def __init__(self, url: str, names: List[str]):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        super().__init__(f"{len(names)} chunk(s) missing in {url}: {shown}")
        self.url = url
        self.names = names


def chunk_names(spec: VolumeSpec, box: Box) -> List[str]:
    """Names of the storage chunks of ``spec`` that ``box`` (voxels at its mip) touches, as
    cloud-volume names them (and keys its in-memory cache)."""
    inner = box.intersect(spec.bounds)
    if inner is None:
        return []
    ranges = []
    for a, b, o, c, n in zip(inner.start_xyz, inner.stop_xyz, spec.voxel_offset_xyz,
                             spec.chunk_size_xyz, spec.size_xyz):
        first, last = (a - o) // c, (b - 1 - o) // c
        ranges.append([(o + i * c, min(o + (i + 1) * c, o + n)) for i in range(first, last + 1)])
    return [f"{spec.key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
            for (x0, x1), (y0, y1), (z0, z1) in itertools.product(*ranges)]


def chunk_pieces(spec: VolumeSpec, box: Box) -> List[Tuple[str, Box]]:
    """(chunk name, the part of ``box`` inside that chunk) for every chunk ``box`` touches."""
    inner = box.intersect(spec.bounds)
    if inner is None:
        return []
    return [(name, chunk_box(name).intersect(inner)) for name in chunk_names(spec, inner)]


_SPAN = re.compile(r"(-?\d+)-(-?\d+)")   # "start-stop"; both may be negative: "-20--4"


def chunk_box(name: str) -> Box:
    """The voxel box of a chunk, from its name ("{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}")."""
    spans = [_SPAN.fullmatch(s).groups() for s in name.rsplit("/", 1)[-1].split("_")]
    return Box(tuple(int(a) for a, _ in spans), tuple(int(b) for _, b in spans))


def chunk_id(spec: VolumeSpec, name: str) -> int:
    """A chunk's id in a sharded volume: the compressed Morton code of its grid position
    (bits interleaved x, y, z from the lowest, each axis using only the bits its grid needs)."""
    grid_xyz = [-(-n // c) for n, c in zip(spec.size_xyz, spec.chunk_size_xyz)]
    bits = [max(0, (g - 1).bit_length()) for g in grid_xyz]
    position = [(a - o) // c for a, o, c in
                zip(chunk_box(name).start_xyz, spec.voxel_offset_xyz, spec.chunk_size_xyz)]
    code, out_bit = 0, 0
    for bit in range(max(bits)):
        for axis in range(3):
            if bit < bits[axis]:
                code |= ((position[axis] >> bit) & 1) << out_bit
                out_bit += 1
    return code


def chunk_voxels(name: str) -> int:
    """Voxel count of a chunk from its name."""
    return math.prod(chunk_box(name).size_xyz)


def plan_reads(spec: VolumeSpec, boxes: List[Box]) -> Tuple[List[Box], List[Optional[int]]]:
    """Group crop boxes (voxels at ``spec``'s mip) into few cutouts that read no needless chunk.

    Returns (regions, region index per box). Each region is the bounding box of the in-bounds
    parts of the boxes assigned to it; a box entirely outside the bounds gets None. Two regions merge only when their bounding box touches no chunk
    that neither touched, so a region never reads a chunk no member needs. Chunks shared by
    regions that do not merge are read by each (an in-memory chunk cache can serve the second).
    """
    by_cells = {}  # (lo, hi) in chunk-grid units -> [lo, hi, cells, box indices, voxel union]
    which: List[Optional[int]] = [None] * len(boxes)
    for i, box in enumerate(boxes):
        inner = box.intersect(spec.bounds)
        if inner is None:
            continue
        lo = tuple((a - o) // c for a, o, c in
                   zip(inner.start_xyz, spec.voxel_offset_xyz, spec.chunk_size_xyz))
        hi = tuple((b - 1 - o) // c + 1 for b, o, c in
                   zip(inner.stop_xyz, spec.voxel_offset_xyz, spec.chunk_size_xyz))
        entry = by_cells.get((lo, hi))
        if entry is None:  # boxes on the same chunks share an entry from the start
            by_cells[(lo, hi)] = [lo, hi, set(itertools.product(*map(range, lo, hi))), [i], inner]
        else:
            entry[3].append(i)
            entry[4] = Box(tuple(map(min, entry[4].start_xyz, inner.start_xyz)),
                           tuple(map(max, entry[4].stop_xyz, inner.stop_xyz)))
    grid = list(by_cells.values())
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(grid)), 2):
            lo = tuple(map(min, grid[a][0], grid[b][0]))
            hi = tuple(map(max, grid[a][1], grid[b][1]))
            n_cells = math.prod(h - l for l, h in zip(lo, hi))
            if n_cells > len(grid[a][2]) + len(grid[b][2]):
                continue  # cheap test first: the bounding box has more cells than both hold
            cells = grid[a][2] | grid[b][2]
            if n_cells == len(cells):
                union = Box(tuple(map(min, grid[a][4].start_xyz, grid[b][4].start_xyz)),
                            tuple(map(max, grid[a][4].stop_xyz, grid[b][4].stop_xyz)))
                grid[a] = [lo, hi, cells, grid[a][3] + grid[b][3], union]
                del grid[b]
                merged = True
                break
    regions = []
    for r, (_, _, _, members, union) in enumerate(grid):
        regions.append(union)
        for i in members:
            which[i] = r
    return regions, which
