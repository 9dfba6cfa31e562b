"""Command-line options -> one frozen, validated Config (plus the arguments left for Beam).

Every check runs before any Beam work starts; a failure raises ConfigError with one line that
names the flag or input and says what to do (the CLI prints it and exits with code 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from synanno_datagen.errors import ConfigError
from synanno_datagen.pipeline.incremental import IncrementalPlan
from synanno_datagen.pipeline.table_options import describe_table
from synanno_datagen.transforms.geometry import nearest_mip, scale_factors
from synanno_datagen.transforms.points import TableLayout, to_target_factors
from synanno_datagen.transforms.seeds import SeedModel
from synanno_datagen.transforms.readers import ENGINES, TENSORSTORE, describe_volume, mip_resolutions
from synanno_datagen.transforms.volumes import MISSING_CHUNK_MODES, VolumeSpec

FORMATS = ("tfrecord", "npy")
DEFAULT_SPLITS = (("train", 1.0),)
# An absent chunk of the labels is background (tensorstore and igneous store no all-zero chunk);
# an absent chunk of the raw EM is missing data.
DEFAULT_MISSING_CHUNKS = ("error", "zero")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Config:
    """Everything a run needs, as plain values (workers receive parts of it, never globals)."""

    materialization: str
    table_shards: Tuple[str, ...]
    id_column: Optional[str]
    source: VolumeSpec
    target: VolumeSpec
    scale_xyz: Tuple[int, int, int]
    output_dir: str
    num_instances: Optional[int] = None
    variants: int = 4
    seed_model: SeedModel = field(default_factory=SeedModel)
    crop_size_xyz: Tuple[int, int, int] = (128, 128, 16)
    pad_value: int = 148
    seed: int = 0
    formats: Tuple[str, ...] = FORMATS
    splits: Tuple[Tuple[str, float], ...] = DEFAULT_SPLITS
    shard_size_mb: float = 256.0
    overwrite: bool = False
    incremental: Optional[IncrementalPlan] = None  # run number, what it extends
    fetch_strategy: str = "grouped"
    block_size_xyz: Optional[Tuple[int, int, int]] = None  # None: chosen from chunks and memory
    fetch_memory_mb: int = 1024
    missing_chunks: Tuple[str, str] = DEFAULT_MISSING_CHUNKS  # (source, target): error or zero
    volume_reader: str = TENSORSTORE
    table_format: str = "csv"
    points: TableLayout = field(default_factory=TableLayout)  # point columns, units -> voxels
    center_column: Optional[str] = None  # the column flags as given (None: the default)
    pre_column: Optional[str] = None
    post_column: Optional[str] = None
    coordinate_resolution_nm: Optional[Tuple[float, float, float]] = None  # None: the target's

    def generation(self) -> dict:
        """The options that decide the records' bytes (an incremental run extends a dataset only
        when these are unchanged)."""
        generation = {
            "source_url": self.source.url, "source_mip": self.source.mip,
            "target_url": self.target.url, "crop_size_xyz": list(self.crop_size_xyz),
            "variants": self.variants, "seed_model": self.seed_model.to_manifest(),
            "seed": self.seed, "pad_value": self.pad_value, "formats": list(self.formats),
            "splits": [list(s) for s in self.splits], "id_column": self.id_column,
        }
        if self.missing_chunks != DEFAULT_MISSING_CHUNKS:  # absent when default: older hashes hold
            generation["missing_chunks"] = dict(zip(("source", "target"), self.missing_chunks))
        if self.points != TableLayout():  # other columns, no pre/post, or other units
            generation["table_points"] = self.points.to_manifest()
        return generation

    @property
    def source_shape_zyx(self) -> Tuple[int, int, int]:
        return tuple(c * f for c, f in zip(self.crop_size_xyz, self.scale_xyz))[::-1]

    @property
    def bytes_per_instance(self) -> int:
        """Approximate TFRecord bytes of one instance (3 uint8 arrays per variant)."""
        z, y, x = self.source_shape_zyx
        return max(1, self.variants * 3 * x * y * z)

    def to_manifest(self) -> dict:
        """The options as given (no derived volume facts, no credentials)."""
        return {
            "materialization": self.materialization, "table_shards": list(self.table_shards),
            "id_column": self.id_column, "source_url": self.source.url,
            "target_url": self.target.url, "output_dir": self.output_dir,
            "num_instances": self.num_instances, "variants": self.variants,
            "max_seed_slices": self.seed_model.max_seed_slices,
            "crop_size_xyz": list(self.crop_size_xyz), "source_mip": self.source.mip,
            "pad_value": self.pad_value, "seed": self.seed, "formats": list(self.formats),
            "splits": {name: fraction for name, fraction in self.splits},
            "shard_size_mb": self.shard_size_mb, "incremental": self.incremental is not None,
            "fetch_strategy": self.fetch_strategy,
            "block_size_xyz": list(self.block_size_xyz) if self.block_size_xyz else None,
            "fetch_memory_mb": self.fetch_memory_mb,
            "missing_chunks": dict(zip(("source", "target"), self.missing_chunks)),
            "volume_reader": self.volume_reader,
            "center_column": self.center_column, "pre_column": self.pre_column,
            "post_column": self.post_column,
            "coordinate_resolution_nm_xyz": list(self.coordinate_resolution_nm)
            if self.coordinate_resolution_nm else None,
        }

    def table_manifest(self) -> dict:
        """How the table was read: format, point columns (null: absent), units."""
        return {
            "format": self.table_format, "points": self.points.to_manifest(),
            "point_features": list(self.points.point_features()),
            "coordinate_resolution_nm_xyz": list(
                self.coordinate_resolution_nm or self.target.resolution_nm),
            "note": "pre_pt_xyz and post_pt_xyz are features and index keys only when the table "
                    "has them; points are floor(value * table_nm / target_nm) target voxels",
        }


class UsageParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message):
        raise ConfigError(message)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` flags (a contract: users and scripts depend on these names)."""
    parser.add_argument("--materialization", required=True, metavar="TABLE",
                        help="synapse table: a CSV (.csv, .csv.gz) or Parquet (.parquet) file, "
                        "or a glob of shards")
    parser.add_argument("--source-url", required=True, metavar="URL", help="raw EM volume")
    parser.add_argument("--target-url", required=True, metavar="URL",
                        help="synapse segmentation volume")
    parser.add_argument("--output-dir", required=True, metavar="DIR")
    parser.add_argument("--num-instances", type=int, metavar="N",
                        help="pick N instances reproducibly (default: all)")
    parser.add_argument("--variants", type=int, default=4, metavar="K",
                        help="seed-slice variants per instance (default 4)")
    parser.add_argument("--max-seed-slices", type=int, default=3, metavar="M",
                        help="at most M seed slices per variant (default 3)")
    parser.add_argument("--crop-size", type=int, nargs=3, default=[128, 128, 16],
                        metavar=("X", "Y", "Z"), help="crop size in target voxels")
    parser.add_argument("--source-mip", type=mip_arg, default=0, metavar="MIP",
                        help="source scale to read, or 'nearest': the coarsest mip whose "
                        "resolution divides the target's (default 0)")
    parser.add_argument("--pad-value", type=int, default=148, metavar="V",
                        help="raw value outside the source volume (default 148)")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("--formats", default="tfrecord,npy", help="tfrecord, npy or both")
    parser.add_argument("--splits", default="train=1.0",
                        help="e.g. train=0.8,val=0.1,test=0.1 (default: one train split)")
    parser.add_argument("--id-column", metavar="NAME",
                        help="id column (default: 'id' if present, else the row number)")
    parser.add_argument("--center-column", metavar="NAME",
                        help="synapse centre: a column of [x, y, z] lists, or NAME_x/_y/_z "
                        "columns (default: columns x, y, z)")
    parser.add_argument("--pre-column", metavar="NAME",
                        help="presynaptic point, as --center-column (default: pre_pt if the "
                        "table has it, else none)")
    parser.add_argument("--post-column", metavar="NAME",
                        help="postsynaptic point, as --center-column (default: post_pt if the "
                        "table has it, else none)")
    parser.add_argument("--coordinate-resolution", type=float, nargs=3, metavar=("X", "Y", "Z"),
                        help="nm per table unit, per axis (default: the target volume's "
                        "resolution, i.e. target voxels)")
    parser.add_argument("--shard-size-mb", type=float, default=256.0,
                        help="approximate TFRecord shard size (default 256)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset made with a different config in --output-dir")
    parser.add_argument("--fetch-strategy", choices=("grouped", "per-instance"),
                        default="grouped", help="grouped: fetch by spatial block, each shared "
                        "chunk read once (default); per-instance: one cutout per instance")
    parser.add_argument("--block-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="grouped work block in target voxels (default: from the chunk "
                        "sizes and --fetch-memory-mb)")
    parser.add_argument("--fetch-memory-mb", type=int, default=1024,
                        help="decoded-chunk cache of each fetching thread for grouped fetching "
                        "(default 1024; a Dataflow worker runs several threads)")
    parser.add_argument("--missing-chunks", default="source=error,target=zero", metavar="MODE",
                        help="a chunk absent from storage: 'error' dead-letters the instance "
                        "(missing_chunks), 'zero' reads it as zeros and counts it; 'error', "
                        "'zero' or per volume (default source=error,target=zero: absent label "
                        "chunks are background)")
    parser.add_argument("--volume-reader", choices=ENGINES, default=TENSORSTORE,
                        help="engine that reads the volumes (default tensorstore; the output "
                        "is the same with either)")
    parser.add_argument("--incremental", action="store_true",
                        help="add only new instances to the dataset under --output-dir "
                        "(ROOT/runs/NNNNN, ROOT/LATEST)")


def run_parser(prog: str = "synanno-datagen run", parents=()) -> argparse.ArgumentParser:
    parser = UsageParser(prog=prog, allow_abbrev=False, parents=list(parents),
                         description="Generate a training dataset (extra flags go to Beam).")
    add_run_arguments(parser)
    return parser


def parse(argv: Sequence[str]) -> Tuple[Config, List[str]]:
    """argv -> (validated Config, arguments for Beam's PipelineOptions)."""
    args, beam_args = run_parser().parse_known_args(list(argv))
    own = {"--" + a.dest.replace("_", "-") for a in run_parser()._actions if a.dest != "help"}
    for arg in beam_args:
        name = arg.split("=")[0].replace("_", "-")
        if arg.startswith("--") and name in own:
            raise ConfigError(f"unknown flag {arg.split('=')[0]}; did you mean {name}?")
    return from_args(args), beam_args


def from_args(args: argparse.Namespace) -> Config:
    _check_numbers(args)
    formats = parse_formats(args.formats)
    missing_chunks = parse_missing_chunks(args.missing_chunks)
    splits = parse_splits(args.splits)
    table = describe_table(args.materialization, args.id_column, args.center_column,
                           args.pre_column, args.post_column)
    engine = args.volume_reader
    target = _describe("--target-url", to_url(args.target_url), 0, engine)
    source_mip = args.source_mip
    if source_mip == NEAREST:
        source_mip = _nearest_source_mip(to_url(args.source_url), target, engine)
    source = _describe("--source-url", to_url(args.source_url), source_mip, engine)
    if source.dtype != "uint8" or source.num_channels != 1:
        raise ConfigError(f"--source-url {source.url}: raw EM must be uint8 with one channel, "
                          f"found {source.dtype} x {source.num_channels}")
    if not target.dtype.startswith(("uint", "int")):
        raise ConfigError(f"--target-url {target.url}: labels must be integers, found {target.dtype}")
    try:
        scale = scale_factors(target.resolution_nm, source.resolution_nm)
    except ValueError as e:
        raise ConfigError(f"--source-mip {args.source_mip}: {e}") from None
    crop = tuple(args.crop_size)
    if any(c > s for c, s in zip(crop, target.size_xyz)):
        raise ConfigError(f"--crop-size {' '.join(map(str, crop))} is larger than the target "
                          f"volume {list(target.size_xyz)}; choose a smaller crop")
    table_nm = tuple(args.coordinate_resolution) if args.coordinate_resolution else None
    points = dataclasses.replace(table.layout, to_target_xyz=to_target_factors(
        table_nm or target.resolution_nm, target.resolution_nm))
    config = Config(
        materialization=args.materialization, table_shards=table.shards,
        id_column=table.id_column,
        source=source, target=target, scale_xyz=scale, output_dir=to_output_dir(args.output_dir),
        num_instances=args.num_instances, variants=args.variants,
        seed_model=SeedModel(max_seed_slices=args.max_seed_slices), crop_size_xyz=crop,
        pad_value=args.pad_value, seed=args.seed, formats=formats, splits=splits,
        shard_size_mb=args.shard_size_mb, overwrite=args.overwrite,
        fetch_strategy=args.fetch_strategy, fetch_memory_mb=args.fetch_memory_mb,
        block_size_xyz=tuple(args.block_size) if args.block_size else None,
        missing_chunks=missing_chunks, volume_reader=engine, table_format=table.format, points=points,
        center_column=args.center_column, pre_column=args.pre_column,
        post_column=args.post_column, coordinate_resolution_nm=table_nm)
    check_writable(config.output_dir)
    if args.incremental:
        return _with_incremental_plan(config)
    check_output_dir(config)
    return config


def _with_incremental_plan(config: Config) -> Config:
    from synanno_datagen.pipeline.incremental import plan

    root = config.output_dir
    try:
        incremental = plan(root, config.generation())
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--output-dir {root}: its LATEST run cannot be read ({e}); "
                          "point --output-dir at another root") from None
    return dataclasses.replace(config, incremental=incremental,
                               output_dir=incremental.output_dir)


