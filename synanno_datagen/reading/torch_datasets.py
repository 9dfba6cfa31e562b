"""PyTorch datasets over a generated dataset; reach them through ``synanno_datagen``.

Both yield ``(input, target)`` float32 tensors, ``input [2, z, y, x]`` = (source / 255,
seed_target) and ``target [1, z, y, x]``; with ``with_meta=True`` a third element
``{"instance_id": int, "variant": int}``. Local or gs:// datasets (local files read without
Beam; gs:// streamed through Beam's FileSystems).
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from synanno_datagen.reading.dataset import DatasetError, open_dataset
from synanno_datagen.reading import loaders
from synanno_datagen.reading.loaders import whole as _whole
from synanno_datagen.reading.loaders import (
    BUFFER, buffer_shuffle, input_target, left_out_start, loader_rng, num_batches, reader_range,
    shard_order, shard_slices, stream_ranges,
)
from synanno_datagen.reading.npy_items import ROLES
from synanno_datagen.reading.records import SAMPLE_FEATURES, read_records, variants_of


def _sample(source, seed, target, meta: Optional[dict]):
    inputs, target = input_target(source, seed, target)
    pair = (torch.from_numpy(inputs), torch.from_numpy(target))
    return pair + (meta,) if meta is not None else pair


class _SentWithoutListings:
    """A dataset whose pickled copy (what a DataLoader worker started by spawn or forkserver
    gets) holds its ``dataset`` without the manifest's file lists, which it read already."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "dataset": self.dataset.without_listings()}


class ShardDataset(_SentWithoutListings, IterableDataset):
    """The samples of one split (``None``: every split), read shard by shard from its TFRecord
    files (manifest order).

    The split is one stream of samples (shards in order, or in an order seeded by
    (``shuffle_seed``, epoch)). Under distributed training (``torch.distributed`` initialised,
    or ``rank`` and ``world_size`` given) each rank takes an equal contiguous share of it,
    ``len()`` samples: ``samples % world_size`` neighbouring samples of an epoch are left out
    (the last ones, or with ``shuffle_seed`` a run placed by (seed, epoch)), so that every rank
    steps as often. A DataLoader's N workers split their rank's share into N contiguous
    parts: every sample of the share is yielded once per epoch, whatever N. ``set_epoch``
    reaches the workers, persistent ones included (the epoch lives in shared memory).
    Records in a shard are in work-block order, then by instance id (shards are spatial:
    neighbouring synapses are neighbours); ``interleave`` = K > 1 has each worker read K shards
    of its part at once, a sample from each in turn (an instance record's variants then come
    K samples apart). ``shuffle_buffer`` > 0 (needs ``shuffle_seed``) then mixes each worker's
    samples through a buffer of that many decoded samples (each its seed mask, z*y*x bytes, and
    its record's source and target, which an instance record's variants share), seeded by
    (seed, epoch, rank x N + worker).
    """

    def __init__(self, dataset_dir: str, split: str = "train", *, with_meta: bool = False,
                 shuffle_seed: Optional[int] = None, shuffle_buffer: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 interleave: int = 1):
        shuffle_seed = loaders.checked_seed(shuffle_seed)
        shuffle_buffer = _whole("shuffle_buffer", shuffle_buffer)
        interleave = _whole("interleave", interleave)
        if interleave < 1:
            raise ValueError(f"interleave {interleave}: must be 1 (one shard at a time) or more")
        if shuffle_buffer and shuffle_seed is None:
            raise ValueError("shuffle_buffer needs a shuffle_seed (the order must be reproducible)")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer {shuffle_buffer}: must be 0 (off) or more")
        self.rank, self.world_size = _rank_and_world_size(rank, world_size)
        self.dataset = open_dataset(dataset_dir)
        self.shards = self.dataset.checked_files(   # manifest entries, in order
            self.dataset.files("tfrecord", split))
        splits = self.dataset.manifest["splits"]
        self.num_records = (sum(splits[s]["records"] for s in ([split] if split else splits))
                            * self.dataset.variants_per_record)   # samples of the split(s)
        self.with_meta = with_meta
        self.shuffle_seed = shuffle_seed
        self.shuffle_buffer = shuffle_buffer
        self.interleave = interleave
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        epoch = _whole("epoch", epoch)
        if epoch < 0:
            raise ValueError(f"epoch {epoch}: must be 0 or more")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        """This rank's samples per epoch."""
        return self.num_records // self.world_size

    def num_batches(self, batch_size: int, num_workers: int = 0, drop_last: bool = False) -> int:
        """The batches a ``DataLoader(self, batch_size, num_workers=..., drop_last=...)`` gives
        per epoch: each worker batches its own part, so with N workers up to N batches are
        partial (``len(loader)`` assumes one)."""
        return num_batches(self.num_records, batch_size, num_workers, self.world_size, drop_last)

    def __iter__(self):
        self.dataset.check_unchanged(type(self).__name__)
        epoch = self.epoch
        shards = shard_order(self.shards, self.shuffle_seed, epoch)
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        per_record = self.dataset.variants_per_record
        counts = [s["records"] * per_record for s in shards]
        ends = list(itertools.accumulate(counts))
        left_out = self.num_records % self.world_size
        start = left_out_start(self.num_records, left_out, self.shuffle_seed, epoch)
        lo, hi = reader_range(self.num_records, self.rank, self.world_size, worker_id, workers)
        slices = []   # (shard index, samples to skip, samples to take, read it to its end)
        for a, b in stream_ranges(lo, hi, start, left_out):
            part = shard_slices(counts, a, b)
            # the reader whose samples stop where the left-out ones start reads the shard to
            # its end when no other reader will (its record count is checked too)
            slices += [(i, skip, take, skip + take == counts[i] or (
                b == start and n == len(part) - 1
                and start + left_out >= min(ends[i], self.num_records)))
                for n, (i, skip, take) in enumerate(part)]
        if slices and self.rank == self.world_size - 1 and worker_id == workers - 1:
            slices[-1] = slices[-1][:3] + (True,)   # and the last reader its last shard
        parts = (self._shard_samples(shards[i], skip, take, per_record, to_end)
                 for i, skip, take, to_end in slices)
        samples = loaders.interleave(parts, self.interleave)
        if self.shuffle_buffer:
            rng = loader_rng(self.shuffle_seed, epoch, BUFFER, self.rank * workers + worker_id)
            samples = buffer_shuffle(samples, self.shuffle_buffer, rng)
        for r in samples:
            meta = ({"instance_id": r["instance_id"], "variant": r["variant"]}
                    if self.with_meta else None)
            yield _sample(r["source"], r["seed_target"], r["target"], meta)

    def _shard_samples(self, shard: dict, skip: int, take: int, per_record: int, to_end: bool):
        """Samples ``skip`` to ``skip + take`` of one shard; read to its end when ``to_end``,
        so that its record count is checked by the reader that reads its last sample."""
        records = read_records(self.dataset, shard, SAMPLE_FEATURES, skip // per_record)
        samples = (v for r in records for v in variants_of(r))
        try:
            yield from itertools.islice(samples, skip % per_record, skip % per_record + take)
            if to_end:
                for _ in samples:
                    pass
        except DatasetError:   # a shard gone or changed: the directory generated again?
            self.dataset.check_unchanged(type(self).__name__)
            raise


def _rank_and_world_size(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    """Both given, or torch.distributed's when it is initialised, or (0, 1)."""
    if rank is None and world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    rank = None if rank is None else _whole("rank", rank)
    world_size = None if world_size is None else _whole("world_size", world_size)
    if rank is None or world_size is None or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank}, world_size {world_size}: give both, with "
                         "0 <= rank < world_size")
    return rank, world_size


