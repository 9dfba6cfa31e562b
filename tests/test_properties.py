"""Property-based tests (hypothesis) for the box/pad/scale math and the seed model's invariants."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from synanno_datagen.transforms.geometry import Box, crop_box, padding, scale_box
from synanno_datagen.transforms.seeds import SeedModel, variant_seed_slices

coord = st.integers(-1000, 1000)
size = st.integers(1, 64)
xyz = st.tuples(coord, coord, coord)
sizes = st.tuples(size, size, size)


@given(xyz, sizes, xyz, sizes)
def test_padding_plus_overlap_is_the_box(center, crop, offset, volume):
    box = crop_box(center, crop)
    bounds = Box(offset, tuple(o + v for o, v in zip(offset, volume)))
    assert box.size_xyz == crop
    pads = padding(box, bounds)
    inner = box.intersect(bounds)
    for axis, (before, after) in enumerate(pads):
        inside = inner.size_xyz[axis] if inner else 0
        if inner:
            assert before + inside + after == crop[axis]
            assert inner.start_xyz[axis] == box.start_xyz[axis] + before
        else:
            assert before + after >= 0 and max(before, after) <= crop[axis]


@given(xyz, sizes, st.tuples(*[st.integers(1, 4)] * 3))
def test_scaled_box_covers_the_same_space(center, crop, scale):
    box = crop_box(center, crop)
    scaled = scale_box(box, scale)
    assert scaled.size_xyz == tuple(c * f for c, f in zip(crop, scale))
    assert all(s == b * f for s, b, f in zip(scaled.start_xyz, box.start_xyz, scale))


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 15), min_size=1), st.integers(1, 5), st.integers(1, 6),
       st.integers(0, 2**32), st.integers(-2**63, 2**63 - 1))
def test_seed_model_invariants(foreground, max_seeds, variants, seed, instance_id):
    target = np.zeros((16, 4, 4), np.uint8)
    for z in foreground:
        target[z, 1, 1] = 1
    model = SeedModel(max_seed_slices=max_seeds)
    result = variant_seed_slices(target, run_seed=seed, instance_id=instance_id,
                                 n_variants=variants, model=model)
    assert len(result) == variants
    for slices in result:
        assert 1 <= len(slices) <= max_seeds
        assert set(slices) <= foreground and list(slices) == sorted(set(slices))
    from math import comb

    possible = sum(comb(len(foreground), c) for c in range(1, min(len(foreground), max_seeds) + 1))
    assert len(set(result)) == min(variants, possible)
    assert result == variant_seed_slices(target, run_seed=seed, instance_id=instance_id,
                                         n_variants=variants, model=model)


block_coord = st.integers(-20, 40)   # work blocks of several tiles (TILE_BLOCKS each), either side
plan_counts = st.dictionaries(
    st.tuples(st.tuples(block_coord, block_coord, st.integers(-2, 20)),
              st.sampled_from(["train", "val"])),
    st.integers(1, 9), min_size=1, max_size=80)


def _one_split_per_block(counts):
    """Block splits: a block is in one split (its first one here)."""
    split = {}
    for block, s in counts:
        split.setdefault(block, s)
    return {k: n for k, n in counts.items() if split[k[0]] == k[1]}


@settings(max_examples=150, deadline=None)
@given(plan_counts, st.integers(1, 40), st.sampled_from(["block", "instance"]))
def test_shard_groups_are_runs_of_blocks_in_order_of_at_most_the_shard_size(
        counts, shard_instances, split_by):
    from synanno_datagen.transforms.shards import block_order, plan_groups, tile_of

    if split_by == "block":
        counts = _one_split_per_block(counts)
    size, lane, per_block = 10, {}, {}
    for (block, split), n in counts.items():
        lane[block] = split if split_by == "block" else ""
        per_block[block] = per_block.get(block, 0) + n * size
    groups = plan_groups(counts, size, shard_instances * size, split_by)
    order = sorted(per_block, key=lambda b: (lane[b], block_order(b)))
    numbers = [groups[b] for b in order]
    assert set(groups) == set(per_block)
    assert numbers == sorted(numbers) and sorted(set(numbers)) == list(range(numbers[-1] + 1))
    members = {}
    for b in order:
        members.setdefault(groups[b], []).append(b)
    for g, blocks in members.items():
        assert len({lane[b] for b in blocks}) == 1   # groups of a split are its own
        assert len(blocks) == 1 or sum(per_block[b] for b in blocks) <= shard_instances * size
        after = members.get(g + 1)   # greedy inside a tile: the next block did not fit
        if after and tile_of(after[0]) == tile_of(blocks[-1]) and lane[after[0]] == lane[
                blocks[-1]]:
            assert sum(per_block[b] for b in blocks) + per_block[after[0]] > \
                shard_instances * size


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.tuples(st.tuples(*[st.integers(0, 15)] * 3),
                                 st.sampled_from(["train", "val"])),
                       st.integers(1, 9), min_size=1, max_size=60),
       st.integers(1, 40))
def test_a_volume_of_one_tile_is_packed_as_one_run_of_blocks_in_z_y_x_order(counts,
                                                                           shard_instances):
    """Up to TILE_BLOCKS blocks per axis, the groups are those of earlier versions: blocks in
    z, y, x order (per split), a group taking the next block while it fits."""
    from synanno_datagen.transforms.shards import plan_groups

    counts = _one_split_per_block(counts)
    expected, number = {}, 0
    for split in sorted({s for _, s in counts}):
        filled = 0
        for block in sorted((b for b, s in counts if s == split), key=lambda b: b[::-1]):
            n = counts[(block, split)]
            if filled and filled + n > shard_instances:
                number, filled = number + 1, 0
            expected[block], filled = number, filled + n
        number += 1
    assert plan_groups(counts, 10, shard_instances * 10, "block") == expected
