"""Checks of the ``run`` flags' values that need no storage: numbers, formats, splits, missing
chunk modes. Each failure is a ConfigError naming the flag and what it must be."""
from __future__ import annotations

import math
import re
from typing import Tuple

from synanno_datagen.errors import ConfigError
from synanno_datagen.layout import FORMATS
from synanno_datagen.pipeline.options import NEAREST
from synanno_datagen.transforms.volumes import DEFAULT_MISSING_CHUNKS, MISSING_CHUNK_MODES

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")   # whole names (fullmatch: "$" takes a final "\n")


MAX_LEASE_HOURS = 8760
MAX_FETCH_MEMORY_MB = 1 << 20   # 1 TiB


def check_numbers(args) -> None:
    """Every numeric flag within its range."""
    checks = [
        ("--variants", args.variants, args.variants >= 1, "at least 1"),
        ("--max-seed-slices", args.max_seed_slices, args.max_seed_slices >= 1, "at least 1"),
        ("--crop-size", args.crop_size, all(c >= 1 for c in args.crop_size), "positive"),
        ("--source-mip", args.source_mip, args.source_mip == NEAREST or args.source_mip >= 0,
         "0 or more, or 'nearest'"),
        ("--pad-value", args.pad_value, 0 <= args.pad_value <= 255, "0..255 (uint8 raw)"),
        ("--seed", args.seed, 0 <= args.seed < 2**63, "0 to 2**63 - 1"),
        ("--shard-size-mb", args.shard_size_mb,
         math.isfinite(args.shard_size_mb) and args.shard_size_mb > 0, "positive"),
        ("--fetch-memory-mb", args.fetch_memory_mb, 16 <= args.fetch_memory_mb
         <= MAX_FETCH_MEMORY_MB, f"at least 16, at most {MAX_FETCH_MEMORY_MB} (1 TiB)"),
        ("--lease-hours", args.lease_hours, 0 < args.lease_hours <= MAX_LEASE_HOURS,
         f"positive, at most {MAX_LEASE_HOURS} (a year)"),
    ]
    if args.block_size is not None:
        checks.append(("--block-size", args.block_size, all(b >= 1 for b in args.block_size),
                       "positive"))
    if args.coordinate_resolution is not None:
        checks.append(("--coordinate-resolution", args.coordinate_resolution,
                       all(math.isfinite(r) and r > 0 for r in args.coordinate_resolution),
                       "positive nm per table unit"))
    if args.num_instances is not None:
        checks.append(("--num-instances", args.num_instances, args.num_instances >= 1,
                       "at least 1 (leave it out for all)"))
    for flag, value, ok, want in checks:
        if not ok:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise ConfigError(f"{flag} {shown}: must be {want}")


def parse_formats(text: str) -> Tuple[str, ...]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in names if f not in FORMATS]
    if not names or bad:
        raise ConfigError(f"--formats {text!r}: use tfrecord, npy or tfrecord,npy")
    return tuple(f for f in FORMATS if f in names)


def parse_missing_chunks(text: str) -> Tuple[str, str]:
    """``error``, ``zero`` or ``source=MODE,target=MODE`` -> (source mode, target mode); a
    volume left out keeps its default."""
    modes = dict(zip(("source", "target"), DEFAULT_MISSING_CHUNKS))
    text = text.strip()
    if text in MISSING_CHUNK_MODES:
        return text, text
    named = set()
    for part in text.split(","):
        volume, _, mode = part.strip().partition("=")
        if volume not in modes or mode not in MISSING_CHUNK_MODES:
            raise ConfigError(f"--missing-chunks {text}: expected 'error', 'zero' or "
                              "'source=error|zero,target=error|zero'")
        if volume in named:
            raise ConfigError(f"--missing-chunks {text}: {volume} is named twice; name each "
                              "volume once")
        named.add(volume)
        modes[volume] = mode
    return modes["source"], modes["target"]


_SPLIT_ORDER = ("train", "val", "test")


def parse_splits(text: str) -> Tuple[Tuple[str, float], ...]:
    """'val=0.1,train=0.8,test=0.1' -> (('train', 0.8), ('val', 0.1), ('test', 0.1)); fractions
    must sum to 1. The order written does not matter (the manifest keeps the fractions by name):
    train, val and test come first, in that order, then other names alphabetically."""
    splits = []
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not part.strip():
            problem = "an empty pair (a stray comma?)"
        elif not sep:
            problem = "write name=fraction, e.g. train=0.8,val=0.1,test=0.1"
        elif not _SPLIT_NAME.fullmatch(name):
            problem = "a split name is letters, digits and '_'"
        else:
            try:
                fraction = float(value)
            except ValueError:
                fraction, problem = None, f"{value!r} is not a number"
            else:
                problem = None if 0 < fraction <= 1 else \
                    "a fraction must be above 0 and at most 1"
        if problem:
            raise ConfigError(f"--splits {text!r}: {part.strip()!r}: {problem}")
        splits.append((name, fraction))
    if len({n for n, _ in splits}) != len(splits):
        raise ConfigError(f"--splits {text!r}: a split name appears twice")
    if abs(sum(f for _, f in splits) - 1.0) > 1e-6:
        raise ConfigError(f"--splits {text!r}: fractions sum to {sum(f for _, f in splits):g}, "
                          "not 1")
    rank = {name: k for k, name in enumerate(_SPLIT_ORDER)}
    return tuple(sorted(splits, key=lambda s: (rank.get(s[0], len(rank)), s[0])))


