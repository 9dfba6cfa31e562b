"""Training loaders read a dataset the pipeline generated and give back exactly what it wrote."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synanno_datagen.reading import loaders
from tests.conftest import GOOD_IDS, rewrite_listed
from tests.test_pipeline import read_records, run_pipeline


def records_of(out, manifest, split):
    shards = {f["path"].split("/")[-1] for f in manifest["files"]["tfrecord"]
              if f["split"] == split}
    return {(r["instance_id"], r["variant"]): r for r in read_records(out) if r["shard"] in shards}


def check_pair(inputs, target, record):
    """input [2, z, y, x] = (source/255, seed), target [1, z, y, x], float32, as written."""
    inputs, target = np.asarray(inputs), np.asarray(target)
    shape = record["source"].shape
    assert inputs.dtype == target.dtype == np.float32
    assert inputs.shape == (2,) + shape and target.shape == (1,) + shape
    np.testing.assert_array_equal(inputs[0], record["source"].astype(np.float32) / 255)
    np.testing.assert_array_equal(inputs[1], record["seed_target"])
    np.testing.assert_array_equal(target[0], record["target"])
    assert set(np.unique(inputs[1])) <= {0.0, 1.0} and inputs[1].sum() > 0


@pytest.mark.parametrize("split", ["train", "val"])
def test_shard_dataset_yields_the_records_of_its_split(generated, torch, split):
    _, out, _, manifest = generated
    expected = records_of(out, manifest, split)
    dataset = loaders.ShardDataset(str(out), split, with_meta=True)
    got = []
    for inputs, target, meta in dataset:
        assert isinstance(inputs, torch.Tensor) and inputs.dtype == torch.float32
        check_pair(inputs, target, expected[(meta["instance_id"], meta["variant"])])
        got.append((meta["instance_id"], meta["variant"]))
    assert got == list(expected)      # shards in manifest order, records in a shard in order
    assert len(got) == len(expected) == len(dataset) == 3 * manifest["splits"][split]["records"]


def test_dataloader_workers_read_every_record_exactly_once(generated, torch):
    _, out, _, manifest = generated
    assert manifest["splits"]["train"]["shards"] >= 2    # so both workers have shards
    dataset = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    keys, shapes = [], set()
    for inputs, target, meta in loader:
        shapes.add((tuple(inputs.shape[1:]), tuple(target.shape[1:])))
        keys += zip(meta["instance_id"].tolist(), meta["variant"].tolist())
    assert sorted(keys) == sorted(records_of(out, manifest, "train"))
    assert len(keys) == len(set(keys))
    assert shapes == {((2, 4, 24, 24), (1, 4, 24, 24))}


def test_shard_order_is_a_seeded_permutation():
    shards = [f"s{i}" for i in range(7)]
    assert loaders.shard_order(shards, None) == shards
    orders = [loaders.shard_order(shards, 3, epoch) for epoch in range(4)]
    assert all(sorted(o) == shards for o in orders)
    assert orders[0] == loaders.shard_order(shards, 3, 0)     # same seed and epoch, same order
    assert len({tuple(o) for o in orders}) > 1                 # epochs differ


def test_input_target_is_source_over_255_and_the_masks_as_float32_bit_for_bit():
    """Every uint8 value divides as float32 (not float64 rounded to float32); the input's
    channels are (source / 255, seed), the target one channel; fresh contiguous arrays."""
    source = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    seed, target = (source % 2).astype(np.uint8), (source % 3 == 0).astype(np.uint8)
    inputs, out = loaders.input_target(source, seed, target)
    assert (inputs.dtype, inputs.shape, out.dtype, out.shape) == (
        np.float32, (2, 4, 8, 8), np.float32, (1, 4, 8, 8))
    expected = source.astype(np.float32) / np.float32(255)
    assert np.array_equal(inputs[0].view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(inputs[1], seed) and np.array_equal(out[0], target)
    assert inputs.flags.c_contiguous and inputs.flags.writeable and out.flags.c_contiguous


def test_no_two_seeds_epochs_purposes_or_readers_share_a_generator():
    """Found by review: numpy pads a seed list with zero words, so the shard order's [seed,
    epoch] was worker 0's buffer [seed, epoch, 0], and seed 3 + 2**32 at epoch 0 seed 3 at
    epoch 1 (one sample order)."""
    shards = [f"s{i}" for i in range(20)]
    assert loaders.shard_order(shards, 3 + 2**32, 0) != loaders.shard_order(shards, 3, 1)
    assert loaders.left_out_start(10**6, 1, 3 + 2**32, 0) != loaders.left_out_start(10**6, 1, 3, 1)
    keys = [(seed, epoch, purpose, reader) for seed in (0, 3, 3 + 2**32, 2**32, 2**63 - 1)
            for epoch in (0, 1, 2**32) for purpose in (loaders.SHARD_ORDER, loaders.LEFT_OUT,
                                                       loaders.BUFFER) for reader in (0, 1, 2**32)]
    keys += [(2**31, 0, 0, 0), (0, 2**31, 0, 0), (0, 0, 0, 2**31)]   # each number's 32 bits
    draws = {tuple(loaders.loader_rng(*key).integers(0, 2**63, 2)) for key in keys}
    assert len(draws) == len(keys)
    for seed, epoch in ((3, 0), (5, 7)):   # and each loader draws from its purpose's generator
        order = loaders.loader_rng(seed, epoch, loaders.SHARD_ORDER).permutation(len(shards))
        assert loaders.shard_order(shards, seed, epoch) == [shards[i] for i in order]
        start = loaders.loader_rng(seed, epoch, loaders.LEFT_OUT).integers(0, 10**6)
        assert loaders.left_out_start(10**6, 1, seed, epoch) == start


@pytest.mark.parametrize("total, world_size, workers", [
    (9, 1, 1), (9, 1, 2), (9, 2, 2), (10, 3, 4), (3, 2, 3), (0, 2, 2), (1000, 8, 5)])
def test_reader_ranges_share_a_stream_evenly_over_ranks_and_workers(total, world_size, workers):
    ranges = {(r, w): loaders.reader_range(total, r, world_size, w, workers)
              for r in range(world_size) for w in range(workers)}
    taken = sorted(i for lo, hi in ranges.values() for i in range(lo, hi))
    assert taken == list(range(total // world_size * world_size))   # disjoint; the rest left out
    for rank in range(world_size):
        sizes = [hi - lo for (r, _), (lo, hi) in ranges.items() if r == rank]
        assert sum(sizes) == total // world_size and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("total, world_size, workers", [(50, 4, 1), (50, 4, 3), (9, 2, 2),
                                                        (7, 8, 2), (12, 4, 2)])
def test_the_samples_ranks_leave_out_move_each_epoch_with_a_seed(total, world_size, workers):
    """Found by review: with shuffle_seed the same samples were left out every epoch on a split
    of one shard (the seed permutes shards only), though README promises other ones. The
    left-out samples are a run drawn by (seed, epoch); without a seed, the last ones."""
    left = total % world_size

    def left_out(seed, epoch):
        start = loaders.left_out_start(total, left, seed, epoch)
        taken = []
        for rank in range(world_size):
            for worker in range(workers):
                lo, hi = loaders.reader_range(total, rank, world_size, worker, workers)
                for a, b in loaders.stream_ranges(lo, hi, start, left):
                    taken += range(a, b)
        assert len(taken) == len(set(taken)) == total - left       # disjoint, as many as before
        return sorted(set(range(total)) - set(taken))

    assert left_out(None, 0) == left_out(None, 5) == list(range(total - left, total))
    seeded = [left_out(3, epoch) for epoch in range(8)]
    assert seeded[0] == left_out(3, 0)                             # same seed and epoch
    assert all(len(s) == left and (not s or s[-1] - s[0] == left - 1) for s in seeded)
    moved = len({tuple(s) for s in seeded})     # of 8 epochs, over 49 places when total is 50
    assert moved == 1 if left == 0 else moved >= 6 if total == 50 else True
    assert left in (0, total) or len({tuple(s) for s in seeded}) > 1   # epochs differ


def test_shard_slices_are_the_parts_of_shards_a_range_covers():
    counts = [3, 0, 4, 2]
    assert loaders.shard_slices(counts, 0, 9) == [(0, 0, 3), (2, 0, 4), (3, 0, 2)]
    assert loaders.shard_slices(counts, 2, 5) == [(0, 2, 1), (2, 0, 2)]
    assert loaders.shard_slices(counts, 8, 9) == [(3, 1, 1)]
    assert loaders.shard_slices(counts, 4, 4) == []


def _keys(samples):
    return [(m["instance_id"], m["variant"]) for *_, m in samples]


def _unbatched(loader):
    """(instance_id, variant) of each sample of a DataLoader's batches, in order."""
    return [k for *_, m in loader for k in zip(m["instance_id"].tolist(), m["variant"].tolist())]


def test_ranks_and_their_workers_share_an_epoch_without_overlap(generated, torch):
    """Distributed training: each rank takes an equal contiguous share of the (seeded) stream
    of samples, and its workers split that share; instance records are split between variants
    where a share ends."""
    _, out, _, manifest = generated
    expected = records_of(out, manifest, "train")
    assert len(expected) == 9      # 2 ranks x 4, one left out
    whole = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=3)
    whole.set_epoch(1)
    stream = _keys(whole)
    seen = []
    for rank in range(2):
        data = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=3,
                                    rank=rank, world_size=2)
        data.set_epoch(1)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
        keys = []
        for inputs, target, meta in loader:
            keys.append((meta["instance_id"], meta["variant"]))
            check_pair(inputs, target, expected[keys[-1]])
        assert len(keys) == len(data) == 4
        seen += keys
    assert len(set(seen)) == 8 and set(seen) < set(stream)
    start = stream.index(sorted(set(stream) - set(seen))[0])     # the one left out this epoch
    rest = stream[:start] + stream[start + 1:]
    assert sorted(seen[:4]) == sorted(rest[:4]) and sorted(seen[4:]) == sorted(rest[4:])

    with pytest.raises(ValueError, match="give both"):
        loaders.ShardDataset(str(out), "train", rank=1)
    with pytest.raises(ValueError, match="give both"):   # (each rank would read every sample)
        loaders.ShardDataset(str(out), "train", world_size=2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        loaders.ShardDataset(str(out), "train", rank=2, world_size=2)


def test_num_batches_counts_each_workers_last_partial_batch(generated, torch):
    """9 samples, batch 2, 3 workers of 3 samples each: 6 batches, where len(loader) says 5."""
    _, out, _, _ = generated
    data = loaders.ShardDataset(str(out), "train", with_meta=True)
    for workers, drop_last in ((3, False), (3, True), (2, False), (0, False)):
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=workers,
                                             drop_last=drop_last)
        batches = sum(1 for _ in loader)
        assert batches == data.num_batches(2, workers, drop_last), (workers, drop_last)
    assert data.num_batches(2, 3) == 6 != len(torch.utils.data.DataLoader(data, batch_size=2))


