"""Open a finished dataset for reading: its manifest, index lines and dead letters (local or gs://).

A dataset directory holds ``manifest.json``; an incremental root holds ``LATEST``, which names the
latest run's manifest, whose file paths are relative to the root. Missing or unreadable pieces are
user errors (ConfigError: one line, exit code 2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, List, Tuple

from apache_beam.io.filesystems import FileSystems

from synanno_datagen.pipeline.config import ConfigError
from synanno_datagen.pipeline.incremental import LATEST, read_latest
from synanno_datagen.pipeline.manifest import MANIFEST
from synanno_datagen.transforms.files import join


@dataclass(frozen=True)
class Dataset:
    """A finished dataset: ``root`` is the directory the manifest's file paths are relative to."""

    root: str
    manifest_path: str
    manifest: dict

    def path(self, relative: str) -> str:
        return join(self.root, relative)


def open_dataset(output_dir: str) -> Dataset:
    """The dataset in ``output_dir`` (a run's output directory or an incremental root)."""
    root = output_dir.rstrip("/") or output_dir
    direct = join(root, MANIFEST)
    try:
        if FileSystems.exists(direct):
            with FileSystems.open(direct) as f:
                return Dataset(root, direct, json.load(f))
        if FileSystems.exists(join(root, LATEST)):
            manifest = read_latest(root)
            return Dataset(root, join(root, manifest["incremental"]["manifest"]), manifest)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{output_dir}: cannot read the manifest ({type(e).__name__}: {e})")
    raise ConfigError(f"{output_dir}: not a dataset directory (no {MANIFEST}; "
                      f"a run that did not finish writes none)")


def _read_jsonl(dataset: Dataset, relative: str) -> Iterator[dict]:
    path = dataset.path(relative)
    try:
        with FileSystems.open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({type(e).__name__}: {e})")


def read_index_shards(dataset: Dataset) -> List[Tuple[str, List[dict]]]:
    """(index shard path relative to root, its lines) for every index shard the manifest lists."""
    return [(shard["path"], list(_read_jsonl(dataset, shard["path"])))
            for shard in dataset.manifest["files"]["index"]]


def read_index(dataset: Dataset) -> List[dict]:
    """Every index line of every index shard the manifest lists, in listing order."""
    return [entry for _, entries in read_index_shards(dataset) for entry in entries]


def read_dead_letters(dataset: Dataset) -> List[dict]:
    """The dead-letter lines of the (latest) run, in file order."""
    return list(_read_jsonl(dataset, dataset.manifest["files"]["dead_letter"]["path"]))


def tfrecord_shard_for(dataset: Dataset, index_path: str) -> str:
    """The TFRecord shard (path relative to root) holding the records of an index shard."""
    head, _, name = index_path.rpartition("index/")
    candidate = head + "tfrecord/" + name[: -len(".jsonl")] + ".tfrecord"
    listed = {f["path"] for f in dataset.manifest["files"]["tfrecord"]}
    if candidate not in listed:
        raise ConfigError(f"{dataset.root}: no TFRecord shard for {index_path} (was the dataset "
                          f"written with --formats npy only?)")
    return candidate
