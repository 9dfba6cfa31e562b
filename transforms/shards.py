"""PlanShards: which split each instance is in, and which shard group (a set of whole work blocks)
fetches and writes it.

Shards are spatial: a group is a run of work blocks (in block order) holding about
``--shard-size-mb`` of records, fetched and written by one worker, so every record is written
once, where its arrays are made, and a chunk that neighbouring crops share is read once. Only
instance records (small) and per-block counts cross a shuffle.

Splits (``--split-by``): ``block`` (the default) puts all instances of a work block in one split,
a pure function of (seed, block), so train, val and test are spatially apart (crops of
neighbouring synapses overlap, so they would otherwise share raw voxels); a group then lies in one
split. ``instance`` draws each instance's split from (seed, id); a group then writes one shard
per split it holds.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam

from synanno_datagen.transforms.records import Instance
from synanno_datagen.transforms.select import assign_split, pick_split, stable_hash

Block = Tuple[int, int, int]


def block_key(center_xyz, target_offset_xyz, block_size_xyz) -> Block:
    """Index (x, y, z) of the work block holding a centre (blocks start at the volume offset)."""
    return tuple((c - o) // b for c, o, b in zip(center_xyz, target_offset_xyz, block_size_xyz))


def block_order(block: Block) -> Tuple[int, int, int]:
    """Sort key of blocks: z, then y, then x (neighbouring blocks end up in one group)."""
    return block[2], block[1], block[0]


def split_of(run_seed: int, instance_id: int, block: Block, splits, split_by: str) -> str:
    """The split of an instance: a pure function of (seed, block) or of (seed, id)."""
    if split_by == "block":
        return pick_split(stable_hash("split-block", int(run_seed), *map(int, block)), splits)
    return assign_split(run_seed, instance_id, splits)


def plan_groups(counts: Dict[Tuple[Block, str], int], bytes_per_instance: int,
                shard_bytes: int, split_by: str) -> Dict[Block, int]:
    """Pack blocks, in block order, into groups of about ``shard_bytes`` of records.

    ``counts``: instances per (block, split). With ``split_by="block"`` each group holds blocks
    of one split (groups of a split are consecutive); with ``instance`` a group holds any blocks.
    Returns {block: group number}; groups are numbered 0.. in order.
    """
    per_block: Dict[Block, int] = {}
    split_of_block: Dict[Block, str] = {}
    for (block, split), n in counts.items():
        per_block[block] = per_block.get(block, 0) + n
        split_of_block[block] = split
    lanes: Dict[str, List[Block]] = {}
    for block in sorted(per_block, key=block_order):
        lane = split_of_block[block] if split_by == "block" else ""
        lanes.setdefault(lane, []).append(block)
    groups: Dict[Block, int] = {}
    number = 0
    for lane in sorted(lanes):
        filled = 0
        for block in lanes[lane]:
            size = per_block[block] * bytes_per_instance
            if filled and filled + size > shard_bytes:
                number += 1
                filled = 0
            groups[block] = number
            filled += size
        number += 1
    return groups


class PlanShards(beam.PTransform):
    """Instances -> output ``ok``: each Instance with its split and its shard group (``shard``)
    set. Only instances and per-block counts cross a shuffle."""

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
        lanes = split_by if split_size == size else "instance"

        def with_split(instance: Instance) -> Instance:
            block = block_key(instance.center_xyz, offset, split_size)
            return instance.replace(split=split_of(seed, instance.instance_id, block, splits,
                                                   split_by))

        split = instances | "Split" >> beam.Map(with_split)              # Instance with split
        counts = (split
                  | "BlockSplit" >> beam.Map(lambda i: (block_key(i.center_xyz, offset, size),
                                                        i.split))
                  | "CountPerBlock" >> beam.combiners.Count.PerElement()
                  | "Counts" >> beam.combiners.ToDict())                 # {(block, split): n}
        groups = counts | "PackBlocks" >> beam.Map(
            plan_groups, self._bytes, self._shard_bytes, lanes)          # {block: group}
        planned = split | "Group" >> beam.Map(
            lambda i, g: i.replace(group=g[block_key(i.center_xyz, offset, size)]),
            beam.pvalue.AsSingleton(groups))
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