def test_set_epoch_reaches_persistent_workers(generated, torch):
    """Persistent workers keep their copy of the dataset between epochs; the epoch is shared
    memory, so each epoch is shuffled as a fresh worker would shuffle it."""
    _, out, _, _ = generated
    data = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=5,
                                shuffle_buffer=4)
    persistent = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2,
                                             persistent_workers=True)
    fresh = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    orders = []
    for epoch in range(3):
        data.set_epoch(epoch)
        orders.append(_keys(persistent))
        assert orders[-1] == _keys(fresh), epoch
    assert len({tuple(o) for o in orders}) == 3


@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_workers_started_without_fork_read_what_forked_ones_do(generated, torch, start):
    """DataLoader workers started by spawn (macOS' and Windows' default) or forkserver (Linux's
    from Python 3.14) get the datasets pickled, not forked: the same samples in the same order,
    and set_epoch still reaches persistent ones (the epoch's shared memory crosses the pickle)."""
    _, out, _, _ = generated
    data = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=5,
                                shuffle_buffer=4)
    started = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2,
                                          persistent_workers=True, multiprocessing_context=start)
    forked = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    orders = []
    for epoch in range(2):
        data.set_epoch(epoch)
        orders.append(_keys(started))
        assert orders[-1] == _keys(forked), epoch
    assert orders[0] != orders[1]
    items = loaders.NpyDataset(str(out), "val", with_meta=True)
    pairs = torch.utils.data.DataLoader(items, batch_size=None, num_workers=2,
                                        multiprocessing_context=start)
    assert [(m["instance_id"], m["variant"], x.sum().item(), y.sum().item())
            for x, y, m in pairs] == [(m["instance_id"], m["variant"], x.sum().item(),
                                       y.sum().item()) for x, y, m in items]


def test_workers_started_without_fork_are_sent_no_file_lists(generated, torch):
    """A whole-H01 manifest lists about 540,000 shards (80 MB pickled, 340 MB held): a worker
    started by spawn got all of them; it needs only its own split's shards, taken already."""
    from synanno_datagen import DatasetError

    out = generated[1]
    for data in (loaders.ShardDataset(str(out), "train"), loaders.NpyDataset(str(out), "val")):
        sent = pickle.dumps(data)
        assert not re.search(rb"index/(train|val)-|tfrecord/val-", sent), type(data).__name__
        copy = pickle.loads(sent)
        assert [*copy.dataset.manifest["files"]] == ["dead_letter"]
        assert copy.dataset.manifest_sha256 == data.dataset.manifest_sha256
        copy.dataset.check_unchanged("test")
        with pytest.raises(DatasetError, match=r"manifest.json: this copy of the dataset was "
                                               r"passed to a worker without its lists of "
                                               r"files; call open_dataset there$"):
            copy.dataset.files("tfrecord", "train")
        assert data.dataset.files("index")   # (the one made keeps them)
    assert [r[2]["instance_id"] for r in pickle.loads(pickle.dumps(
        loaders.ShardDataset(str(out), "train", with_meta=True)))] == [
        r[2]["instance_id"] for r in loaders.ShardDataset(str(out), "train", with_meta=True)]


def _ddp_rank(rank: int, world_size: int, out: str, init: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                            world_size=world_size)
    try:
        data = loaders.ShardDataset(out, "train", with_meta=True, shuffle_seed=3)
        data.set_epoch(1)
        loader = __import__("torch").utils.data.DataLoader(data, batch_size=2, num_workers=1)
        keys = _unbatched(loader)
        with open(f"{results}/{rank}.json", "w") as f:
            json.dump({"keys": keys, "len": len(data), "rank": data.rank,
                       "world_size": data.world_size}, f)
    finally:
        dist.destroy_process_group()


def test_under_torch_distributed_each_rank_reads_its_own_share(generated, torch, tmp_path):
    """Two real processes in a gloo process group: without rank arguments, each ShardDataset
    takes its rank's share from torch.distributed."""
    _, out, _, _ = generated
    whole = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=3)
    whole.set_epoch(1)
    stream = _keys(whole)
    torch.multiprocessing.spawn(_ddp_rank, args=(2, str(out), str(tmp_path / "init"),
                                                 str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert [(g["rank"], g["world_size"], g["len"]) for g in got] == [(0, 2, 4), (1, 2, 4)]
    start = loaders.left_out_start(len(stream), 1, 3, 1)   # the sample left out this epoch
    rest = stream[:start] + stream[start + 1:]
    for rank, g in enumerate(got):
        assert sorted(map(tuple, g["keys"])) == sorted(rest[4 * rank:4 * rank + 4])


def test_buffer_shuffle_is_a_seeded_permutation():
    items = list(range(20))
    first = list(loaders.buffer_shuffle(items, 5, np.random.default_rng(1)))
    assert sorted(first) == items and first != items
    assert first == list(loaders.buffer_shuffle(items, 5, np.random.default_rng(1)))
    assert first != list(loaders.buffer_shuffle(items, 5, np.random.default_rng(2)))
    assert sorted(loaders.buffer_shuffle(items[:3], 5, np.random.default_rng(1))) == items[:3]
    assert list(loaders.buffer_shuffle(items, 0, np.random.default_rng(1))) == items
    # a buffer holding the whole stream still shuffles it (its tail is drawn in a seeded
    # order), and every place in the buffer can come out first (found by mutation review)
    assert list(loaders.buffer_shuffle(range(10), 64, np.random.default_rng(1))) != \
        list(range(10))
    firsts = {next(iter(loaders.buffer_shuffle(range(100), 4, np.random.default_rng(seed))))
              for seed in range(200)}
    assert firsts == {0, 1, 2, 3}


def test_shuffle_buffer_mixes_records_reproducibly(generated, torch):
    _, out, _, manifest = generated
    expected = records_of(out, manifest, "train")
    dataset = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=1,
                                   shuffle_buffer=4)

    def epoch(n):
        dataset.set_epoch(n)
        keys = []
        for inputs, target, meta in dataset:
            keys.append((meta["instance_id"], meta["variant"]))
            check_pair(inputs, target, expected[keys[-1]])
        return keys

    first = epoch(0)
    assert sorted(first) == sorted(expected) and first != list(expected)
    assert epoch(0) == first and epoch(1) != first
    # without a buffer the seed still orders the shards, anew each epoch (found by mutation
    # review: reading them in the manifest's order passed)
    dataset = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=7)
    orders = {tuple(epoch(n)) for n in range(4)}
    assert len(orders) > 1 and all(sorted(o) == sorted(expected) for o in orders)
    with pytest.raises(ValueError, match="shuffle_buffer needs a shuffle_seed"):
        loaders.ShardDataset(str(out), "train", shuffle_buffer=4)
    with pytest.raises(ValueError, match=r"shuffle_seed -1: must be 0 to 2\*\*63 - 1"):
        loaders.ShardDataset(str(out), "train", shuffle_seed=-1)
    with pytest.raises(ValueError, match="shuffle_buffer -1: must be 0"):
        loaders.ShardDataset(str(out), "train", shuffle_seed=1, shuffle_buffer=-1)


def test_interleave_takes_an_item_of_k_iterables_in_turn():
    assert list(loaders.interleave([[1, 2, 3], [4], [5, 6]], 2)) == [1, 4, 2, 5, 3, 6]
    # an iterable that ends is replaced in its place; an empty one at once
    assert list(loaders.interleave([[1, 2], [], [3], [4, 5, 6]], 3)) == [1, 4, 3, 2, 5, 6]
    assert list(loaders.interleave([[1, 2], [], [3]], 1)) == [1, 2, 3]
    assert list(loaders.interleave([], 4)) == [] == list(loaders.interleave([[], []], 2))
    rng = np.random.default_rng(0)
    for _ in range(50):
        parts = [list(range(100 * i, 100 * i + int(rng.integers(0, 5)))) for i in range(6)]
        k = int(rng.integers(1, 8))
        out = list(loaders.interleave(parts, k))
        assert sorted(out) == [x for p in parts for x in p]
        assert all([x for x in out if x // 100 == i] == p for i, p in enumerate(parts))
        if k == 1:
            assert out == [x for p in parts for x in p]
    opened = []

    def part(i):
        opened.append(i)
        yield i

    taken = loaders.interleave((part(i) for i in range(5)), 2)
    assert next(taken) == 0 and opened == [0]   # (a shard is opened only at its turn)


def test_interleave_reads_shards_of_a_workers_part_at_once(generated, torch):
    """Shards are spatial: one after another, a batch (and a shuffle buffer) holds neighbouring
    synapses, an instance's variants together; interleaved, samples of K shards in turn."""
    out = generated[1]
    one = loaders.ShardDataset(str(out), "train", with_meta=True)
    keys = _keys(one)
    counts = [s["records"] * one.dataset.variants_per_record for s in one.shards]
    assert len(counts) == 2 and len(keys) == sum(counts) == 9
    per_shard = [keys[sum(counts[:i]):sum(counts[:i + 1])] for i in range(len(counts))]
    two = loaders.ShardDataset(str(out), "train", with_meta=True, interleave=2)
    assert _keys(two) == list(loaders.interleave(per_shard, 2)) != keys
    assert _keys(two)[:2] == [per_shard[0][0], per_shard[1][0]]
    assert _keys(loaders.ShardDataset(str(out), "train", with_meta=True, interleave=5)) \
        == _keys(two)
    # workers and ranks split the same stream: every sample once, whatever the interleave
    whole = _keys(loaders.ShardDataset(str(out), None, with_meta=True))
    for kwargs in ({}, {"shuffle_seed": 4, "shuffle_buffer": 3}):
        assert sorted(_unbatched(torch.utils.data.DataLoader(
            loaders.ShardDataset(str(out), None, with_meta=True, interleave=3, **kwargs),
            batch_size=2, num_workers=2))) == sorted(whole)
        ranks = [_keys(loaders.ShardDataset(str(out), None, with_meta=True, interleave=3,
                                            rank=r, world_size=2, **kwargs)) for r in (0, 1)]
        alone = [_keys(loaders.ShardDataset(str(out), None, with_meta=True, rank=r,
                                            world_size=2, **kwargs)) for r in (0, 1)]
        assert [sorted(k) for k in ranks] == [sorted(k) for k in alone]
    with pytest.raises(ValueError, match=r"interleave 0: must be 1 \(one shard at a time\) or "
                                         r"more"):
        loaders.ShardDataset(str(out), "train", interleave=0)


def test_npy_dataset_items_are_the_npy_files(generated, torch):
    _, out, _, manifest = generated
    records = records_of(out, manifest, "val")
    dataset = loaders.NpyDataset(str(out), "val", with_meta=True)
    assert len(dataset) == len(records) == 3 * manifest["splits"]["val"]["records"]
    for i in range(len(dataset)):
        inputs, target, meta = dataset[i]
        iid, v = meta["instance_id"], meta["variant"]
        files = {"source": np.load(out / f"npy/source/source_{iid}.npy", allow_pickle=False),
                 "target": np.load(out / f"npy/gt/target_{iid}.npy", allow_pickle=False),
                 "seed_target": np.load(out / f"npy/target/augmented_target_{iid}_{v}.npy",
                                        allow_pickle=False)}
        check_pair(inputs, target, files)
        check_pair(inputs, target, records[(iid, v)])
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False)))
    assert batch[0].shape == (3, 2, 4, 24, 24) and batch[1].shape == (3, 1, 4, 24, 24)
    # the items are a few numpy arrays, no Python object per item (a DataLoader's forked
    # workers share them rather than copying the pages that reference counts touch)
    held = vars(dataset.items)
    assert all((isinstance(v, np.ndarray) and v.dtype != object) or v == {}
               or k == "shape_zyx" for k, v in held.items()), {k: type(v) for k, v in held.items()}
    assert dataset.items.nbytes < 300 * len(dataset)


