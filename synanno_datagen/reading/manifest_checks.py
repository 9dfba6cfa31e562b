"""What a reader takes from a manifest, checked once as the dataset is opened.

A manifest is data from storage: one changed by hand, cut, or written by someone else may hold a
negative count, a file entry without a path, an unknown layout. Read unchecked, such values
made epochs quietly shorter (a split's records of -12: no sample), or failed later as a
KeyError or TypeError traceback in ``preview``; here they are one message naming the field.
"""
from __future__ import annotations

import reprlib
from typing import Iterator, Optional

from synanno_datagen import layout

_shown = reprlib.repr   # a value as the message shows it (bounded, whatever its size)


def _whole(value, least: int = 0) -> bool:
    return type(value) is int and value >= least


def manifest_problem(manifest: dict) -> Optional[str]:
    """The first field of ``manifest`` (an object with config, counts and files objects) that
    is not what this tool writes, described for an error line; None when every one a reader
    uses is: ``config.variants`` and ``config.formats``, ``records`` (layout, compression),
    ``splits`` (records per split), the file entries (path, split, shard numbers, records,
    bytes) and, per split, its shards' records adding up to the split's."""
    return next(_problems(manifest), None)


def _problems(manifest: dict) -> Iterator[str]:
    config = manifest["config"]
    if not _whole(config.get("variants"), 1):
        yield f"config.variants {_shown(config.get('variants'))} is not a whole number from 1"
    formats = config.get("formats")
    if not (isinstance(formats, list) and formats and all(f in layout.FORMATS for f in formats)):
        yield f"config.formats {_shown(formats)} is not a list of {', '.join(layout.FORMATS)}"
    records = manifest.get("records", {})
    if not isinstance(records, dict):
        yield f"records {_shown(records)} is not an object"
        return
    for key, known in (("layout", layout.RECORD_LAYOUTS), ("compression", layout.COMPRESSIONS)):
        if records.get(key, layout.LEGACY_RECORDS[key]) not in known:
            yield f"records.{key} {_shown(records.get(key))} is not one of {', '.join(known)}"
    splits = manifest.get("splits")
    if not (isinstance(splits, dict) and all(
            isinstance(s, dict) and _whole(s.get("records")) for s in splits.values())):
        yield "splits is not an object of splits, each with its records (a whole number)"
        return
    yield from _file_problems(manifest["files"], splits, layout.TFRECORD in formats)


def _file_problems(files: dict, splits: dict, with_tfrecord: bool) -> Iterator[str]:
    totals = {split: 0 for split in splits}
    for kind in (layout.TFRECORD, "index"):
        entries = files.get(kind, [])
        if not isinstance(entries, list):
            yield f"files.{kind} is not a list"
            continue
        for i, f in enumerate(entries):
            where = f"files.{kind}[{i}]"
            if not (isinstance(f, dict) and isinstance(f.get("path"), str)):
                yield f"{where} is not a file entry with a path"
            elif f.get("split") not in splits:
                yield f"{where}.split {_shown(f.get('split'))} is not one of the splits"
            elif not (_whole(f.get("shard")) and _whole(f.get("num_shards"), 1)):
                yield f"{where}: its shard and num_shards are not whole numbers"
            elif any(key in f and not _whole(f[key]) for key in ("records", "bytes")):
                yield f"{where}: its records or bytes are not whole numbers"
            elif kind == layout.TFRECORD and totals[f["split"]] is not None:
                # (an entry of an early version may list no records: its split is not added up)
                totals[f["split"]] = totals[f["split"]] + f["records"] if "records" in f else None
    dead_letter = files.get("dead_letter")
    if not (isinstance(dead_letter, dict) and isinstance(dead_letter.get("path"), str)
            and _whole(dead_letter.get("bytes", 0))):
        yield "files.dead_letter is not a file entry with a path"
    for split, total in totals.items():
        if with_tfrecord and total is not None and total != splits[split]["records"]:
            yield (f"splits.{split}.records {splits[split]['records']} is not the "
                   f"{total} records of its shards")
