"""Training loaders over a generated dataset: PyTorch (TFRecord shards or npy files), TensorFlow.

Every loader yields the same pair, float32, axes (channel, z, y, x):
``input [2, z, y, x]`` = (source / 255, seed_target) and ``target [1, z, y, x]`` = target (0/1).

This module imports neither torch nor tensorflow. ``ShardDataset`` (a ``torch`` IterableDataset
over a split's TFRecord shards, read with the ``tfrecord`` package) and ``NpyDataset`` (a map-style
``torch`` Dataset over the npy files) load ``pipeline.torch_datasets`` on first use, and
``tf_dataset`` imports tensorflow when called; a missing framework raises an ImportError that names
the extra to install. The torch loaders read local paths; ``tf_dataset`` also reads ``gs://``.
"""
from __future__ import annotations

import json
import posixpath
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

MANIFEST = "manifest.json"
LATEST = "LATEST"
# Features a loader decodes from a record (all in the contract part of the feature table).
RECORD_FEATURES = {"source": "byte", "target": "byte", "seed_target": "byte", "shape": "int",
                   "instance_id": "int", "variant": "int"}


def missing_extra(framework: str, extra: str) -> ImportError:
    return ImportError(f"this loader needs {framework}, which is an optional extra: "
                       f"pip install synanno-datagen[{extra}]")


def _join(base: str, rel: str) -> str:
    return rel if "://" in rel or rel.startswith("/") else posixpath.join(base, rel)