def test_npy_dataset_reads_an_instances_source_and_target_once_when_read_in_order(
        generated, torch, monkeypatch):
    """An instance's variants are neighbours in index order and share its source and target:
    read in order, each npy file is opened once (before, each item opened its three); in any
    order, every item is the same tensors."""
    import builtins
    from collections import Counter

    from synanno_datagen.reading import dataset as dataset_module

    _, out, _, _ = generated
    dataset = loaders.NpyDataset(str(out), "val")
    opened = Counter()

    def counting_open(path, *args, **kwargs):   # the real open of the real file, counted
        opened[os.path.relpath(path, out)] += 1
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "open", counting_open, raising=False)
    in_order = [dataset[i] for i in range(len(dataset))]
    files = {f for i in range(len(dataset)) for f in dataset.files(i).values()}
    assert sorted(opened) == sorted(os.path.relpath(f, out) for f in files)
    assert set(opened.values()) == {1}, opened
    assert sum(os.path.basename(f).startswith("source_") for f in opened) * 3 == len(dataset)
    opened.clear()
    order = np.random.default_rng(0).permutation(len(dataset)).tolist() + [0, 0]
    for i in order:
        inputs, target = dataset[i]
        assert torch.equal(inputs, in_order[i][0]) and torch.equal(target, in_order[i][1])
    # only the last item's instance is kept: a seed mask each item, its source and target
    # again after an item of another instance
    ids = dataset.items.instance_ids
    changes = sum(ids[a] != ids[b] for a, b in zip([len(dataset) - 1] + order, order))
    assert sum(opened.values()) == len(order) + 2 * changes and 0 < changes < len(order)


def test_an_index_line_that_is_not_one_of_an_npy_dataset_is_named(generated, tmp_path, torch):
    from synanno_datagen import DatasetError

    _, out, _, _ = generated
    copy, manifest = _damaged_copy(out, tmp_path)
    relative = next(f for f in manifest["files"]["index"] if f["split"] == "val")["path"]
    index = copy / relative
    written = index.read_text().splitlines()
    for change, says in ((lambda line: line.pop("npy"), "a line without the npy files"),
                         (lambda line: line["npy"].update(source=7), "naming the npy file 7"),
                         (lambda line: line.update(instance_id="12"), "whose instance_id is 12"),
                         # (found by review: a line listing a million made a million items)
                         (lambda line: line["npy"].update(
                             seed_target=line["npy"]["seed_target"] * 1000),
                          "a line listing 3000 npy seed masks, not the manifest's 3 variants'"),
                         (lambda line: line["npy"].update(
                             seed_target=line["npy"]["seed_target"][:1]),
                          "a line listing 1 npy seed masks, not the manifest's 3 variants'"),
                         (lambda line: line["npy"].update(target="../../secret.npy"),
                          "lists the path .*secret.npy.*not inside the dataset")):
        line = json.loads(written[-1])
        change(line)
        rewrite_listed(copy, relative, "\n".join(written[:-1] + [json.dumps(line)]) + "\n")
        with pytest.raises(DatasetError, match=rf"{index if 'path' not in says else ''}.*{says}"):
            loaders.NpyDataset(str(copy), "val")


@pytest.fixture(scope="module")
def both_layouts(generated, tmp_path_factory):
    """The shared dataset (instance layout) and the same run with --record-layout variant and
    --compression gzip: {layout: output dir}."""
    from tests.conftest import GENERATED_FLAGS

    data, out, _, _ = generated
    variant = tmp_path_factory.mktemp("layouts") / "variant"
    run_pipeline(data.argv(variant, *GENERATED_FLAGS, "--record-layout", "variant",
                           "--compression", "gzip"))
    return {"instance": out, "variant": variant}


READ_WITHOUT_BEAM = """
import sys
from synanno_datagen import NpyDataset, ShardDataset, open_dataset
for where in sys.argv[1:]:
    dataset = open_dataset(where)
    samples = sum(1 for _ in ShardDataset(where, "train")) + sum(1 for _ in NpyDataset(where))
    assert samples > 0 and dataset.manifest
print(sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam"))
print(sorted(m for m in sys.modules if m.split(".")[:2] in (["synanno_datagen", "transforms"],
                                                           ["synanno_datagen", "pipeline"])))
"""


def test_reading_a_local_dataset_loads_no_beam(both_layouts, torch):
    """A training job reading a local dataset (both layouts, a gzip one among them) never
    imports Beam: found by review, opening a dataset imported it for its file access and
    the first record for Beam's TFRecord CRC (2 to 3 s in every process that reads). Nor any
    module of the generator: the record contract lives in synanno_datagen.record_format."""
    done = subprocess.run([sys.executable, "-c", READ_WITHOUT_BEAM,
                           *(str(out) for out in both_layouts.values())],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "[]"]


def test_a_shard_dataset_whose_dataset_was_generated_again_is_an_error(generated, torch,
                                                                         tmp_path):
    """Found by review: a ShardDataset made before its directory was generated again (another
    --variants) read the new shards with the old counts: half an epoch, without an error."""
    from synanno_datagen import DatasetError
    from tests.conftest import GENERATED_FLAGS

    data, out, _, _ = generated
    copy, _ = _damaged_copy(out, tmp_path)
    dataset = loaders.ShardDataset(str(copy), "train", with_meta=True)
    before = len(list(dataset))
    assert before == len(dataset) > 0
    run_pipeline(data.argv(copy, *GENERATED_FLAGS, "--variants", "2", "--overwrite"))
    for workers in (0, 2):
        with pytest.raises(DatasetError, match=rf"{copy / 'manifest.json'}: the dataset was "
                                               r"written again since this ShardDataset was "
                                               r"made; make it again"):
            list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers))
    again = loaders.ShardDataset(str(copy), "train", with_meta=True)
    assert len(list(again)) == len(again) == before // 3 * 2
    # a manifest that cannot be read again is said so, not "written again" (found by review)
    (copy / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=rf"{copy / 'manifest.json'}: cannot read it again "
                                           r"\(FileNotFoundError"):
        list(again)


def test_a_file_gone_after_a_reader_was_made_is_told_as_gone_or_as_the_dataset_rewritten(
        generated, torch, tmp_path):
    """Found by review: a shard deleted after its ShardDataset was made said 'record 1 does not
    read (FileNotFoundError ...)', and an NpyDataset made before its directory was generated
    again blamed a missing npy file ('cannot read it ... copy the file again')."""
    from synanno_datagen import DatasetError
    from tests.conftest import GENERATED_FLAGS

    data, out, _, _ = generated
    copy, _ = _damaged_copy(out, tmp_path)
    shards = loaders.ShardDataset(str(copy), "train")
    started = iter(loaders.ShardDataset(str(copy), "train", shuffle_buffer=0))
    next(started)   # (an epoch under way when the directory is generated again)
    items = loaders.NpyDataset(str(copy), "train", with_meta=True)
    last = next(i for i in range(len(items)) if items[i][-1]["variant"] == 2)
    gone = sorted((copy / "tfrecord").glob("train-*"))[-1]
    gone.unlink()
    with pytest.raises(DatasetError, match=rf"^{gone}: it is missing, the manifest lists it; "):
        list(shards)
    run_pipeline(data.argv(copy, *GENERATED_FLAGS, "--variants", "2", "--overwrite"))
    with pytest.raises(DatasetError, match=rf"{copy / 'manifest.json'}: the dataset was "
                                           r"written again since this NpyDataset was made"):
        items[last]   # (its variant 2 seed mask is no more)
    with pytest.raises(DatasetError, match=r"written again since this ShardDataset was made"):
        list(started)
    assert loaders.NpyDataset(str(copy), "train")[0][0].shape[0] == 2


def test_an_npy_source_of_a_dataset_written_again_is_told_as_that(generated, torch, tmp_path):
    """Found by mutation review: only a seed mask's file was checked to be of a dataset written
    again; an NpyDataset reading a source array of another shape since blamed that file as
    damaged ('copy the file again')."""
    from synanno_datagen import DatasetError
    from tests.conftest import GENERATED_FLAGS

    data, out, _, _ = generated
    copy, _ = _damaged_copy(out, tmp_path)
    items = loaders.NpyDataset(str(copy), "train")
    run_pipeline(data.argv(copy, *GENERATED_FLAGS, "--crop-size", "10", "10", "4", "--overwrite"))
    with pytest.raises(DatasetError, match=rf"{copy / 'manifest.json'}: the dataset was "
                                           r"written again since this NpyDataset was made"):
        items[0]


def test_a_shard_that_is_there_but_does_not_read_is_not_told_missing(generated, torch,
                                                                      tmp_path):
    """Found by mutation review: any OSError opening a shard could be told as 'it is missing';
    only a file not found is."""
    from synanno_datagen import DatasetError

    copy, _ = _damaged_copy(generated[1], tmp_path)
    shards = loaders.ShardDataset(str(copy), "train")
    shard = sorted((copy / "tfrecord").glob("train-*"))[-1]
    shard.unlink()
    shard.mkdir()   # (an OSError, not FileNotFoundError)
    with pytest.raises(DatasetError, match=rf"^{shard}: record 1 does not read \(OSError: "
                                           r".* is not a regular file\)"):
        list(shards)


def test_the_manifest_lists_exactly_the_features_records_hold(both_layouts):
    """The manifest's ``features`` name every key of every record and no other, with the kind
    each is written as, in both layouts, read with the tfrecord package (found by review: a
    feature written but left out of the list, or listed and not written, passed every test)."""
    from tfrecord.reader import tfrecord_loader

    for layout, out in both_layouts.items():
        manifest = json.loads((out / "manifest.json").read_text())
        listed = {f["name"]: f["kind"] for f in manifest["features"]}
        kinds = {"bytes": (bytes,), "int64": (np.ndarray,)}
        records = 0
        for shard in sorted((out / "tfrecord").iterdir()):
            gz = "gzip" if shard.name.endswith(".gz") else None
            for record in tfrecord_loader(str(shard), None, None, compression_type=gz):
                assert set(record) == set(listed), (layout, shard.name)
                for name, value in record.items():
                    assert isinstance(value, kinds[listed[name]]), (layout, name)
                    assert listed[name] == "bytes" or value.dtype == np.int64, (layout, name)
                records += 1
        assert records == sum(f["records"] for f in manifest["files"]["tfrecord"]) > 0, layout


def _samples(dataset):
    return {(m["instance_id"], m["variant"]): (np.asarray(i), np.asarray(t))
            for i, t, m in dataset}


def test_both_record_layouts_give_the_same_samples(both_layouts, torch):
    assert next((both_layouts["variant"] / "tfrecord").iterdir()).name.endswith(".tfrecord.gz")
    for split in ("train", "val"):
        got = {layout: _samples(loaders.ShardDataset(str(out), split, with_meta=True))
               for layout, out in both_layouts.items()}
        assert sorted(got["instance"]) == sorted(got["variant"]) and got["instance"]
        for key, (inputs, target) in got["instance"].items():
            np.testing.assert_array_equal(inputs, got["variant"][key][0])
            np.testing.assert_array_equal(target, got["variant"][key][1])


