"""PyTorch datasets over a generated dataset; reach them through ``synanno_datagen``.

Both yield ``(input, target)`` float32 tensors, ``input [2, z, y, x]`` = (source / 255,
seed_target) and ``target [1, z, y, x]``; with ``with_meta=True`` a third element
``{"instance_id": int, "variant": int}``. Local or gs:// datasets (streamed through Beam's
FileSystems).
"""
from __future__ import annotations

import io
import logging
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from synanno_datagen.errors import DatasetError, first_line
from synanno_datagen.reading.dataset import DAMAGED, open_dataset
from synanno_datagen.reading.loaders import buffer_shuffle, input_target, shard_order, worker_share
from synanno_datagen.reading.records import SAMPLE_FEATURES, read_records, variants_of

log = logging.getLogger(__name__)


def _sample(source, seed, target, meta: Optional[dict]):
    inputs, target = input_target(source, seed, target)
    pair = (torch.from_numpy(inputs), torch.from_numpy(target))
    return pair + (meta,) if meta is not None else pair


class ShardDataset(IterableDataset):
    """The records of one split, read shard by shard from its TFRecord files (manifest order).

    In a DataLoader with N workers, worker i reads shards i, i+N, ...: every record is yielded
    once per epoch. With ``shuffle_seed``, the shard order is a permutation seeded by
    (shuffle_seed, epoch); call ``set_epoch`` before each epoch (workers see it unless
    ``persistent_workers``). Records in a shard are in work-block order, then by instance id;
    ``shuffle_buffer`` > 0 (needs ``shuffle_seed``) mixes each worker's records through a buffer of
    that many decoded records (about 3 x z*y*x bytes each), seeded by (seed, epoch, worker).
    """

    def __init__(self, dataset_dir: str, split: str = "train", *, with_meta: bool = False,
                 shuffle_seed: Optional[int] = None, shuffle_buffer: int = 0):
        if shuffle_buffer and shuffle_seed is None:
            raise ValueError("shuffle_buffer needs a shuffle_seed (the order must be reproducible)")
        self.dataset = open_dataset(dataset_dir)
        self.shards = self.dataset.checked_files(   # manifest entries, in order
            self.dataset.files("tfrecord", split))
        self.num_records = (self.dataset.manifest["splits"][split]["records"]
                            * self.dataset.variants_per_record)   # samples
        self.with_meta = with_meta
        self.shuffle_seed = shuffle_seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_records

    def __iter__(self):
        shards = shard_order(self.shards, self.shuffle_seed, self.epoch)
        worker = get_worker_info()
        worker_id = 0
        if worker is not None:
            if worker.num_workers > len(shards) and worker.id == 0:
                log.warning("%d DataLoader workers for %d shards: %d workers get none",
                            worker.num_workers, len(shards), worker.num_workers - len(shards))
            shards, worker_id = worker_share(shards, worker.id, worker.num_workers), worker.id
        records = (v for shard in shards
                   for r in read_records(self.dataset, shard, SAMPLE_FEATURES)
                   for v in variants_of(r))
        if self.shuffle_buffer:
            rng = np.random.default_rng([self.shuffle_seed, self.epoch, worker_id])
            records = buffer_shuffle(records, self.shuffle_buffer, rng)
        for r in records:
            meta = ({"instance_id": r["instance_id"], "variant": r["variant"]}
                    if self.with_meta else None)
            yield _sample(r["source"], r["seed_target"], r["target"], meta)


class NpyDataset(Dataset):
    """Map-style: item i is one (instance, variant) of a split, from the npy files (index order).

    Arrays are read with ``np.load(..., allow_pickle=False)``.
    """

    def __init__(self, dataset_dir: str, split: str = "train", *, with_meta: bool = False):
        self.items = open_dataset(dataset_dir).npy_items(split)
        self.with_meta = with_meta

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        source, seed, target = (_load_npy(item[k]) for k in ("source", "seed_target", "target"))
        meta = ({"instance_id": item["instance_id"], "variant": item["variant"]}
                if self.with_meta else None)
        return _sample(source, seed, target, meta)


def _load_npy(path: str) -> np.ndarray:
    """One npy file, local or gs:// (never unpickled); DatasetError naming a file that does not
    read."""
    try:
        if "://" not in path:
            return np.load(path, allow_pickle=False)
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable npy file ({type(e).__name__}: "
                           f"{first_line(e, 200)}); {DAMAGED}") from None