class NpyDataset(_SentWithoutListings, Dataset):
    """Map-style: item i is one (instance, variant) of a split, from the npy files (index order).

    Each file's bytes are checked against the index (size and sha256) and its array against the
    manifest (uint8, ``shape_zyx``) before use; arrays are read with
    ``np.load(..., allow_pickle=False)``. The items are held in a few numpy arrays (about 200
    bytes per item), which a DataLoader's forked workers share instead of copying.

    An instance's items are neighbours in index order and share its source and target files:
    each process keeps the last item's two arrays (uint8 [z, y, x], read-only) and reads them
    again only for an item of another instance, so items read in order (``shuffle=False``)
    read each file once; a shuffled order reads nearly every item's three files.
    """

    def __init__(self, dataset_dir: str, split: str = "train", *, with_meta: bool = False):
        self.dataset = open_dataset(dataset_dir)
        self.items = self.dataset.npy_items(split)
        self.with_meta = with_meta
        # ((source file, target file), source, target) of the last item read, or None
        self._last_instance: Optional[tuple] = None

    def __len__(self) -> int:
        return len(self.items)

    def files(self, i: int) -> Dict[str, str]:
        """Item i's npy files: {"source", "seed_target", "target": full path}."""
        return {role: self.dataset.path(self.items.relative_path(int(k)))
                for role, k in zip(ROLES, self.items.files[i])}

    def __getitem__(self, i: int):
        source_k, seed_k, target_k = (int(k) for k in self.items.files[i])
        last = self._last_instance
        held = last is not None and last[0] == (source_k, target_k)
        source = last[1] if held else self._array(source_k)
        seed = self.dataset.npy_array(self.items, seed_k, type(self).__name__)
        target = last[2] if held else self._array(target_k)
        self._last_instance = ((source_k, target_k), source, target)
        meta = ({"instance_id": int(self.items.instance_ids[i]),
                 "variant": int(self.items.variants[i])} if self.with_meta else None)
        return _sample(source, seed, target, meta)

    def _array(self, k: int) -> np.ndarray:
        """File k's array (uint8 [z, y, x]), read-only: it may serve the next item too."""
        array = self.dataset.npy_array(self.items, k, type(self).__name__)
        array.flags.writeable = False
        return array