def test_each_splits_records_are_its_shards_records_in_both_layouts(both_layouts, torch):
    """A split's ``records`` in the manifest are its TFRecord shards' records: its instances in
    the instance layout, its instances x variants in the variant layout, and ShardDataset's
    ``len`` is the samples it gives (found by a mutation review: records summed from the index
    files, the instances, passed every test, ShardDataset short by the variant count)."""
    for layout, out in both_layouts.items():
        manifest = json.loads((out / "manifest.json").read_text())
        per_instance = manifest["config"]["variants"] if layout == "variant" else 1
        assert per_instance == 3 or layout == "instance"
        for split, facts in manifest["splits"].items():
            shards = [f for f in manifest["files"]["tfrecord"] if f["split"] == split]
            assert facts["records"] == sum(f["records"] for f in shards) \
                == facts["instances"] * per_instance > 0, (layout, split)
            dataset = loaders.ShardDataset(str(out), split, with_meta=True)
            assert len(dataset) == len(list(dataset)) \
                == facts["instances"] * manifest["config"]["variants"], (layout, split)


def test_loaders_read_every_run_of_an_incremental_dataset(small_data, tmp_path, torch):
    root = tmp_path / "root"
    first = None
    for extra in (["--num-instances", "3"], []):
        run_pipeline(small_data.argv(root, "--incremental", "--variants", "2", *extra))
        first = first or loaders.ShardDataset(str(root), None, with_meta=True)
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["00001", "00002"]
    # made before the second night, it still reads the first night's dataset (runs are never
    # rewritten): a night is no "written again"
    assert sorted((m["instance_id"], m["variant"]) for *_, m in first) == sorted(
        (r["instance_id"], r["variant"]) for r in read_records(root / "runs" / "00001"))
    by_run = {}  # (instance id, variant) -> (run, record)
    for run in ("00001", "00002"):
        for r in read_records(root / "runs" / run):
            by_run[(r["instance_id"], r["variant"])] = (run, r)
    assert sorted({iid for iid, _ in by_run}) == GOOD_IDS
    shards = [(m["instance_id"], m["variant"]) for *_, m in
              loaders.ShardDataset(str(root), "train", with_meta=True)]
    assert sorted(shards) == sorted(by_run)
    npy = loaders.NpyDataset(str(root / "runs" / "00002"), "train", with_meta=True)
    assert len(npy) == len(by_run)
    for i in range(len(npy)):
        inputs, target, meta = npy[i]
        run, record = by_run[(meta["instance_id"], meta["variant"])]
        assert npy.files(i)["source"].startswith(str(root / "runs" / run / "npy"))
        check_pair(inputs, target, record)


def test_unknown_split_and_missing_manifest_are_clear_errors(generated, tmp_path):
    from synanno_datagen import DatasetError, open_dataset

    _, out, _, _ = generated
    with pytest.raises(DatasetError, match=r"split 'test' is not in this dataset \(it has train, val"):
        open_dataset(str(out)).files("tfrecord", "test")
    with pytest.raises(DatasetError, match="not a dataset directory"):
        open_dataset(str(tmp_path))


def test_no_split_reads_every_split_in_every_loader(generated, torch):
    """Found by review: NpyDataset and tf_dataset took split None for every split, while
    ShardDataset raised a bare KeyError."""
    _, out, _, _ = generated
    every = _keys(loaders.ShardDataset(str(out), None, with_meta=True))
    by_split = [k for split in ("train", "val")
                for k in _keys(loaders.ShardDataset(str(out), split, with_meta=True))]
    assert every == by_split and len(every) == 15
    assert len(loaders.ShardDataset(str(out), None)) == 15
    assert sorted(_keys(loaders.NpyDataset(str(out), None, with_meta=True))) == sorted(every)


@pytest.mark.parametrize("kwargs, message", [
    ({"shuffle_seed": 0.5}, "shuffle_seed 0.5: must be a whole number"),
    ({"shuffle_seed": 2.0}, "shuffle_seed 2.0: must be a whole number"),
    ({"shuffle_seed": "3"}, "shuffle_seed '3': must be a whole number"),
    ({"shuffle_seed": 1, "shuffle_buffer": 4.5}, "shuffle_buffer 4.5: must be a whole number"),
    ({"rank": 0, "world_size": 2.0}, "world_size 2.0: must be a whole number"),
    ({"rank": 0.0, "world_size": 2}, "rank 0.0: must be a whole number"),
    ({"shuffle_seed": True}, "shuffle_seed True: must be a whole number"),
    ({"interleave": 2.0}, "interleave 2.0: must be a whole number"),
])
def test_arguments_that_are_not_whole_numbers_are_refused_when_the_dataset_is_made(
        generated, torch, kwargs, message):
    """Found by review: shuffle_seed=0.5 was taken and failed at the first batch, in a worker,
    in numpy; world_size=2.0 failed in len(); set_epoch(1.7) set epoch 1."""
    with pytest.raises(ValueError, match=re.escape(message)):
        loaders.ShardDataset(str(generated[1]), "train", **kwargs)
    data = loaders.ShardDataset(str(generated[1]), "train", shuffle_seed=np.int64(3),
                                rank=np.int32(0), world_size=1)
    assert (data.shuffle_seed, data.rank, data.world_size) == (3, 0, 1)   # numpy ints are fine
    with pytest.raises(ValueError, match=re.escape("epoch 1.7: must be a whole number")):
        data.set_epoch(1.7)
    data.set_epoch(np.int64(2))
    assert data.epoch == 2


def test_a_negative_epoch_is_refused_when_set(generated, torch):
    """Found by review: set_epoch(-1) was taken, then failed in numpy when iterated with a
    shuffle_seed (and silently did nothing without one)."""
    data = loaders.ShardDataset(str(generated[1]), "train", shuffle_seed=3)
    with pytest.raises(ValueError, match="epoch -1: must be 0 or more"):
        data.set_epoch(-1)
    assert data.epoch == 0


def test_module_imports_without_torch_and_names_the_extra_when_used(generated):
    _, out, _, _ = generated
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
        "from synanno_datagen.reading import loaders\n"
        # README's import line (found by review: it raised at the import without torch)
        "from synanno_datagen import open_dataset, ShardDataset, NpyDataset, tf_dataset\n"
        "import pickle\n"   # one stand-in class per name (found by review: one per lookup)
        "assert pickle.loads(pickle.dumps(ShardDataset)) is loaders.ShardDataset\n"
        f"assert open_dataset({str(out)!r}).manifest['splits']\n"
        f"for use in (lambda: ShardDataset({str(out)!r}), lambda: NpyDataset({str(out)!r}),\n"
        "            lambda: loaders.tf_dataset('x', 'train')):\n"
        "    try:\n"
        "        use()\n"
        "    except ImportError as e:\n"
        "        print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    advice = ("this loader needs {}, which is an optional extra: pip install "
              "'synanno-datagen[{}]' (in a clone of synanno-datagen: pip install -e '.[{}]')")
    assert result.stdout.splitlines() == [advice.format("PyTorch", "torch", "torch")] * 2 + [
        advice.format("TensorFlow", "tf", "tf")]


TF_CHECK = """
import json, sys
import numpy as np
from synanno_datagen.record_format import example_pb2
ours = example_pb2().Example()               # our messages first, TensorFlow after them
ours.features.feature["a"].int64_list.value.extend([1, -2])
import tensorflow as tf
theirs = tf.train.Example()
theirs.features.feature["a"].int64_list.value.extend([1, -2])
assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
from synanno_datagen.reading import loaders
result = {}
for out, expected_file in zip(sys.argv[1::2], sys.argv[2::2]):
    expected = np.load(expected_file)
    got = []
    for inputs, target, meta in loaders.tf_dataset(out, "train", with_meta=True):
        key = f"{int(meta['instance_id'])}_{int(meta['variant'])}"
        np.testing.assert_array_equal(inputs.numpy(), expected["input_" + key])
        np.testing.assert_array_equal(target.numpy(), expected["target_" + key])
        got.append(key)
    for inputs, target, meta in loaders.tf_dataset(out, "train", with_meta=True,
                                                   channels_last=True):
        key = f"{int(meta['instance_id'])}_{int(meta['variant'])}"
        np.testing.assert_array_equal(inputs.numpy(), np.moveaxis(expected["input_" + key], 0, -1))
        np.testing.assert_array_equal(target.numpy(),
                                      np.moveaxis(expected["target_" + key], 0, -1))
    result[out] = {"keys": got, "channels_last": [list(inputs.shape), list(target.shape)],
                   "dtype": inputs.dtype.name,
                   "cardinality": int(loaders.tf_dataset(out, "train").cardinality())}
print(json.dumps(result))
"""


