"""Training loaders over a generated dataset: PyTorch (TFRecord shards or npy files), TensorFlow.

Every loader yields the same pair, float32, axes (channel, z, y, x):
``input [2, z, y, x]`` = (source / 255, seed_target) and ``target [1, z, y, x]`` = target (0/1).

This module imports neither torch nor tensorflow. ``ShardDataset`` (a ``torch`` IterableDataset
over a split's TFRecord shards) and ``NpyDataset`` (a map-style ``torch`` Dataset over the npy
files) load ``synanno_datagen.reading.torch_datasets`` on first use, and ``tf_dataset`` imports
tensorflow when called; a missing framework raises an ImportError that names the extra to
install. Every loader reads local and ``gs://`` datasets.
"""
from __future__ import annotations

import functools
import itertools
import operator
import os
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from synanno_datagen import layout
from synanno_datagen.errors import DatasetError
from synanno_datagen.reading.dataset import open_dataset


def missing_extra(framework: str, extra: str) -> ImportError:
    """The error of a loader whose framework is not installed: how to add the extra, quoted as
    shells need it (zsh takes an unquoted ``[...]`` for a glob), from a clone too."""
    return ImportError(f"this loader needs {framework}, which is an optional extra: "
                       f"pip install 'synanno-datagen[{extra}]' (in a clone of synanno-datagen: "
                       f"pip install -e '.[{extra}]')")


# what a loader's generator is for (its own word in loader_rng's seed)
SHARD_ORDER, LEFT_OUT, BUFFER = 0, 1, 2
_WORD = 2**32 - 1


def loader_rng(seed: int, epoch: int, purpose: int, reader: int = 0) -> np.random.Generator:
    """The generator of one ``purpose`` (SHARD_ORDER, LEFT_OUT or BUFFER) of one reader
    (``rank x workers + worker``) in one epoch of a loader seeded with ``seed`` (each number
    0 to 2**63 - 1).

    Seeded with seven 32-bit words in places of their own: numpy pads a shorter list with zero
    words and gives each number as many words as it needs, so ``[seed, epoch]`` (the shard
    order) was worker 0's buffer ``[seed, epoch, 0]``, ``[seed, epoch, 1]`` both the left-out
    place and worker 1's buffer, and seed s + k x 2**32 at epoch 0 seed s at epoch k."""
    return np.random.default_rng([seed & _WORD, seed >> 32, epoch & _WORD, epoch >> 32,
                                  purpose, reader & _WORD, reader >> 32])


def whole(name: str, value) -> int:
    """``value`` as an int (numpy integers too); ValueError naming ``name`` for a float, a
    string or anything else (a seed of 0.5 failed only at the first batch, in a worker)."""
    try:
        if not isinstance(value, bool):   # (True is an int to Python, a mistake here)
            return operator.index(value)
    except TypeError:
        pass
    raise ValueError(f"{name} {value!r}: must be a whole number (an int)")


def checked_seed(seed) -> Optional[int]:
    """A loader's ``shuffle_seed``: None, or a whole number from 0 to 2**63 - 1 (ValueError)."""
    if seed is None:
        return None
    seed = whole("shuffle_seed", seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"shuffle_seed {seed}: must be 0 to 2**63 - 1")
    return seed


def shard_order(paths: Sequence[str], seed: Optional[int], epoch: int = 0) -> List[str]:
    """``paths`` as given, or permuted by a generator seeded with (seed, epoch)."""
    if seed is None:
        return list(paths)
    order = loader_rng(seed, epoch, SHARD_ORDER).permutation(len(paths))
    return [paths[i] for i in order]