def _check_numbers(args) -> None:
    checks = [
        ("--variants", args.variants, args.variants >= 1, "at least 1"),
        ("--max-seed-slices", args.max_seed_slices, args.max_seed_slices >= 1, "at least 1"),
        ("--crop-size", args.crop_size, all(c >= 1 for c in args.crop_size), "positive"),
        ("--source-mip", args.source_mip, args.source_mip == NEAREST or args.source_mip >= 0,
         "0 or more, or 'nearest'"),
        ("--pad-value", args.pad_value, 0 <= args.pad_value <= 255, "0..255 (uint8 raw)"),
        ("--seed", args.seed, 0 <= args.seed < 2**63, "0 or more"),
        ("--shard-size-mb", args.shard_size_mb, args.shard_size_mb > 0, "positive"),
        ("--fetch-memory-mb", args.fetch_memory_mb, args.fetch_memory_mb >= 16, "at least 16"),
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
    for part in text.split(","):
        volume, _, mode = part.strip().partition("=")
        if volume not in modes or mode not in MISSING_CHUNK_MODES:
            raise ConfigError(f"--missing-chunks {text}: expected 'error', 'zero' or "
                              "'source=error|zero,target=error|zero'")
        modes[volume] = mode
    return modes["source"], modes["target"]


def parse_splits(text: str) -> Tuple[Tuple[str, float], ...]:
    """'train=0.8,val=0.1,test=0.1' -> (('train', 0.8), ...); fractions must sum to 1."""
    splits = []
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not _SPLIT_NAME.match(name) or not 0 < fraction <= 1:
            raise ConfigError(f"--splits {text!r}: write name=fraction pairs, e.g. "
                              "train=0.8,val=0.1,test=0.1")
        splits.append((name, fraction))
    if len({n for n, _ in splits}) != len(splits):
        raise ConfigError(f"--splits {text!r}: a split name appears twice")
    if abs(sum(f for _, f in splits) - 1.0) > 1e-6:
        raise ConfigError(f"--splits {text!r}: fractions sum to {sum(f for _, f in splits):g}, "
                          "not 1")
    return tuple(splits)


def to_url(location: str) -> str:
    """A volume location as a cloud-volume URL: plain local paths become file:// URLs."""
    if "://" in location:
        return location
    return "file://" + os.path.abspath(os.path.expanduser(location))


def to_output_dir(location: str) -> str:
    if "://" in location:
        return location.rstrip("/")
    return os.path.abspath(os.path.expanduser(location))


NEAREST = "nearest"


def mip_arg(text: str):
    """``--source-mip``: a whole number, or 'nearest'."""
    if text == NEAREST:
        return NEAREST
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mip number or 'nearest'") from None


def _nearest_source_mip(url: str, target: VolumeSpec, engine: str) -> int:
    _describe("--source-url", url, 0, engine)  # a clear error when the info cannot be read
    try:
        return nearest_mip(target.resolution_nm, mip_resolutions(url, engine))
    except ValueError as e:
        raise ConfigError(f"--source-mip nearest: {e} ({url}); give a mip number") from None


def _describe(flag: str, url: str, mip: int, engine: str) -> VolumeSpec:
    try:
        spec = describe_volume(url, mip, engine)
    except ValueError as e:
        raise ConfigError(f"{'--source-mip' if flag == '--source-url' else flag} {mip}: {e}") \
            from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"{flag} {url}: cannot read the volume's info "
                          f"({type(e).__name__}: {first[:200]}); check the URL and access") from None
    if engine == TENSORSTORE and gzip_file_chunks(spec):
        raise ConfigError(f"{flag} {url}: its chunks are stored as .gz files (cloud-volume's "
                          "local gzip layout), which tensorstore does not read; pass "
                          "--volume-reader cloudvolume")
    return spec