def _require_tf():
    """TensorFlow is an extra: skipped without it, a failure with SYNANNO_REQUIRE_TF=1."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        if os.environ.get("SYNANNO_REQUIRE_TF") == "1":
            pytest.fail("SYNANNO_REQUIRE_TF=1 but TensorFlow is not installed")
        pytest.skip("the tf extra is not installed")


SEED_MASKS_CHECK = """
import numpy as np
import tensorflow as tf
from synanno_datagen.reading.loaders import seed_masks
from synanno_datagen.record_format import seed_mask
target = np.zeros((4, 2, 3), np.uint8)
target[0] = 1
target[2, 1] = 1
target[3, 0, 0] = 1
slices = [[2], [0, 3], [0, 2, 3], [3]]
got = seed_masks(tf, tf.constant(target), tf.ragged.constant(slices, dtype=tf.int64)).numpy()
np.testing.assert_array_equal(got, np.stack([seed_mask(target, s) for s in slices]))
print("same")
"""


def test_tf_seed_masks_of_variants_with_fewer_slices_are_the_seed_mask():
    """An instance record's variants with fewer seed slices than others, on a target with
    foreground at z = 0, give exactly seed_mask's masks (found by mutation review: padding the
    ragged slices with 0 instead of 'no slice' added z = 0 to such variants, and the test data,
    with no foreground at z = 0, could not tell)."""
    _require_tf()
    done = subprocess.run([sys.executable, "-c", SEED_MASKS_CHECK], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.split()[-1] == "same", done.stderr[-3000:]


def _tf_check(layouts, tmp_path, expected_from=None):
    """TF_CHECK run over the datasets ``layouts`` ({layout: dir}) in a process of its own, each
    expected to give ShardDataset's train samples of ``expected_from[layout]`` (default: of
    itself): (its JSON result, {dir: the expected samples' keys in order})."""
    argv, keys = [], {}
    for layout, out in layouts.items():
        source = (expected_from or layouts)[layout]
        expected = _samples(loaders.ShardDataset(str(source), "train", with_meta=True))
        arrays = {}
        for (iid, v), (inputs, target) in expected.items():
            arrays[f"input_{iid}_{v}"], arrays[f"target_{iid}_{v}"] = inputs, target
        np.savez(tmp_path / f"{layout}.npz", **arrays)
        argv += [str(out), str(tmp_path / f"{layout}.npz")]
        keys[str(out)] = [f"{iid}_{v}" for iid, v in expected]
    done = subprocess.run([sys.executable, "-c", TF_CHECK, *argv], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), keys


def test_tf_dataset_gives_the_samples_of_the_torch_loader(both_layouts, torch, tmp_path):
    """Both layouts (one gzip-framed), in a process of its own as a TensorFlow training script
    would run, our Example messages loaded before TensorFlow, channels first and last."""
    _require_tf()
    result, expected_keys = _tf_check(both_layouts, tmp_path)
    for out, keys in expected_keys.items():
        assert result[out]["keys"] == keys and keys                  # same samples, same order
        assert result[out]["channels_last"] == [[4, 24, 24, 2], [4, 24, 24, 1]]
        assert result[out]["dtype"] == "float32"
        # found by review: unknown (-2), so Keras ended epoch 1 warning "ran out of data"
        assert result[out]["cardinality"] == len(keys)


TF_SHUFFLE_CHECK = """
import json, sys
from synanno_datagen.reading import loaders
import tensorflow as tf
def keys(d):
    return [(int(m["instance_id"]), int(m["variant"])) for _, _, m in d]
plain = keys(loaders.tf_dataset(sys.argv[1], None, with_meta=True))
result = {"plain": plain, "seeds": []}
for seed in range(4):
    for reads in (None, 2):
        data = loaders.tf_dataset(sys.argv[1], None, with_meta=True, shuffle_seed=seed,
                                  num_parallel_reads=reads)
        again = loaders.tf_dataset(sys.argv[1], None, with_meta=True, shuffle_seed=seed,
                                   num_parallel_reads=reads)
        result["seeds"].append([keys(data), keys(data), keys(again), int(data.cardinality())])
try:
    loaders.tf_dataset(sys.argv[1], None, shuffle_seed=-1)
except ValueError as e:
    result["refused"] = str(e)
print(json.dumps(result))
"""


def test_tf_dataset_reads_its_shards_in_an_order_drawn_by_a_seed_each_epoch(generated):
    """Shards are spatial and tf_dataset read them in the manifest's order (ShardDataset had
    shuffle_seed, tf_dataset nothing but a sample buffer): with shuffle_seed the shards come in
    an order drawn anew each epoch, the same orders for the same seed, every sample once."""
    _require_tf()
    done = subprocess.run([sys.executable, "-c", TF_SHUFFLE_CHECK, str(generated[1])],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    plain = [tuple(k) for k in result["plain"]]
    assert len(plain) == 15
    orders, anew = set(), []
    for first, second, again, cardinality in result["seeds"]:
        first, second = [tuple(k) for k in first], [tuple(k) for k in second]
        assert sorted(first) == sorted(second) == sorted(plain) and cardinality == 15
        assert [tuple(k) for k in again] == first   # the same seed: the same orders
        orders |= {tuple(first), tuple(second)}
        anew.append(first != second)
    assert any(anew) and len(orders) >= 3   # (4 shards: 24 orders)
    assert result["refused"] == "shuffle_seed -1: must be 0 to 2**63 - 1"   # as ShardDataset's


def _with_records(out, copy, change):
    """A copy of dataset ``out`` at ``copy`` whose every record is ``change(fields)``, fields
    {name: (value, the tfrecord package's kind)} as read, written by the tfrecord package
    (valid CRCs), and the manifest listing the shards' new sizes: the copy's manifest."""
    import gzip
    import hashlib
    import shutil

    from tfrecord.reader import tfrecord_loader
    from tfrecord.writer import TFRecordWriter

    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    kinds = {f["name"]: {"bytes": "byte", "int64": "int"}[f["kind"]] for f in manifest["features"]}
    for entry in manifest["files"]["tfrecord"]:
        path = copy / entry["path"]
        gz = "gzip" if path.name.endswith(".gz") else None
        records = list(tfrecord_loader(str(path), None, None, compression_type=gz))
        writer = TFRecordWriter(str(path) + ".plain")
        for record in records:
            writer.write(change({name: (value, kinds[name]) for name, value in record.items()}))
        writer.close()
        data = Path(str(path) + ".plain").read_bytes()
        os.remove(str(path) + ".plain")
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _with_newer_features(out, copy):
    """A copy of dataset ``out`` at ``copy`` as a newer writer might leave it: every record with
    two features this version does not write (``resolution_nm``, floats; ``note``, bytes),
    written by the tfrecord package, and the manifest listing them and the shards' new sizes."""
    manifest = _with_records(out, copy, lambda fields: {
        **fields, "resolution_nm": ([8.0, 8.0, 33.5], "float"), "note": (b"newer", "byte")})
    manifest["features"] += [
        {"name": "resolution_nm", "kind": "float", "dtype": "float32", "shape": [3], "axes": "xyz",
         "description": "a newer writer's"},
        {"name": "note", "kind": "bytes", "dtype": "bytes", "shape": [], "axes": "",
         "description": "a newer writer's"}]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _ints(values):
    return (list(values), "int")


# Records with valid CRCs that are no record of their dataset (4 x 24 x 24 arrays, 3 variants):
# (layout, change, what ShardDataset's error says, what tf_dataset's says). Found by review:
# counts adding up to fewer slices gave a variant all of them, and tf_dataset grew to 4.8 GB and
# crashed on counts of 10**9; a slice -1 was the torch loader's last slice and no slice to
# TensorFlow; arrays of another shape of as many voxels came out in that shape, or scrambled.
NOT_THE_DATASETS = [
    ("instance", lambda f: {**f, "seed_slice_counts": _ints([10**9, 1, 1])},
     r"seed_slice_counts \[1000000000, 1, 1\] are not 3 variants' counts of the \d+ seed",
     "seed_slice_counts are not 3 variants' counts"),
    ("instance", lambda f: {**f, "seed_slice_counts": _ints([0, 1, len(f["seed_slices"][0]) - 1])},
     r"seed_slice_counts \[0, 1, \d+\] are not 3 variants' counts",
     "seed_slice_counts are not 3 variants' counts"),
    ("instance", lambda f: {**f, "seed_slice_counts": _ints([len(f["seed_slices"][0])])},
     r"seed_slice_counts \[\d+\] are not 3 variants' counts",
     "seed_slice_counts are not 3 variants' counts"),
    ("instance", lambda f: {**f, "seed_slices": _ints([-1] + list(f["seed_slices"][0][1:]))},
     r"a seed slice outside the crop's 4 slices \(\[-1", "seed slice is outside the crop's 4"),
    ("instance", lambda f: {**f, "shape": _ints([8, 12, 24])},
     r"its source has shape \[8, 12, 24\], the manifest's arrays \[4, 24, 24\]",
     r"shape is not the manifest's arrays \[4, 24, 24\]"),
    ("variant", lambda f: {**f, "variant": _ints([3])},
     "variant 3 is not one of the manifest's 3", "variant is not one of the manifest's 3"),
    ("variant", lambda f: {**f, "seed_slices": _ints([4])},
     "a seed slice outside the crop's 4 slices", "seed slice is outside the crop's 4"),
]

TF_READ_ALL = """
import sys
from synanno_datagen.reading import loaders
try:
    for _ in loaders.tf_dataset(sys.argv[1], "train"):
        pass
except Exception as e:
    print(type(e).__name__, str(e).splitlines()[0])
"""


@pytest.mark.parametrize("case", range(len(NOT_THE_DATASETS)))
def test_a_record_that_is_not_one_of_the_datasets_is_an_error(both_layouts, torch, tmp_path,
                                                               case):
    """A record read with a valid CRC must also be one of the dataset's: arrays of the
    manifest's shape, each variant's seed slices in the crop, as many counts as variants, each
    at least one, adding up to the slices. ShardDataset names the shard and the record;
    tf_dataset raises TensorFlow's InvalidArgumentError saying what is wrong."""
    from synanno_datagen import DatasetError

    layout, change, says, tf_says = NOT_THE_DATASETS[case]
    copy = tmp_path / "copy"
    manifest = _with_records(both_layouts[layout], copy, change)
    first = next(f for f in manifest["files"]["tfrecord"] if f["split"] == "train")
    with pytest.raises(DatasetError, match=rf"^{copy / first['path']}: record 1 does not read "
                                           rf"\(ValueError: {says}"):
        list(loaders.ShardDataset(str(copy), "train"))
    _require_tf()
    done = subprocess.run([sys.executable, "-c", TF_READ_ALL, str(copy)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.match(rf"InvalidArgumentError .*{tf_says}", done.stdout.replace("\\'", "'")), \
        done.stdout


@pytest.mark.parametrize("layout, dropped", [("instance", "seed_slice_counts"),
                                             ("variant", "seed_target")])
def test_a_manifest_listing_no_feature_a_sample_needs_is_one_error(layout, dropped):
    """tf_dataset's parse spec is made of the features a sample needs: a manifest that lists
    none of one (changed by hand, or another tool's) is one DatasetError naming it, not a
    TensorFlow parse error at the first sample (checked before TensorFlow is asked)."""
    from synanno_datagen import DatasetError
    from synanno_datagen.record_format import features

    listed = [f for f in features((), layout) if f["name"] != dropped]
    manifest = {"records": {"layout": layout, "compression": "none"}, "features": listed}
    with pytest.raises(DatasetError, match=rf"^/d/manifest.json: its features list no "
                                           rf"{dropped}, which a sample is made of;"):
        loaders.feature_spec("/d/manifest.json", manifest, None)


def test_features_this_version_does_not_know_change_no_sample(both_layouts, torch, tmp_path):
    """A dataset whose records hold features this version does not write (a newer writer's,
    listed in its manifest, float and bytes among them) gives the same samples through
    ShardDataset and tf_dataset, and the decoder returns the new values as they are (found by
    review: tf_dataset parsed every listed feature as bytes or int64 and failed on a float one;
    the decoder read a float feature as an empty int list)."""
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.reading.records import read_records

    newer_layouts = {}
    for layout, out in both_layouts.items():
        newer = _with_newer_features(out, tmp_path / f"newer-{layout}")
        dataset = open_dataset(str(newer))
        record = next(read_records(dataset, dataset.files("tfrecord", "train")[0]))
        assert record["resolution_nm"] == [8.0, 8.0, 33.5] and record["note"] == [b"newer"]
        expected = _samples(loaders.ShardDataset(str(out), "train", with_meta=True))
        got = _samples(loaders.ShardDataset(str(newer), "train", with_meta=True))
        assert sorted(got) == sorted(expected) and got
        for key, (inputs, target) in expected.items():
            np.testing.assert_array_equal(got[key][0], inputs)
            np.testing.assert_array_equal(got[key][1], target)
        newer_layouts[layout] = newer
    _require_tf()
    result, expected_keys = _tf_check(newer_layouts, tmp_path, expected_from=both_layouts)
    assert {out: r["keys"] for out, r in result.items()} == expected_keys
    assert all(expected_keys.values())


def test_inspect_and_preview_read_both_layouts_alike(both_layouts, tmp_path):
    """The same seed shows the same records, so the two layouts give the same montage, and
    inspect the same facts but for the bytes and the layout."""
    from synanno_datagen.cli import main

    from synanno_datagen.reading.inspection import inspect_dataset

    pngs = {}
    for layout, out in both_layouts.items():
        assert main(["preview", str(out), "--n", "3", "--seed", "2",
                     "--out", str(tmp_path / f"{layout}.png")]) == 0
        pngs[layout] = (tmp_path / f"{layout}.png").read_bytes()
    assert pngs["instance"] == pngs["variant"]
    facts = {layout: inspect_dataset(str(out)) for layout, out in both_layouts.items()}
    assert facts["instance"]["index"] == facts["variant"]["index"]       # histograms, checks
    assert facts["instance"]["counts"] == facts["variant"]["counts"]
    assert facts["instance"]["problems"] == facts["variant"]["problems"] == []


def _damaged_copy(out, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def _with_a_flipped_val_byte(out, tmp_path):
    """A copy of the dataset whose first val shard has its middle byte flipped (same size):
    (copy, manifest, that shard's path)."""
    copy, manifest = _damaged_copy(out, tmp_path)
    shard = next(f for f in manifest["files"]["tfrecord"] if f["split"] == "val")
    path = copy / shard["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return copy, manifest, path


READ_EVERYTHING = """
import sys
from synanno_datagen import DatasetError, open_dataset
try:
    dataset = open_dataset(sys.argv[1])
    dataset.index(); dataset.dead_letters()
    items = dataset.npy_items("val")
    for k in range(len(items.sizes)):
        dataset.npy_array(items, k)
    print("read")
except DatasetError as e:
    print(e)
"""


@pytest.mark.parametrize("which, damage", [
    ("manifest", "fifo"), ("index", "fifo"), ("index", "zeros"), ("index", "grown"),
    ("dead_letter", "zeros"), ("dead_letter", "grown"), ("npy", "fifo")])
def test_a_special_file_or_one_grown_past_its_listing_is_refused(generated, tmp_path, which,
                                                                 damage):
    """Found by review: a FIFO in place of the manifest, an index shard or an npy file made a
    reader wait for a writer for good; a link to /dev/zero, or an index shard grown by one long
    line, was read into memory to its end (without end: gigabytes). A local file must be a
    regular one, and a JSON-lines file is read no further than the manifest lists. (Read in a
    process of its own, its memory capped, as the unfixed reader hangs or grows.)"""
    import resource

    copy, manifest = _damaged_copy(generated[1], tmp_path)
    if which == "npy":
        val = next(f for f in manifest["files"]["index"] if f["split"] == "val")
        line = json.loads((copy / val["path"]).read_text().splitlines()[0])
        path = copy / line["npy"]["source"]
    else:
        listing = {"manifest": {"path": "manifest.json"},
                   "index": next(f for f in manifest["files"]["index"] if f["split"] == "val"),
                   "dead_letter": manifest["files"]["dead_letter"]}[which]
        path = copy / listing["path"]
    if damage == "grown":
        with open(path, "a") as f:
            f.write('{"reason": "' + "x" * 10**7 + '"}\n')
    else:
        path.unlink()
        os.mkfifo(path) if damage == "fifo" else path.symlink_to("/dev/zero")
    done = subprocess.run(
        [sys.executable, "-c", READ_EVERYTHING, str(copy)], capture_output=True, text=True,
        timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2**31, 2**31)))
    why = (f"ValueError: more bytes than the manifest lists \\({listing.get('bytes')}\\)"
           if damage == "grown" else f"OSError: {re.escape(str(path))} is not a regular file")
    where = "cannot read the manifest" if which == "manifest" else "cannot read it"
    assert re.fullmatch(rf"{re.escape(str(copy if which == 'manifest' else path))}: {where} "
                        rf"\({why}\)(; copy the file again, or generate the dataset again)?\n",
                        done.stdout), (done.stdout, done.stderr[-2000:])


def _split_records(manifest, change):
    manifest["splits"]["train"]["records"] += change


# A manifest changed by hand or damaged: (change, what the error says). Found by review: a
# split's records of -12, a negative shard count, variants of -3 or an unknown layout gave
# quietly short epochs (0 samples, or 10 of 24); the others were KeyError or TypeError
# tracebacks in preview, or a message multiplying the text "2".
CHANGED_MANIFESTS = [
    (lambda m: m["splits"]["train"].update(records=-12),
     "splits is not an object of splits, each with its records"),
    (lambda m: m.pop("splits"), "splits is not an object of splits"),
    (lambda m: _split_records(m, 1), r"splits.train.records \d+ is not the \d+ records of its "
                                     "shards"),
    (lambda m: m["config"].update(variants=-3), "config.variants -3 is not a whole number from 1"),
    (lambda m: m["config"].update(variants="2"), "config.variants '2' is not a whole number"),
    (lambda m: m["config"].update(formats=["tfrecord", "zarr"]),
     r"config.formats \['tfrecord', 'zarr'\] is not a list of tfrecord, npy"),
    (lambda m: m["records"].update(layout="bogus"),
     "records.layout 'bogus' is not one of instance, variant"),
    (lambda m: m["records"].update(compression="zstd"),
     "records.compression 'zstd' is not one of none, gzip"),
    (lambda m: m.update(records="instance"), "records 'instance' is not an object"),
    (lambda m: m["files"]["tfrecord"][0].update(records=-5),
     r"files.tfrecord\[0\]: its records or bytes are not whole numbers"),
    (lambda m: m["files"]["index"][0].update(bytes="1049270"),
     r"files.index\[0\]: its records or bytes are not whole numbers"),
    (lambda m: m["files"].update(tfrecord="train-00000-of-00001.tfrecord"),
     "files.tfrecord is not a list"),
    (lambda m: m["files"].update(tfrecord=[1, 2]),
     r"files.tfrecord\[0\] is not a file entry with a path"),
    (lambda m: m["files"]["index"][1].update(path=["index", "x.jsonl"]),
     r"files.index\[1\] is not a file entry with a path"),
    (lambda m: m["files"]["tfrecord"][0].pop("split"),
     r"files.tfrecord\[0\].split None is not one of the splits"),
    (lambda m: m["files"]["tfrecord"][0].update(num_shards=0),
     r"files.tfrecord\[0\]: its shard and num_shards are not whole numbers"),
    (lambda m: m["files"].pop("dead_letter"), "files.dead_letter is not a file entry with a path"),
]


@pytest.mark.parametrize("case", range(len(CHANGED_MANIFESTS)))
def test_a_manifest_whose_fields_are_not_what_this_tool_writes_is_one_error(generated, torch,
                                                                            tmp_path, capsys,
                                                                            case):
    """Every field a reader takes from the manifest is checked as the dataset is opened: one
    DatasetError naming the manifest and the field, from every loader, and one line from
    preview and inspect (exit 2)."""
    import shutil

    from synanno_datagen import DatasetError
    from synanno_datagen.cli import main
    from tests.conftest import assert_usage_error

    change, says = CHANGED_MANIFESTS[case]
    copy = tmp_path / "copy"
    shutil.copytree(generated[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    expected = rf"^{copy / 'manifest.json'}: {says}.*; copy the file again, or generate"
    for reader in (loaders.ShardDataset, loaders.NpyDataset):
        with pytest.raises(DatasetError, match=expected):
            reader(str(copy), "train")
    for command in ("preview", "inspect"):
        assert_usage_error(capsys, [command, str(copy)], f"{copy / 'manifest.json'}: ")
    assert main(["preview", str(copy)]) == 2
    assert re.search(says, capsys.readouterr().err)


def test_a_cut_or_changed_file_is_an_error_naming_it_not_fewer_samples(both_layouts, torch,
                                                                        tmp_path):
    """The manifest lists every shard's bytes and records: a shard cut short (after a whole
    record, or its gzip trailer), an index shard missing a line or a corrupt record is one
    DatasetError naming the file, never a quietly shorter epoch or a megabyte of hex."""
    from synanno_datagen import DatasetError
    from synanno_datagen.reading.dataset import open_dataset
    from synanno_datagen.reading.records import iter_serialized

    for layout, out in both_layouts.items():
        copy, manifest = _damaged_copy(out, tmp_path / layout)
        shard = next(f for f in manifest["files"]["tfrecord"]
                     if f["split"] == "train" and f["records"] > 1)
        path = copy / shard["path"]
        data = path.read_bytes()
        if layout == "instance":   # uncompressed: cut after the first whole record
            with open(path, "rb") as f:
                first = next(iter_serialized(f))
            path.write_bytes(data[:len(first) + 16])
        else:                      # gzip: the stream's trailer is gone, every record still there
            path.write_bytes(data[:-8])
        with pytest.raises(DatasetError, match=rf"{path}: it has \d+ bytes, the manifest says "
                                               rf"{shard['bytes']}"):
            loaders.ShardDataset(str(copy), "train")
        with pytest.raises(DatasetError, match=str(path)):
            open_dataset(str(copy)).checked_files(open_dataset(str(copy)).files("tfrecord"))
        path.unlink()   # a shard gone: named as the dataset is opened, not in mid-epoch
        with pytest.raises(DatasetError, match=rf"{path}: it is missing, the manifest says "
                                               rf"{shard['bytes']}"):
            loaders.ShardDataset(str(copy), "train")

    # a flipped byte inside a record (same size): the shard is named, in one short line
    copy, manifest, path = _with_a_flipped_val_byte(both_layouts["instance"], tmp_path / "flipped")
    with pytest.raises(DatasetError) as error:
        list(loaders.ShardDataset(str(copy), "val"))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "(ValueError: Not a valid TFRecord. Mismatch of data mask)" in message
    assert len(message) < len(str(path)) + 200    # not Beam's hex dump of the record

    # a flipped byte inside a gzip shard: decompressed as records are read, the record it
    # damaged is named, or the stream as not decompressing (found by review: decompressed in
    # large blocks ahead of the records, a zlib error was named as record 1)
    gz_copy, _, gz_path = _with_a_flipped_val_byte(both_layouts["variant"],
                                                   tmp_path / "gz-flipped")
    with pytest.raises(DatasetError) as error:
        list(loaders.ShardDataset(str(gz_copy), "val"))
    assert re.fullmatch(rf"{re.escape(str(gz_path))}: (does not decompress \((error|EOFError): "
                        r"|record \d+ does not read \(ValueError: Not a valid TFRecord\. "
                        r"Mismatch of data mask\)).{0,150}", str(error.value))
    # its gzip trailer's CRC changed, every record intact: the stream does not decompress
    gz_copy = _damaged_copy(both_layouts["variant"], tmp_path / "gz-trailer")[0]
    trailer = gz_copy / gz_path.relative_to(tmp_path / "gz-flipped" / "copy")
    data = bytearray(trailer.read_bytes())
    data[-8] ^= 0xFF   # the first byte of the stream's CRC32
    trailer.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{trailer}: does not decompress \(BadGzipFile: "):
        list(loaders.ShardDataset(str(gz_copy), "val"))

    # an index shard without its last line
    index = next(f for f in manifest["files"]["index"] if f["split"] == "val")
    lines = (copy / index["path"]).read_text().splitlines(keepends=True)
    (copy / index["path"]).write_text("".join(lines[:-1]))
    with pytest.raises(DatasetError, match=rf"{copy / index['path']}: {len(lines) - 1} lines, "
                                           rf"the manifest says {len(lines)}"):
        loaders.NpyDataset(str(copy), "val")
    # ... or with a line twice (found by mutation review: only a missing line was tested)
    rewrite_listed(copy, index["path"], "".join(lines + lines[-1:]))
    with pytest.raises(DatasetError, match=rf"{copy / index['path']}: {len(lines) + 1} lines, "
                                           rf"the manifest says {len(lines)}"):
        loaders.NpyDataset(str(copy), "val")

    # an npy file cut short
    (copy / index["path"]).write_text("".join(lines))
    npy = loaders.NpyDataset(str(copy), "val")
    source = npy.files(0)["source"]
    kept = open(source, "rb").read()
    with open(source, "r+b") as f:
        f.truncate(200)
    with pytest.raises(DatasetError, match=rf"{source}: 200 bytes that are not the ones the "
                                           r"index lists \(\d+ bytes, sha256 [0-9a-f]{12}"):
        npy[0]

    # an npy file replaced by another valid npy file: of another shape, or of the same size
    import numpy as np

    open(source, "wb").write(kept)
    assert npy[1][0].shape == (2, 4, 24, 24)

    seed = npy.files(1)["seed_target"]
    kept = open(seed, "rb").read()
    np.save(seed, np.zeros((3, 3), np.uint8))
    with pytest.raises(DatasetError, match=rf"{seed}: \d+ bytes that are not the ones"):
        npy[1]
    open(seed, "wb").write(kept)
    target = npy.files(1)["target"]
    written = np.load(target)
    np.save(target, np.full_like(written, 7))    # same header, same size, other values
    # (item 1's source and target are kept for its instance's next item: read another's first)
    assert npy.items.instance_ids[-1] != npy.items.instance_ids[1] and npy[len(npy) - 1]
    with pytest.raises(DatasetError, match=rf"{target}: \d+ bytes that are not the ones"):
        npy[1]


TF_REFUSALS = """
import json, sys
from synanno_datagen import DatasetError
from synanno_datagen.reading import loaders
said = []
for location in sys.argv[1:]:
    try:
        loaders.tf_dataset(location, "train")
        said.append("read")
    except DatasetError as e:
        said.append(str(e))
print(json.dumps(said))
"""


def test_every_loader_refuses_a_cut_shard_and_a_dataset_without_shards(both_layouts, small_data,
                                                                       tmp_path, torch):
    """tf_dataset checks the shards' sizes as the torch loaders do (TensorFlow read a gzip
    shard without its trailer, every record there, as whole), and a dataset made with
    --formats npy is a clear error in both, not an empty epoch (found by mutation review:
    neither was tested)."""
    from synanno_datagen import DatasetError
    from synanno_datagen.cli import main

    copy, manifest = _damaged_copy(both_layouts["variant"], tmp_path / "cut")
    shard = next(f for f in manifest["files"]["tfrecord"] if f["split"] == "train")
    path = copy / shard["path"]
    assert path.name.endswith(".gz")
    path.write_bytes(path.read_bytes()[:-8])
    npy_only = tmp_path / "npy"
    assert main(["run"] + small_data.argv(npy_only, "--formats", "npy", "--variants", "1",
                                          "--quiet")) == 0
    no_shards = "this dataset has no TFRecord shards (made with --formats npy); read its npy files"
    with pytest.raises(DatasetError, match=re.escape(no_shards)):
        loaders.ShardDataset(str(npy_only), "train")
    assert len(loaders.NpyDataset(str(npy_only), "train")) > 0
    _require_tf()
    done = subprocess.run([sys.executable, "-c", TF_REFUSALS, str(copy), str(npy_only)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    cut, empty = json.loads(done.stdout.strip().splitlines()[-1])
    assert cut == (f"{path}: it has {shard['bytes'] - 8} bytes, the manifest says "
                   f"{shard['bytes']}: the file was cut short or changed; copy the file again, "
                   "or generate the dataset again")
    assert empty == no_shards


def test_an_npy_file_is_read_no_further_than_its_listing_and_must_be_listed(both_layouts, torch,
                                                                           tmp_path):
    """Found by review: an npy file was read whole before its size was compared (a link to
    /dev/zero, or a huge file, took all memory); an index line that listed no size and sha256
    for a file skipped its check; an npy header declaring a huge array was a MemoryError
    traceback. Each is one DatasetError naming the file."""
    import hashlib

    import numpy as np

    from synanno_datagen import DatasetError

    copy, manifest = _damaged_copy(both_layouts["instance"], tmp_path)
    npy = loaders.NpyDataset(str(copy), "val")
    source = Path(npy.files(0)["source"])
    relative = next(f for f in manifest["files"]["index"] if f["split"] == "val")["path"]
    written = (copy / relative).read_text()
    first = json.loads(written.splitlines()[0])
    listed = next(f for f in first["npy"]["files"] if source.as_posix().endswith(f["path"]))

    def relisted(**changes):
        """The dataset with the first val line's listing of ``source`` changed (None: dropped)."""
        line = json.loads(written.splitlines()[0])
        files = [dict(f, **changes) if f["path"] == listed["path"] else f
                 for f in line["npy"]["files"]]
        line["npy"]["files"] = [f for f in files if None not in f.values()]
        rewrite_listed(copy, relative, "\n".join([json.dumps(line)] + written.splitlines()[1:])
                       + "\n")
        return loaders.NpyDataset(str(copy), "val")

    source.unlink()
    with open(source, "wb") as f:   # 16 GiB (sparse): the reader stops after listed + 1
        f.truncate(2**34)
    with pytest.raises(DatasetError, match=rf"{source}: more bytes than the index lists "
                                           rf"\({listed['bytes']} bytes"):
        npy[0]

    header = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': " \
        b"(1000000, 1000000, 1000000), }"
    bomb = header + b" " * (127 - len(header)) + b"\n"
    source.unlink()
    source.write_bytes(bomb)
    with pytest.raises(DatasetError, match=rf"{source}: not a readable npy file"):
        relisted(bytes=len(bomb), sha256=hashlib.sha256(bomb).hexdigest())[0]

    # found by review: a listed size of 2**50 was allocated (MemoryError), a size as text a
    # TypeError traceback
    # (found by review: a sha256 of 64 characters holding spaces was taken, shorter, and every
    # later file was checked against another file's sha256)
    for size, sha in ((2**50, listed["sha256"]), ("12", listed["sha256"]), (-1, listed["sha256"]),
                      (12, 7), (12, "ab"), (12, "z" * 64), (12, " " * 64),
                      (12, listed["sha256"][:42] + " " * 22), (12, listed["sha256"].upper())):
        damaged = relisted(bytes=size, sha256=sha)
        with pytest.raises(DatasetError, match=rf"{source}: its index line lists .*, not what "
                                               r"an npy file of the dataset's arrays holds"):
            damaged[0]
        assert all(np.asarray(damaged[i][0]).shape[0] == 2 for i in range(len(damaged))
                   if damaged.files(i)["source"] != str(source))

    npy = relisted(path=None)
    with pytest.raises(DatasetError, match=rf"{source}: its index line lists no size and "
                                           r"sha256 for it"):
        npy[0]
    other = next(i for i in range(len(npy)) if npy.files(i)["source"] != str(source))
    assert np.asarray(npy[other][0]).shape[0] == 2    # other instances still read


def test_an_npy_file_is_read_in_bounded_blocks_whatever_its_listing_says(tmp_path):
    """Found by review: a manifest whose arrays are 65536**3 allows listings of 2.8e14 bytes, and
    the whole listing was allocated before reading (a MemoryError traceback from preview and
    NpyDataset). The file is read in blocks: what it holds, not what it is said to hold."""
    import hashlib

    import numpy as np

    from synanno_datagen import DatasetError
    from synanno_datagen.reading.npy_items import load_npy

    path = tmp_path / "source_1.npy"
    np.save(path, np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    data = path.read_bytes()
    with pytest.raises(DatasetError, match=rf"{path}: {len(data)} bytes that are not the ones "
                                           r"the index lists \(281474976710656 bytes"):
        load_npy(str(path), (1 << 48, hashlib.sha256(data).hexdigest()), (1 << 16,) * 3)
    loaded = load_npy(str(path), (len(data), hashlib.sha256(data).hexdigest()), (2, 2, 2))
    assert loaded.tolist() == np.arange(8).reshape(2, 2, 2).tolist()


def test_ranks_leave_out_other_samples_each_epoch_on_a_split_of_one_shard(small_data, tmp_path,
                                                                          torch):
    """Found by review: on a split of one shard (the demo's train split is one) the same
    samples were left out every epoch with shuffle_seed, which permutes shards only."""
    out = tmp_path / "out"
    run_pipeline(small_data.argv(out, "--variants", "2"))
    every = _keys(loaders.ShardDataset(str(out), "train", with_meta=True))
    assert len(every) == 10 and len(json.loads((out / "manifest.json").read_text())[
        "files"]["tfrecord"]) == 1
    left_out = set()
    for epoch in range(6):
        ranks = [loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=3,
                                      rank=rank, world_size=4) for rank in range(4)]
        for data in ranks:
            data.set_epoch(epoch)
        taken = [k for data in ranks for k in _keys(data)]
        assert len(taken) == len(set(taken)) == 8 and set(taken) < set(every)
        left_out.add(tuple(sorted(set(every) - set(taken))))
    assert len(left_out) > 1


def test_a_shard_holding_more_records_than_listed_is_an_error(generated, torch, tmp_path):
    """Found by a mutation review: only fewer records than the manifest lists were tested; a
    shard of the right size holding one more (the manifest's count edited down) is refused too."""
    from synanno_datagen import DatasetError

    _, out, _, _ = generated
    copy, manifest = _damaged_copy(out, tmp_path)
    train = [f for f in manifest["files"]["tfrecord"] if f["split"] == "train"]
    assert train[-1]["records"] == 2
    train[-1]["records"] = 1
    _split_records(manifest, -1)   # (the split's count with it: the shard is what is checked)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError,
                       match=rf"{train[-1]['path']}: 2 records, the manifest says 1"):
        list(loaders.ShardDataset(str(copy), "train"))


def test_the_last_shard_is_counted_when_ranks_leave_samples_out(generated, torch, tmp_path):
    """With 2 ranks, 1 of the 9 train samples is left out, so no reader's range ends at the last
    shard's end: the last reader still reads it to its end, and a shard holding other than its
    listed records is an error there as everywhere."""
    from synanno_datagen import DatasetError

    _, out, _, _ = generated
    copy, manifest = _damaged_copy(out, tmp_path)
    from synanno_datagen.reading.records import iter_serialized

    train = [f for f in manifest["files"]["tfrecord"] if f["split"] == "train"]
    assert [f["records"] for f in train] == [1, 2]
    last = copy / train[-1]["path"]   # its first record once more: it holds 3, lists 2
    with open(last, "rb") as f:
        framed = 12 + len(next(iter_serialized(f))) + 4
    data = last.read_bytes()
    last.write_bytes(data + data[:framed])
    train[-1]["bytes"] = len(data) + framed
    (copy / "manifest.json").write_text(json.dumps(manifest))
    first = loaders.ShardDataset(str(copy), "train", rank=0, world_size=2)
    assert len(list(first)) == 4
    with pytest.raises(DatasetError, match=rf"{train[-1]['path']}: 3 records, the manifest says 2"):
        list(loaders.ShardDataset(str(copy), "train", rank=1, world_size=2))
    for epoch in range(6):   # wherever a seed puts the sample left out, a reader reads to the end
        with pytest.raises(DatasetError, match="3 records, the manifest says 2"):
            for rank in range(2):
                data = loaders.ShardDataset(str(copy), "train", rank=rank, world_size=2,
                                            shuffle_seed=3)
                data.set_epoch(epoch)
                list(data)


class CountingBytes(io.BytesIO):
    """An in-memory file that counts the bytes read from it (``read_bytes``)."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.read_bytes = 0

    def read(self, n=-1):
        out = super().read(n)
        self.read_bytes += len(out)
        return out


def test_skipping_records_seeks_over_their_data_and_checks_their_lengths(tmp_path):
    """A reader whose share starts inside a shard moves past the records before it by their
    lengths (each checked against its CRC), without reading their data."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    from synanno_datagen.reading.records import iter_serialized, skip_serialized

    records = [bytes([i]) * (1000 + i) for i in range(5)]
    data = io.BytesIO()
    for r in records:
        _TFRecordUtil.write_record(data, r)

    stream = CountingBytes(data.getvalue())
    assert skip_serialized(stream, 3) == 3 and stream.read_bytes == 3 * 12
    assert list(iter_serialized(stream)) == records[3:]
    assert skip_serialized(CountingBytes(data.getvalue()), 9) == 5
    broken = bytearray(data.getvalue())
    broken[2] ^= 0xFF            # the first record's length
    with pytest.raises(ValueError, match="length fails its CRC"):
        skip_serialized(io.BytesIO(bytes(broken)), 1)


def test_a_record_longer_than_the_dataset_can_hold_is_refused_before_it_is_read(
        both_layouts, torch, tmp_path):
    """Found by review: a gzip shard of a few MB whose record length says 2**40 had the reader
    decompress the whole stream into memory for that record. A record's length is checked
    against what a record of the dataset can hold (its arrays and seed slices) first."""
    import gzip
    import struct

    from apache_beam.io.tfrecordio import _TFRecordUtil

    from synanno_datagen import DatasetError

    copy, manifest = _damaged_copy(both_layouts["variant"], tmp_path)   # gzip shards
    shard = next(f for f in manifest["files"]["tfrecord"] if f["split"] == "val")
    length = struct.pack("<Q", 1 << 40)
    bomb = gzip.compress(length + struct.pack("<I", _TFRecordUtil._masked_crc32c(length))
                         + bytes(1 << 22))
    (copy / shard["path"]).write_bytes(bomb)
    shard["bytes"] = len(bomb)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"record 1 does not read \(ValueError: a record of "
                                           r"1099511627776 bytes, more than a record of this "
                                           r"dataset holds \(\d+\)\)"):
        list(loaders.ShardDataset(str(copy), "val"))


def test_the_record_limit_holds_a_variant_record_of_a_large_crop():
    """Found by mutation review: a limit of two arrays passed every test (the test crops are
    smaller than its slack) and would refuse every variant record of a 64 x 256 x 256 crop."""
    from synanno_datagen.reading.records import max_record_bytes

    manifest = {"arrays": {"shape_zyx": [64, 256, 256]}, "config": {"variants": 4}}
    assert max_record_bytes(manifest) >= 3 * 64 * 256 * 256 + 4 * 64 * 8


def test_records_info_reads_a_manifest_from_before_record_layouts_as_variant_records():
    from synanno_datagen.layout import records_info

    assert records_info({}) == {"layout": "variant", "compression": "none",
                                "tfrecord_compression_type": ""}
    assert records_info({"records": {"layout": "instance", "compression": "gzip"}}) == {
        "layout": "instance", "compression": "gzip", "tfrecord_compression_type": "GZIP"}


def test_a_record_exactly_as_long_as_the_limit_is_read():
    import struct

    from synanno_datagen.reading.records import iter_serialized, masked_crc32c

    def framed(data):
        length = struct.pack("<Q", len(data))
        return (length + struct.pack("<I", masked_crc32c(length)) + data
                + struct.pack("<I", masked_crc32c(data)))

    data = bytes(range(256)) * 4
    assert list(iter_serialized(io.BytesIO(framed(data)), max_length=len(data))) == [data]
    with pytest.raises(ValueError, match="a record of 1024 bytes, more than"):
        list(iter_serialized(io.BytesIO(framed(data)), max_length=len(data) - 1))


def test_each_rank_and_worker_draws_its_own_shuffle_buffer_order(generated, torch):
    """Found by mutation review: the buffer's generator seeded without the rank passed every test
    (every rank then drew the same pattern of buffer places). A worker's samples are its part of
    its rank's share, mixed by a buffer seeded by (seed, epoch, rank x workers + worker)."""
    _, out, _, _ = generated
    workers = 2
    for epoch in (0, 1):
        for rank in range(2):
            def made(**buffer):
                data = loaders.ShardDataset(str(out), "train", with_meta=True, shuffle_seed=3,
                                            rank=rank, world_size=2, **buffer)
                data.set_epoch(epoch)
                return data

            share = _keys(made())
            parts = [share[w * len(share) // workers:(w + 1) * len(share) // workers]
                     for w in range(workers)]
            rngs = [loaders.loader_rng(3, epoch, loaders.BUFFER, rank * workers + w)
                    for w in range(workers)]
            mixed = [[part[i] for i in loaders.buffer_shuffle(range(len(part)), 4, rng)]
                     for rng, part in zip(rngs, parts)]
            # a DataLoader of batch_size=None takes one sample from each worker in turn
            expected = [k for turn in zip(*mixed) for k in turn]
            assert [len(p) for p in parts] == [2, 2]
            loader = torch.utils.data.DataLoader(made(shuffle_buffer=4), batch_size=None,
                                                 num_workers=workers)
            assert _keys(loader) == expected, (epoch, rank)


def test_an_npy_file_of_another_dtype_or_shape_is_refused_even_when_its_listing_matches(
        tmp_path):
    """Found by mutation review: dropping load_npy's dtype or shape check passed every test (each
    test's replaced file failed its listed sha256 first). A file whose index line was listed
    again for it, holding uint16 or another shape, is refused, not scaled as if uint8 (values
    up to 257) or left to fail in a DataLoader's collation."""
    import hashlib

    from synanno_datagen import DatasetError
    from synanno_datagen.reading.npy_items import load_npy

    path = tmp_path / "source_1.npy"
    for array, holds in ((np.full((2, 3, 4), 300, np.uint16), "uint16 [2, 3, 4]"),
                         (np.ones((2, 3, 5), np.uint8), "uint8 [2, 3, 5]"),
                         (np.ones((3, 2, 4), np.uint8), "uint8 [3, 2, 4]")):
        np.save(path, array)
        data = path.read_bytes()
        with pytest.raises(DatasetError, match=re.escape(
                f"{path}: holds {holds}, the manifest says uint8 [2, 3, 4]")):
            load_npy(str(path), (len(data), hashlib.sha256(data).hexdigest()), (2, 3, 4))


def test_a_reader_seeks_over_the_records_before_its_share_in_an_uncompressed_shard(
        generated, monkeypatch):
    """Found by mutation review: read_records reading (and discarding) every record before
    ``skip`` passed every test (only skip_serialized was tested). In an uncompressed shard the
    skipped records' data is never read: a rank's share starting deep in a shard reads only
    the frames' lengths there."""
    from synanno_datagen.reading import records as records_module
    from synanno_datagen.reading.dataset import Dataset, open_dataset

    _, out, _, _ = generated
    dataset = open_dataset(str(out))
    shard = next(f for f in dataset.files("tfrecord") if f["records"] > 1)
    assert not shard["path"].endswith(".gz")
    data = Path(dataset.path(shard["path"])).read_bytes()
    lengths = [len(r) for r in records_module.iter_serialized(io.BytesIO(data))]

    opened = []

    def counted(self, relative, gzip=False):
        opened.append(CountingBytes(Path(self.path(relative)).read_bytes()))
        return opened[-1]

    monkeypatch.setattr(Dataset, "open", counted)
    every = [r["instance_id"] for r in records_module.read_records(dataset, shard,
                                                                   ("instance_id",))]
    assert [f.read_bytes for f in opened] == [len(data)]
    skip = len(lengths) - 1
    last = [r["instance_id"] for r in records_module.read_records(dataset, shard,
                                                                  ("instance_id",), skip)]
    assert last == every[skip:]
    assert opened[1].read_bytes == len(data) - sum(n + 4 for n in lengths[:skip])
    assert len(opened) == 2


def test_buffer_shuffle_holds_no_more_than_its_buffer():
    """Found by mutation review: a buffer filled to buffer_size + 1 before drawing passed every
    test (its last place was never drawn, so one sample of every worker always came last)."""
    pulled = []

    def counted(n):
        for i in range(n):
            pulled.append(i)
            yield i

    mixed = loaders.buffer_shuffle(counted(100), 4, np.random.default_rng(0))
    next(mixed)
    assert len(pulled) == 5        # the buffer's 4 and the one that takes a drawn one's place
    lasts = {list(loaders.buffer_shuffle(range(100), 4, np.random.default_rng(seed))).index(4)
             for seed in range(20)}
    assert min(lasts) < 90         # the fifth item is mixed like the others, not kept for the end


def test_npy_dataset_of_a_dataset_without_npy_files_says_so(small_data, tmp_path, torch):
    """Found by mutation review: without the formats check a TFRecord-only dataset was called
    damaged ("a line without the npy files"), not one to read through its TFRecord shards."""
    from synanno_datagen import DatasetError

    out = tmp_path / "tfrecord-only"
    _, manifest = run_pipeline(small_data.argv(out, "--formats", "tfrecord", "--variants", "1"))
    # the manifest says so (found by a mutation review: npy.written always true passed every test)
    assert manifest["npy"]["written"] is False and manifest["records"]["written"] is True
    with pytest.raises(DatasetError, match=re.escape(
            "this dataset has no npy files (made with --formats tfrecord); read its TFRecord "
            "shards")):
        loaders.NpyDataset(str(out), "train")


@pytest.mark.parametrize("name", ["ShardDataset", "NpyDataset", "tf_dataset"])
def test_readme_gives_each_loaders_signature_as_the_code_has_it(name, request):
    """Found by review: README gave ``NpyDataset(dir, split, with_meta=False)``, so
    ``NpyDataset(dir, "train", True)`` failed (``with_meta`` is keyword-only). (Without torch
    the torch datasets are stand-ins without their signature: those two cases are skipped.)"""
    import inspect

    if name != "tf_dataset":
        request.getfixturevalue("torch")
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    parts = []
    for i, p in enumerate(inspect.signature(getattr(loaders, name)).parameters.values()):
        if p.kind is p.KEYWORD_ONLY and "*" not in parts:
            parts.append("*")
        text = "dir" if i == 0 else p.name
        if p.default is not p.empty:
            default = f'"{p.default}"' if isinstance(p.default, str) else repr(p.default)
            text += f"={default}"
        parts.append(text)
    assert f"`{name}({', '.join(parts)})`" in readme, name
