"""plan_reads: few cutouts per block, never a chunk that no member needs (pure geometry)."""
import itertools
import random

from synanno_datagen.transforms.geometry import Box
from synanno_datagen.transforms.volumes import VolumeSpec, chunk_names, plan_reads

SPEC = VolumeSpec("file:///v", 0, (8, 8, 33), (10, 20, 0), (400, 400, 64), (64, 64, 16),
                  "uint64", "raw", "segmentation", 1)


def box(start, size=(64, 64, 16)):
    return Box(tuple(start), tuple(a + s for a, s in zip(start, size)))


def test_overlapping_crops_share_one_region_and_far_ones_do_not():
    boxes = [box((40, 50, 4)), box((60, 70, 6)), box((380, 390, 50))]
    regions, which = plan_reads(SPEC, boxes)
    assert which[0] == which[1] != which[2]
    assert regions[which[0]] == Box((40, 50, 4), (124, 134, 22))    # the union of both boxes
    assert regions[which[2]] == Box((380, 390, 50), (410, 420, 64))  # clipped to the bounds


def test_diagonal_neighbours_stay_apart_rather_than_read_unneeded_chunks():
    boxes = [box((10, 20, 0), (64, 64, 16)), box((74, 84, 0), (64, 64, 16))]
    regions, which = plan_reads(SPEC, boxes)
    assert which == [0, 1] and len(regions) == 2


def test_a_box_outside_the_volume_has_no_region():
    regions, which = plan_reads(SPEC, [box((-500, -500, 0)), box((40, 50, 4))])
    assert which == [None, 0] and len(regions) == 1


def test_random_boxes_are_covered_and_no_region_reads_a_needless_chunk():
    rng = random.Random(7)
    for _ in range(50):
        boxes = [box((rng.randrange(-40, 420), rng.randrange(-40, 420), rng.randrange(-8, 60)))
                 for _ in range(rng.randrange(1, 25))]
        regions, which = plan_reads(SPEC, boxes)
        needed = {n for b in boxes for n in chunk_names(SPEC, b)}
        read = [n for r in regions for n in chunk_names(SPEC, r)]
        assert set(read) == needed                   # no chunk that no box touches
        for b, r in zip(boxes, which):
            inner = b.intersect(SPEC.bounds)
            if inner is None:
                assert r is None
            else:
                assert inner.intersect(regions[r]) == inner   # the region holds the box
        assert len(regions) <= len(boxes)
        for a, c in itertools.combinations(regions, 2):
            assert a.intersect(c) is None or set(chunk_names(SPEC, a)) != set(chunk_names(SPEC, c))


def test_a_blocks_bytes_count_every_source_voxel_of_its_target_voxels():
    from synanno_datagen.transforms.volumes import block_bytes

    # 2x2x1 source (uint8) voxels and one uint64 label per target voxel
    assert block_bytes((64, 64, 16), (2, 2, 1), "uint64") == 64 * 64 * 16 * (4 + 8)
    assert block_bytes((10, 10, 10), (1, 1, 2), "uint32") == 1000 * (2 + 4)