def gzip_file_chunks(spec: VolumeSpec) -> bool:
    """True when a local volume's scale holds ``*.gz`` chunk files (cloud-volume writes them on
    disk; on buckets the same chunks are plain names with Content-Encoding: gzip)."""
    if not spec.url.startswith("file://"):
        return False
    scale_dir = Path(spec.url[len("file://"):]) / spec.key
    if not scale_dir.is_dir():
        return False
    with os.scandir(scale_dir) as entries:
        return any(e.name.endswith(".gz") for e in itertools.islice(entries, 64))


def check_writable(output_dir: str) -> None:
    """Refuse an output location we cannot write, creating nothing there.

    Local: the nearest existing ancestor must be a writable directory. Other filesystems
    (gs://): a probe object is written and deleted under the output prefix.
    """
    from apache_beam.io.filesystems import FileSystems

    if "://" not in output_dir:
        existing = Path(output_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "is not a directory" if not existing.is_dir() else "is not writable"
            raise ConfigError(f"--output-dir {output_dir}: {existing} {what}; choose a directory "
                              "you can write")
        return
    from synanno_datagen.transforms.files import delete_tree, write_bytes

    probe = FileSystems.join(output_dir, f"_write_probe_{os.getpid()}_{time.time_ns()}")
    try:
        write_bytes(probe, b"synanno-datagen write probe")
        delete_tree(probe)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"--output-dir {output_dir}: cannot write there ({type(e).__name__}: "
                          f"{first}); check the bucket name and your write access") from None


def check_output_dir(config: Config) -> None:
    """Refuse to mix with a finished dataset made by a different config (unless --overwrite)."""
    from apache_beam.io.filesystems import FileSystems

    manifest = FileSystems.join(config.output_dir, "manifest.json")
    if config.overwrite or not FileSystems.exists(manifest):
        return
    try:
        with FileSystems.open(manifest) as f:
            previous = json.load(f).get("config")
    except Exception:
        previous = None
    if previous != config.to_manifest():
        raise ConfigError(f"--output-dir {config.output_dir} holds a dataset made with a different "
                          "config; choose another directory or pass --overwrite")
