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