def reader_range(total: int, rank: int, world_size: int, worker: int,
                 num_workers: int) -> Tuple[int, int]:
    """The samples [lo, hi) of a stream of ``total`` that one reader takes.

    Rank ``rank`` of ``world_size`` takes a contiguous share of ``total // world_size`` samples
    (``total % world_size`` are left out, so that every rank yields as many; the ranges number
    the samples taken, see ``stream_ranges``), which its
    ``num_workers`` workers split into contiguous parts whose sizes differ by at most one. The
    readers' ranges are disjoint and, for one rank, cover the whole stream.
    """
    per_rank = total // world_size
    start = rank * per_rank
    return (start + worker * per_rank // num_workers,
            start + (worker + 1) * per_rank // num_workers)


def left_out_start(total: int, left_out: int, seed: Optional[int], epoch: int = 0) -> int:
    """Where in a stream of ``total`` samples the ``left_out`` ones no rank takes (the split's
    samples % world_size) start: at the end, or with a seed at a place drawn by (seed, epoch),
    so that other samples are left out each epoch (on a split of one shard too, whose order no
    seed changes)."""
    if seed is None or left_out == 0:
        return total - left_out
    return int(loader_rng(seed, epoch, LEFT_OUT).integers(0, total - left_out + 1))


def stream_ranges(lo: int, hi: int, start: int, left_out: int) -> List[Tuple[int, int]]:
    """A reader's samples [lo, hi) (numbered among the samples taken, as ``reader_range`` gives
    them) as [a, b) ranges of the stream, around the ``left_out`` samples at ``start``."""
    ranges = [(lo, min(hi, start)), (max(lo, start) + left_out, hi + left_out)]
    return [(a, b) for a, b in ranges if a < b]


def shard_slices(counts: Sequence[int], lo: int, hi: int) -> List[Tuple[int, int, int]]:
    """(shard index, samples to skip, samples to take) of the shards of a stream (shards of
    ``counts`` samples, in order) that hold its samples [lo, hi)."""
    out, start = [], 0
    for i, n in enumerate(counts):
        first, stop = max(lo, start), min(hi, start + n)
        if first < stop:
            out.append((i, first - start, stop - first))
        start += n
    return out


def num_batches(total: int, batch_size: int, num_workers: int = 0, world_size: int = 1,
                drop_last: bool = False) -> int:
    """Batches one rank's DataLoader gives in an epoch over a stream of ``total`` samples: each
    worker batches its own range, so each can end with a partial batch of its own."""
    sizes = [hi - lo for lo, hi in (reader_range(total, 0, world_size, w, max(1, num_workers))
                                    for w in range(max(1, num_workers)))]
    return sum(n // batch_size if drop_last else -(-n // batch_size) for n in sizes)


def buffer_shuffle(items: Iterable, buffer_size: int, rng: np.random.Generator) -> Iterator:
    """``items`` in an order drawn by ``rng`` from a buffer of ``buffer_size``: each item that
    arrives replaces a random one of the buffer, which is yielded; the rest come last, permuted.
    Every item comes once; the same ``rng`` seed gives the same order."""
    if buffer_size <= 0:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = int(rng.integers(buffer_size))
        yield buffer[i]
        buffer[i] = item
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


def interleave(iterables: Iterable[Iterable], k: int) -> Iterator:
    """The items of ``iterables``, ``k`` of them read at once: one item from each in turn, an
    iterable that ends replaced in its place by the next one (tf.data's ``interleave`` with
    ``cycle_length=k``, ``block_length=1``); ``k=1``: one after another. Every item comes once,
    each iterable's in their order; iterables are opened (iterated) only when their turn
    comes."""
    pending = iter(iterables)
    cycle = [iter(i) for i in itertools.islice(pending, k)]
    ended = object()
    place = 0
    while cycle:
        item = next(cycle[place], ended)
        if item is ended:   # the next iterable takes its place, or the cycle shrinks
            following = next(pending, ended)
            if following is not ended:
                cycle[place] = iter(following)
                continue
            del cycle[place]
            if place == len(cycle):
                place = 0
            continue
        yield item
        place = (place + 1) % len(cycle)


def input_target(source_zyx: np.ndarray, seed_zyx: np.ndarray,
                 target_zyx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 [z, y, x] arrays -> input float32 [2, z, y, x] (source/255, seed), target [1, z, y, x].

    Written straight into the outputs (float32 division, as ``source.astype(float32) / 255``
    gives): the temporaries and the copy of ``np.stack`` took half a loader's time."""
    inputs = np.empty((2,) + source_zyx.shape, np.float32)
    np.divide(source_zyx, np.float32(255), out=inputs[0], dtype=np.float32)
    inputs[1] = seed_zyx
    target = np.empty((1,) + target_zyx.shape, np.float32)
    target[0] = target_zyx
    return inputs, target


def __getattr__(name: str):
    """``ShardDataset`` and ``NpyDataset`` need torch: import them only when asked for. Without
    torch they import as stand-ins whose use raises the ImportError naming the extra, so that
    ``from synanno_datagen import ShardDataset, tf_dataset`` works for TensorFlow users too."""
    if name in ("ShardDataset", "NpyDataset"):
        try:
            from synanno_datagen.reading import torch_datasets
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            return _without_torch(name)
        return getattr(torch_datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _without_torch(name: str) -> type:
    """A stand-in for the torch dataset ``name`` (one per name, so that it is the same class at
    every lookup, and pickles): making one raises the ImportError naming the extra."""
    def refuse(*args, **kwargs):
        raise missing_extra("PyTorch", "torch")

    return type(name, (), {"__new__": refuse, "__doc__": f"{name}: needs PyTorch (not here)"})


def tf_dataset(dataset_dir: str, split: str, *, channels_last: bool = False,
               with_meta: bool = False, num_parallel_reads: Optional[int] = None,
               shuffle_seed: Optional[int] = None):
    """A ``tf.data.Dataset`` of (input, target) float32 samples over ``split``'s TFRecord shards,
    one per variant: an instance record gives all of its variants, one after another.

    Records are parsed with a feature spec built from the manifest's ``features`` (the seed
    slices and ``seed_slice_counts`` as ``tf.io.RaggedFeature`` lists, then split by the counts
    into one row per variant), and checked as ``records.check_record`` checks them: a record
    that is not one of the dataset's raises InvalidArgumentError as it is read. Shapes are
    ``[2, z, y, x]`` and ``[1, z, y, x]``, or with ``channels_last`` ``[z, y, x, 2]`` and
    ``[z, y, x, 1]`` (what Keras' Conv3D takes on CPU). ``with_meta`` adds a third element
    ``{"instance_id", "variant"}`` (int64 scalars). Paths may be local or ``gs://``; gzip shards
    are read with ``compression_type="GZIP"``. Its cardinality is the manifest's count of the
    split's samples. Shards are read in the manifest's order (they are spatial: neighbouring
    synapses are neighbours), ``num_parallel_reads`` of them at once; with ``shuffle_seed``
    (0 to 2**63 - 1) in an order drawn anew at each iteration (each epoch) by
    ``tf.data.Dataset.shuffle`` with that seed: the same orders for the same seed.
    """
    shuffle_seed = checked_seed(shuffle_seed)
    if str(dataset_dir).startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
        raise DatasetError(f"{dataset_dir}: tf_dataset reads gs:// through TensorFlow's GCS "
                           "client, which ignores STORAGE_EMULATOR_HOST (it would read Google's "
                           "files, not the emulator's); copy the dataset to a local folder, or "
                           "unset the variable to read from Google")
    try:
        import tensorflow as tf
    except ModuleNotFoundError as e:
        raise missing_extra("TensorFlow", "tf") from e

    dataset = open_dataset(dataset_dir)
    manifest = dataset.manifest
    records_info = layout.records_info(manifest)
    shape_zyx = manifest["arrays"]["shape_zyx"]
    entries = dataset.checked_files(dataset.files("tfrecord", split))
    spec = feature_spec(dataset.manifest_path, manifest, tf)
    files = [dataset.path(f["path"]) for f in entries]
    samples = sum(f["records"] for f in entries) * dataset.variants_per_record

    def floats(source, target):
        """uint8 source and target -> float32 source / 255 and target [1, z, y, x]: once per
        record, whatever its variants."""
        return tf.cast(source, tf.float32) / 255.0, tf.cast(target, tf.float32)[None]

    def sample(scaled, seed, target, instance_id, variant):
        inputs = tf.stack([scaled, tf.cast(seed, tf.float32)])
        if channels_last:
            inputs, target = tf.transpose(inputs, [1, 2, 3, 0]), tf.transpose(target, [1, 2, 3, 0])
        if with_meta:
            return inputs, target, {"instance_id": instance_id, "variant": variant}
        return inputs, target

    def array(f, key):
        return tf.reshape(tf.io.decode_raw(f[key], tf.uint8), shape_zyx)

    def parse(serialized):
        """The record's features, once it is one of the dataset's (records.check_record)."""
        f = tf.io.parse_single_example(serialized, spec)
        with tf.control_dependencies(record_checks(tf, f, shape_zyx, dataset.variants)):
            return {key: tf.identity(value) for key, value in f.items()}

    def one_variant(serialized):
        f = parse(serialized)
        scaled, target = floats(array(f, "source"), array(f, "target"))
        return sample(scaled, array(f, "seed_target"), target, f["instance_id"], f["variant"])

    def every_variant(serialized):
        f = parse(serialized)
        source, target = array(f, "source"), array(f, "target")
        slices = tf.RaggedTensor.from_row_lengths(f["seed_slices"], f["seed_slice_counts"])
        seeds = seed_masks(tf, target, slices)
        variants = tf.range(tf.shape(seeds, out_type=tf.int64)[0])
        scaled, target = floats(source, target)
        return tf.data.Dataset.from_tensor_slices((seeds, variants)).map(
            lambda seed, v: sample(scaled, seed, target, f["instance_id"], v))

    compression = records_info["tfrecord_compression_type"]
    if shuffle_seed is None:
        records = tf.data.TFRecordDataset(files, compression_type=compression,
                                          num_parallel_reads=num_parallel_reads)
    else:   # the shards' order drawn at each iteration; read as TFRecordDataset reads them
        records = (tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
                   .shuffle(max(1, len(files)), seed=shuffle_seed,
                            reshuffle_each_iteration=True)
                   .interleave(lambda f: tf.data.TFRecordDataset(f, compression),
                               cycle_length=num_parallel_reads or 1,
                               **({"num_parallel_calls": num_parallel_reads,
                                   "deterministic": True} if num_parallel_reads else {})))
    if records_info["layout"] == "instance":
        samples_ds = records.flat_map(every_variant)
    else:
        samples_ds = records.map(one_variant, num_parallel_calls=tf.data.AUTOTUNE)
    # the count the manifest lists (Keras then knows an epoch's steps; another count fails)
    return samples_ds.apply(tf.data.experimental.assert_cardinality(samples))


def seed_masks(tf, target, seed_slices):
    """uint8 [variants, z, y, x]: the uint8 [z, y, x] ``target`` on each variant's seed slices,
    zero elsewhere (``record_format.seed_mask`` per variant); ``seed_slices``: an int64
    RaggedTensor [variants, (slices)], as an instance record's ``seed_slices`` parse."""
    slices = seed_slices.to_tensor(default_value=-1)    # [variants, most slices]; -1: no slice
    z = tf.range(tf.shape(target, out_type=tf.int64)[0])
    keep = tf.reduce_any(tf.equal(z[None, :, None], slices[:, None, :]), axis=2)
    return tf.cast(keep, tf.uint8)[:, :, None, None] * target[None]


def record_checks(tf, features: dict, shape_zyx: Sequence[int], variants: int) -> list:
    """Assertions that parsed ``features`` are a record of the dataset, as
    ``records.check_record`` checks one (shape, seed slices, their counts, the variant): an
    InvalidArgumentError as the record is read, not arrays of another shape or, from counts
    adding up to more slices than there are, a crash in TensorFlow's ragged ops."""
    assert_ = tf.debugging.assert_equal
    checks = [assert_(features["shape"], tf.constant(list(shape_zyx), tf.int64),
                      message=f"a record's shape is not the manifest's arrays {list(shape_zyx)}")]
    if "seed_slices" in features:
        slices = features["seed_slices"]
        checks.append(assert_(
            tf.reduce_all((slices >= 0) & (slices < shape_zyx[0])), True,
            message=f"a record's seed slice is outside the crop's {shape_zyx[0]} slices"))
    if "seed_slice_counts" in features:
        counts = features["seed_slice_counts"]
        checks.append(assert_(
            (tf.size(counts) == variants) & tf.reduce_all(counts >= 1)
            & (tf.reduce_sum(counts) == tf.size(slices, out_type=tf.int64)), True,
            message=f"a record's seed_slice_counts are not {variants} variants' counts of its "
                    "seed slices"))
    if "variant" in features:
        checks.append(assert_((features["variant"] >= 0) & (features["variant"] < variants), True,
                              message=f"a record's variant is not one of the manifest's "
                                      f"{variants}"))
    return checks


def feature_spec(manifest_path: str, manifest: dict, tf) -> dict:
    """tf.io feature spec of what a sample is made of in the manifest's record layout, and the
    ``shape`` and seed slices its checks need (the slices, and an instance record's
    ``seed_slice_counts``, as lists: ``tf_dataset`` splits them once checked); the other features
    are not parsed, so one this version does not know (a newer writer's, of any kind) changes
    nothing. DatasetError, naming ``manifest_path``, when the manifest lists no feature a
    sample needs."""
    if layout.records_info(manifest)["layout"] == "instance":
        needed = ("source", "target", "shape", "instance_id", "seed_slices", "seed_slice_counts")
    else:
        needed = ("source", "target", "shape", "seed_target", "instance_id", "variant",
                  "seed_slices")
    features = manifest.get("features")
    listed = {f.get("name") for f in features if isinstance(f, dict)} \
        if isinstance(features, list) else set()
    missing = [name for name in needed if name not in listed]
    if missing:
        raise DatasetError(f"{manifest_path}: its features list no {', '.join(missing)}, which "
                           "a sample is made of; the manifest was changed, generate the dataset "
                           "again")
    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in ("source", "target")}
    spec["shape"] = tf.io.FixedLenFeature([3], tf.int64)
    # the seed slices, and their counts, as lists: split by the counts once they are checked
    spec["seed_slices"] = tf.io.RaggedFeature(tf.int64)
    if "variant" in needed:
        spec.update(seed_target=tf.io.FixedLenFeature([], tf.string),
                    variant=tf.io.FixedLenFeature([], tf.int64))
    else:
        spec["seed_slice_counts"] = tf.io.RaggedFeature(tf.int64)
    spec["instance_id"] = tf.io.FixedLenFeature([], tf.int64)
    return spec