def open_dataset(dataset_dir: str, read_text: Callable[[str], str] = None) -> Tuple[dict, str]:
    """(manifest, base directory its file paths are relative to) of a finished dataset.

    ``dataset_dir`` is a run's output directory, or an incremental dataset root (its ``LATEST``
    pointer is followed; an incremental manifest's paths are relative to that root).
    """
    read_text = read_text or _read_local
    root = str(dataset_dir).rstrip("/")
    try:
        manifest_path = _join(root, read_text(_join(root, LATEST)).strip())
    except FileNotFoundError:
        manifest_path = _join(root, MANIFEST)
    try:
        manifest = json.loads(read_text(manifest_path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: no manifest, so {root} is not a finished "
                                f"dataset (the manifest is written last)") from None
    base = posixpath.dirname(manifest_path)
    if "incremental" in manifest:  # paths are relative to the root, above runs/NNNNN
        run_dir = manifest["incremental"]["run_dir"]
        base = base[:-len(run_dir)].rstrip("/") if base.endswith(run_dir) else base
    return manifest, base


def _read_local(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def split_files(manifest: dict, base: str, split: str, kind: str) -> List[str]:
    """Paths of the ``kind`` ('tfrecord' or 'index') shards of ``split``, in manifest order."""
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} is not in this dataset (it has "
                         f"{', '.join(manifest['splits']) or 'no splits'})")
    if kind == "tfrecord" and "tfrecord" not in manifest["config"]["formats"]:
        raise ValueError("this dataset has no TFRecord shards (made with --formats "
                         f"{','.join(manifest['config']['formats'])}); use NpyDataset")
    return [_join(base, f["path"]) for f in manifest["files"][kind] if f["split"] == split]


def shard_order(paths: Sequence[str], seed: Optional[int], epoch: int = 0) -> List[str]:
    """``paths`` as given, or permuted by a generator seeded with (seed, epoch)."""
    if seed is None:
        return list(paths)
    order = np.random.default_rng([seed, epoch]).permutation(len(paths))
    return [paths[i] for i in order]


def worker_share(paths: Sequence[str], worker: int, num_workers: int) -> List[str]:
    """The shards one of ``num_workers`` readers reads: every ``num_workers``-th from ``worker``.

    The shares of workers 0..num_workers-1 partition ``paths``.
    """
    return list(paths[worker::num_workers])


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


def read_shard(path: str) -> Iterator[dict]:
    """Decoded records of one TFRecord shard: source, target, seed_target (uint8 [z, y, x]),
    instance_id, variant (int)."""
    from tfrecord.reader import tfrecord_loader

    for r in tfrecord_loader(path, None, RECORD_FEATURES):
        shape = tuple(int(v) for v in r["shape"])
        yield {"source": np.frombuffer(r["source"], np.uint8).reshape(shape),
               "target": np.frombuffer(r["target"], np.uint8).reshape(shape),
               "seed_target": np.frombuffer(r["seed_target"], np.uint8).reshape(shape),
               "instance_id": int(r["instance_id"][0]), "variant": int(r["variant"][0])}


def input_target(source_zyx: np.ndarray, seed_zyx: np.ndarray,
                 target_zyx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 [z, y, x] arrays -> input float32 [2, z, y, x] (source/255, seed), target [1, z, y, x]."""
    inputs = np.stack([source_zyx.astype(np.float32) / np.float32(255),
                       seed_zyx.astype(np.float32)])
    return inputs, target_zyx.astype(np.float32)[None]


def npy_items(manifest: dict, base: str, split: str) -> List[Dict]:
    """One item per (instance, variant) of ``split``, in index order: ids and npy paths."""
    if "npy" not in manifest["config"]["formats"]:
        raise ValueError("this dataset has no npy files (made with --formats "
                         f"{','.join(manifest['config']['formats'])}); use ShardDataset")
    items = []
    for index_path in split_files(manifest, base, split, "index"):
        # npy paths are relative to the run folder holding index/ (an incremental run's own).
        run_dir = posixpath.dirname(posixpath.dirname(index_path))
        for line in _read_local(index_path).splitlines():
            entry = json.loads(line)
            npy = entry["npy"]
            for variant, seed_path in enumerate(npy["seed_target"]):
                items.append({"instance_id": entry["instance_id"], "variant": variant,
                              "source": _join(run_dir, npy["source"]),
                              "target": _join(run_dir, npy["target"]),
                              "seed_target": _join(run_dir, seed_path)})
    return items


def __getattr__(name: str):
    """``ShardDataset`` and ``NpyDataset`` need torch: import them only when asked for."""
    if name in ("ShardDataset", "NpyDataset"):
        try:
            from synanno_datagen.reading import torch_datasets
        except ModuleNotFoundError as e:
            if e.name != "torch":
                raise
            raise missing_extra("PyTorch", "torch") from e
        return getattr(torch_datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tf_dataset(dataset_dir: str, split: str, *, channels_last: bool = False,
               with_meta: bool = False, num_parallel_reads: Optional[int] = None):
    """A ``tf.data.Dataset`` of (input, target) float32 over ``split``'s TFRecord shards.

    Records are parsed with a feature spec built from the manifest's ``features``. Shapes are
    ``[2, z, y, x]`` and ``[1, z, y, x]``, or with ``channels_last`` ``[z, y, x, 2]`` and
    ``[z, y, x, 1]`` (what Keras' Conv3D takes on CPU). ``with_meta`` adds a third element
    ``{"instance_id", "variant"}`` (int64 scalars). Paths may be local or ``gs://``.
    """
    try:
        import tensorflow as tf
    except ModuleNotFoundError as e:
        raise missing_extra("TensorFlow", "tf") from e

    def read_text(path):
        try:
            with tf.io.gfile.GFile(path) as f:
                return f.read()
        except tf.errors.NotFoundError:
            raise FileNotFoundError(path) from None

    manifest, base = open_dataset(dataset_dir, read_text)
    spec = feature_spec(manifest, tf)
    shape_zyx = manifest["arrays"]["shape_zyx"]
    files = split_files(manifest, base, split, "tfrecord")

    def parse(serialized):
        f = tf.io.parse_single_example(serialized, spec)
        source, seed, target = (
            tf.reshape(tf.io.decode_raw(f[k], tf.uint8), shape_zyx)
            for k in ("source", "seed_target", "target"))
        inputs = tf.stack([tf.cast(source, tf.float32) / 255.0, tf.cast(seed, tf.float32)])
        target = tf.cast(target, tf.float32)[None]
        if channels_last:
            inputs, target = tf.transpose(inputs, [1, 2, 3, 0]), tf.transpose(target, [1, 2, 3, 0])
        if with_meta:
            return inputs, target, {"instance_id": f["instance_id"], "variant": f["variant"]}
        return inputs, target

    records = tf.data.TFRecordDataset(files, num_parallel_reads=num_parallel_reads)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def feature_spec(manifest: dict, tf) -> dict:
    """tf.io feature spec of every feature the manifest lists (``kind`` bytes or int64)."""
    spec = {}
    for f in manifest["features"]:
        if f["kind"] == "bytes":
            spec[f["name"]] = tf.io.FixedLenFeature([], tf.string)
        elif f["shape"] == [-1]:
            spec[f["name"]] = tf.io.VarLenFeature(tf.int64)
        else:
            spec[f["name"]] = tf.io.FixedLenFeature(f["shape"], tf.int64)
    return spec
