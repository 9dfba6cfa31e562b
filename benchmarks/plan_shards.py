"""Benchmark: what planning shard groups holds in one worker and sends to every worker, planned
per tile (PlanShards now) against the earlier plan over every work block at once.

    python benchmarks/plan_shards.py [--instances 1000000] [--splits 3] [--seed 0]

Instances are spread uniformly over an H01-sized target volume (257,946 x 178,200 x 5,293
voxels at 8x8x33 nm) in the default work blocks of 256x256x32 voxels, with block splits, records
of 0.53 MB per instance (the instance layout) and shards of 256 MB. For both plans it prints
the entries and the bytes (Beam's FastPrimitivesCoder, as a runner ships them) of what one
worker gathers (earlier: the count of every block, ToDict; now: every tile's piece sizes,
ToList) and of the side input every worker decodes before planning its first instance
(earlier: {block: group}; now: {(split, tile): group of its first piece}), with the seconds to
decode that side input and the memory it then holds, and the ratios, and the shards each plan
makes. Both plans must put every block in a group of at most the shard size (or one block
alone).
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import non_negative_int, positive_int  # noqa: E402 - needs ROOT

VOLUME_XYZ = (257_946, 178_200, 5_293)
BLOCK_XYZ = (256, 256, 32)
BYTES_PER_INSTANCE = int(0.53 * (1 << 20))
SHARD_BYTES = 256 << 20


def earlier_plan(counts, bytes_per_instance, shard_bytes):
    """The plan before tiles: every block of a split in z, y, x order, packed greedily, as one
    dict of every block (what every worker received)."""
    per_split = {}
    for (block, split), n in counts.items():
        per_split.setdefault(split, []).append((block, n))
    groups, number = {}, 0
    for split in sorted(per_split):
        filled = 0
        for block, n in sorted(per_split[split], key=lambda bn: bn[0][::-1]):
            if filled and filled + n * bytes_per_instance > shard_bytes:
                number, filled = number + 1, 0
            groups[block] = number
            filled += n * bytes_per_instance
        number += 1
    return groups


def block_counts(instances: int, splits: int, seed: int):
    """{(block, split): instances} of ``instances`` uniform centres (one split per block)."""
    from synanno_datagen.transforms.shards import block_key, split_of

    rng = np.random.default_rng(seed)
    centres = rng.integers(0, VOLUME_XYZ, size=(instances, 3))
    names = tuple((f"s{k}", 1 / splits) for k in range(splits))
    counts = {}
    for centre in centres.tolist():
        block = block_key(centre, (0, 0, 0), BLOCK_XYZ)
        key = (block, split_of(seed, 0, block, names, "block"))
        counts[key] = counts.get(key, 0) + 1
    return counts


def measure(value):
    """(entries, encoded bytes, seconds to decode, bytes the decoded value holds) of ``value``
    as Beam encodes an element."""
    from apache_beam.coders import FastPrimitivesCoder

    coder = FastPrimitivesCoder()
    encoded = coder.encode(value)
    start = time.perf_counter()
    coder.decode(encoded)
    seconds = time.perf_counter() - start
    tracemalloc.start()   # (slows what it traces: a second decode)
    decoded = coder.decode(encoded)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del decoded
    return len(value), len(encoded), seconds, held


def check(groups, per_block, shard_bytes):
    members = {}
    for block, group in groups.items():
        members.setdefault(group, []).append(block)
    assert all(len(b) == 1 or sum(per_block[x] for x in b) <= shard_bytes
               for b in members.values()), "a group passes the shard size"
    return len(members)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=positive_int, default=1_000_000)
    parser.add_argument("--splits", type=positive_int, default=3)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)
    from synanno_datagen.transforms.shards import (number_pieces, plan_groups, tile_of,
                                                   tile_pieces)

    counts = block_counts(args.instances, args.splits, args.seed)
    per_block = {}
    for (block, _), n in counts.items():
        per_block[block] = per_block.get(block, 0) + n * BYTES_PER_INSTANCE
    per_tile = {}
    for (block, split), n in counts.items():
        per_tile.setdefault((split, tile_of(block)), []).append((block, n))
    sizes = [(key, tile_pieces(blocks, BYTES_PER_INSTANCE, SHARD_BYTES)[1])
             for key, blocks in per_tile.items()]
    earlier = earlier_plan(counts, BYTES_PER_INSTANCE, SHARD_BYTES)
    rows = {
        "earlier": (measure(counts), measure(earlier)),
        "per tile": (measure(sizes), measure(number_pieces(sizes, SHARD_BYTES))),
    }
    shards = {"earlier": check(earlier, per_block, SHARD_BYTES),
              "per tile": check(plan_groups(counts, BYTES_PER_INSTANCE, SHARD_BYTES, "block"),
                                per_block, SHARD_BYTES)}
    print(f"{args.instances:,} instances in {len(per_block):,} work blocks of "
          f"{'x'.join(map(str, BLOCK_XYZ))} voxels, {len(per_tile):,} (split, tile)s, "
          f"{args.splits} block splits")
    print("plan      | one worker gathers    | every worker decodes                  | shards")
    for name, (gathered, broadcast) in rows.items():
        print(f"{name:9} | {gathered[0]:>9,} {gathered[1] / 1e6:8.1f} MB | {broadcast[0]:>9,} "
              f"{broadcast[1] / 1e6:6.1f} MB {broadcast[2]:6.3f} s "
              f"{broadcast[3] / 1e6:7.1f} MB held | {shards[name]:,}")
    (g0, b0), (g1, b1) = rows["earlier"], rows["per tile"]
    print(f"earlier / per tile: one worker gathers {g0[1] / g1[1]:.0f}x the bytes; every worker "
          f"decodes {b0[1] / b1[1]:.0f}x the bytes, in {b0[2] / max(b1[2], 1e-9):.0f}x the time, "
          f"and holds {b0[3] / b1[3]:.0f}x the memory")

if __name__ == "__main__":
    main()
