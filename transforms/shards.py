"""PlanShards: which split each instance is in, and which shard group (a set of whole work blocks)
fetches and writes it.

Shards are spatial: a group is a run of work blocks (in block order) holding about
``--shard-size-mb`` of records, fetched and written by one worker, so every record is written
once, where its arrays are made, and a chunk that neighbouring crops share is read once. Only
instance records (small), per-block counts and per-tile piece sizes cross a shuffle: the plan is
made per tile of TILE_BLOCKS work blocks per axis (``plan_groups``), so no step holds every
occupied block of a whole-volume table.

Splits (``--split-by``): ``block`` (the default) puts all instances of a work block in one split,
a pure function of (seed, block), so train, val and test are spatially apart (crops of
neighbouring synapses overlap, so they would otherwise share raw voxels); a group then lies in one
split. ``instance`` draws each instance's split from (seed, id); a group then writes one shard
per split it holds.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam

from synanno_datagen.transforms.records import Instance
from synanno_datagen.transforms.select import assign_split, pick_split, stable_hash

Block = Tuple[int, int, int]


def block_key(center_xyz, target_offset_xyz, block_size_xyz) -> Block:
    """Index (x, y, z) of the work block holding a centre (blocks start at the volume offset)."""
    return tuple((c - o) // b for c, o, b in zip(center_xyz, target_offset_xyz, block_size_xyz))


TILE_BLOCKS = 16   # work blocks per tile edge: what the shard plan is made of (see plan_groups)


def tile_of(block: Block) -> Block:
    """Index (x, y, z) of the tile (TILE_BLOCKS work blocks per axis) holding a work block."""
    return tuple(b // TILE_BLOCKS for b in block)


def block_order(block: Block) -> Tuple[int, ...]:
    """Sort key of blocks: tiles in z, y, x order, and a tile's blocks in z, y, x order
    (neighbouring blocks end up in one group; a volume of at most TILE_BLOCKS blocks per axis
    is one tile, its blocks in plain z, y, x order)."""
    tile = tile_of(block)
    return tile[2], tile[1], tile[0], block[2], block[1], block[0]


def split_of(run_seed: int, instance_id: int, block: Block, splits, split_by: str) -> str:
    """The split of an instance: a pure function of (seed, block) or of (seed, id)."""
    if split_by == "block":
        return pick_split(stable_hash("split-block", int(run_seed), *map(int, block)), splits)
    return assign_split(run_seed, instance_id, splits)


def _pack(sizes: Iterable[int], shard_bytes: int) -> Tuple[List[int], List[int]]:
    """Greedy packing in order: (the run each size is in, each run's total). A run takes the
    next size unless that passes ``shard_bytes``; a size alone may."""
    runs: List[int] = []
    totals: List[int] = []
    for size in sizes:
        if not totals or (totals[-1] and totals[-1] + size > shard_bytes):
            totals.append(0)
        runs.append(len(totals) - 1)
        totals[-1] += size
    return runs, totals


def tile_pieces(block_counts: Iterable[Tuple[Block, int]], bytes_per_instance: int,
                shard_bytes: int) -> Tuple[Dict[Block, int], List[int]]:
    """One tile's blocks (block, instances) packed in block order into pieces of about
    ``shard_bytes``: ({block: piece number}, [piece bytes])."""
    blocks = sorted(block_counts, key=lambda bc: block_order(bc[0]))
    runs, totals = _pack((n * bytes_per_instance for _, n in blocks), shard_bytes)
    return {block: run for (block, _), run in zip(blocks, runs)}, totals


def number_pieces(tiles: Iterable[Tuple[Tuple[str, Block], List[int]]], shard_bytes: int
                  ) -> Dict[Tuple[str, Block], int]:
    """Every tile's pieces, ((lane, tile), [piece bytes]), packed into groups as blocks are in
    a tile: lanes in name order, a lane's tiles in z, y, x order, pieces in turn; a group holds
    pieces of one lane, the last of a tile with the first of the next when both fit. Returns
    {(lane, tile): group of its first piece}: a tile's next pieces are in the next groups (a
    piece ended where the tile's next block did not fit, so the next piece does not either).
    Groups are numbered 0.. in that order."""
    ordered = sorted(tiles, key=lambda t: (t[0][0], t[0][1][::-1]))   # lane, tile z, y, x
    first: Dict[Tuple[str, Block], int] = {}
    number = 0
    for _, lane_tiles in itertools.groupby(ordered, key=lambda t: t[0][0]):
        lane_tiles = list(lane_tiles)
        runs, totals = _pack((size for _, sizes in lane_tiles for size in sizes), shard_bytes)
        start = 0
        for key, sizes in lane_tiles:
            first[key] = number + runs[start]
            start += len(sizes)
        number += len(totals)
    return first


def plan_groups(counts: Dict[Tuple[Block, str], int], bytes_per_instance: int,
                shard_bytes: int, split_by: str) -> Dict[Block, int]:
    """Pack blocks into groups of about ``shard_bytes`` of records: {block: group number}.

    ``counts``: instances per (block, split). With ``split_by="block"`` each group holds blocks
    of one split (groups of a split are consecutive); with ``instance`` a group holds any blocks.
    Each tile's blocks are packed in block order into pieces (``tile_pieces``), and the pieces
    of every tile, in tile order, into groups (``number_pieces``): a group is a run of blocks
    in ``block_order``, and no step holds more than one tile's blocks or every tile's piece
    sizes (PlanShards runs the same steps in parallel).
    """
    per_tile: Dict[Tuple[str, Block], Dict[Block, int]] = {}
    for (block, split), n in counts.items():
        blocks = per_tile.setdefault((split if split_by == "block" else "", tile_of(block)), {})
        blocks[block] = blocks.get(block, 0) + n
    pieces = {key: tile_pieces(blocks.items(), bytes_per_instance, shard_bytes)
              for key, blocks in per_tile.items()}
    numbers = number_pieces(((key, sizes) for key, (_, sizes) in pieces.items()), shard_bytes)
    return {block: numbers[key] + piece
            for key, (of_block, _) in pieces.items() for block, piece in of_block.items()}


def _tile_plan(element, bytes_per_instance: int, shard_bytes: int):
    """((lane, tile), [(block, instances)]) -> ((lane, block), piece) per block, and the
    tile's piece sizes ((lane, tile), [bytes]) as output ``sizes``."""
    (lane, tile), block_counts = element
    of_block, sizes = tile_pieces(block_counts, bytes_per_instance, shard_bytes)
    yield beam.pvalue.TaggedOutput("sizes", ((lane, tile), sizes))
    for block, piece in of_block.items():
        yield (lane, block), piece


def _with_group(element, numbers):
    """((lane, block), {"instances": [Instance], "piece": [piece]}) -> each Instance with its
    group set."""
    (lane, block), joined = element
    group = numbers[(lane, tile_of(block))] + joined["piece"][0]
    for instance in joined["instances"]:
        yield instance.replace(group=group)


class PlanShards(beam.PTransform):
    """Instances -> output ``ok``: each Instance with its split and its shard group (``shard``)
    set. Only instances, per-block counts and per-tile piece sizes cross a shuffle; no step
    holds every block (a whole-volume table has one per few instances)."""

    def __init__(self, run_seed: int, splits: Sequence[Tuple[str, float]], split_by: str,
                 target_offset_xyz, block_size_xyz, bytes_per_instance: int, shard_bytes: int,
                 split_block_size_xyz=None):
        super().__init__()
        self._seed, self._splits, self._split_by = run_seed, tuple(splits), split_by
        self._offset, self._block = tuple(target_offset_xyz), tuple(block_size_xyz)
        self._split_block = tuple(split_block_size_xyz or block_size_xyz)
        self._bytes, self._shard_bytes = bytes_per_instance, shard_bytes

    def expand(self, instances):
        seed, splits, split_by = self._seed, self._splits, self._split_by
        offset, size, split_size = self._offset, self._block, self._split_block
        # A work block lies in one split unless splits follow another grid (an incremental
        # dataset's own, while this run's work blocks differ): then groups are packed as for
        # instance splits, one shard per split a group holds.
        by_split = split_by == "block" and split_size == size

        def with_split(instance: Instance) -> Instance:
            block = block_key(instance.center_xyz, offset, split_size)
            return instance.replace(split=split_of(seed, instance.instance_id, block, splits,
                                                   split_by))

        def lane_block(instance: Instance):
            return ((instance.split if by_split else ""),
                    block_key(instance.center_xyz, offset, size))

        keyed = (instances
                 | "Split" >> beam.Map(with_split)
                 | "ByBlock" >> beam.Map(lambda i: (lane_block(i), i)))  # ((lane, block), Inst.)
        tiles = (keyed
                 | "CountPerBlock" >> beam.combiners.Count.PerKey()       # ((lane, block), n)
                 | "ByTile" >> beam.Map(lambda kv: ((kv[0][0], tile_of(kv[0][1])),
                                                    (kv[0][1], kv[1])))
                 | "GroupTiles" >> beam.GroupByKey()
                 | "PackTiles" >> beam.FlatMap(_tile_plan, self._bytes, self._shard_bytes
                                               ).with_outputs("sizes", main="pieces"))
        numbers = (tiles.sizes
                   | "AllTiles" >> beam.combiners.ToList()
                   | "NumberPieces" >> beam.Map(number_pieces, self._shard_bytes))
        planned = ({"instances": keyed, "piece": tiles.pieces}
                   | "MeetPieces" >> beam.CoGroupByKey()
                   | "Group" >> beam.FlatMap(_with_group, beam.pvalue.AsSingleton(numbers)))
        return {"ok": planned}


def group_members(members: Iterable[Instance], target_offset_xyz, block_size_xyz
                  ) -> List[Tuple[Block, List[Instance]]]:
    """A group's instances by block, in block order, each block's sorted by id: the order in which
    they are fetched and their records written."""
    blocks: Dict[Block, List[Instance]] = {}
    for instance in members:
        blocks.setdefault(block_key(instance.center_xyz, target_offset_xyz, block_size_xyz),
                          []).append(instance)
    return [(b, sorted(blocks[b], key=lambda i: i.instance_id))
            for b in sorted(blocks, key=block_order)]
