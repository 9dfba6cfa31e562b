"""Command-line options -> one frozen, validated Config (plus the arguments left for Beam).

``parse`` runs, before any Beam work: the flags (pipeline.options; anything that is neither ours
nor Beam's is refused, pipeline.unknown_flags), the checks of their values (pipeline.validate),
the storage probes (pipeline.probes, pipeline.table_options) and, for an incremental run, its plan
(pipeline.incremental). A failure raises ConfigError with one line that names the flag or input
and says what to do (the CLI prints it and exits with code 2). ``run`` does the same in two
halves, ``check`` and ``settle``, and takes the output directory's lease between them, so the
plan is made once no other run can write the root.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from synanno_datagen import layout
from synanno_datagen.errors import ConfigError, redact
from synanno_datagen.pipeline import output_checks, probes, validate
from synanno_datagen.pipeline.incremental import IncrementalPlan
from synanno_datagen.pipeline.options import NEAREST, run_flags, run_parser
from synanno_datagen.pipeline.table_options import describe_table
from synanno_datagen.pipeline.table_resolution import coordinate_resolution
from synanno_datagen.pipeline.unknown_flags import check_beam_args, check_runner
from synanno_datagen.transforms.geometry import Box, scale_factors, target_voxels_inside
from synanno_datagen.transforms.points import TableLayout, to_target_factors
from synanno_datagen.transforms.readers import GROUPED
from synanno_datagen.transforms.seeds import RNG_AS_HASHED, SeedModel, seed_sets
from synanno_datagen.transforms.volumes import (
    DEFAULT_MISSING_CHUNKS, VolumeSpec, block_bytes, default_block_size,
)

log = logging.getLogger(__name__)
# the manifest's table.coordinate_resolution_from when the table declared its units
TABLE_RESOLUTION_SOURCE = "table: pandas attrs dataframe_resolution"
# Options of the TFRecord shards only (their defaults): a run writing none hashes these
TFRECORD_DEFAULTS = {a.dest: a.default for a in run_flags()
                     if a.dest in ("record_layout", "compression")}


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
    num_instances: Optional[int]
    variants: int
    seed_model: SeedModel
    crop_size_xyz: Tuple[int, int, int]
    pad_value: int
    seed: int
    formats: Tuple[str, ...]
    splits: Tuple[Tuple[str, float], ...]
    shard_size_mb: float
    overwrite: bool
    fetch_strategy: str                     # readers.FETCH_STRATEGIES
    block_size_xyz: Optional[Tuple[int, int, int]]  # None: chosen from chunks and memory
    fetch_memory_mb: int
    missing_chunks: Tuple[str, str]         # (source, target): error or zero
    volume_reader: str                      # readers.ENGINES
    table_format: str
    points: TableLayout                     # point columns, units -> voxels
    center_column: Optional[str]            # the column flags as given (None: the default)
    pre_column: Optional[str]
    post_column: Optional[str]
    coordinate_resolution_nm_xyz: Optional[Tuple[float, float, float]]  # None: the target's
    record_layout: str                      # layout.RECORD_LAYOUTS
    split_by: str                           # layout.SPLIT_BY
    compression: str                        # layout.COMPRESSIONS
    # How the run treats its output directory (not in the manifest's config: they do not change
    # what a run writes; an incremental run's manifest says whether it retried failures).
    incremental_requested: bool
    retry_failed: bool
    lease_hours: float
    break_lease: bool
    # Settled after the checks (settle, run):
    incremental: Optional[IncrementalPlan] = None  # run number, what it extends
    # The grid of block splits when extending a dataset: its own (None: this run's work blocks).
    split_block_size_xyz: Optional[Tuple[int, int, int]] = None
    lease: Optional[Any] = None  # pipeline.lease.Lease once run() holds it
    # --source-url and --target-url as typed (earlier versions hashed that form)
    typed_volume_urls: Tuple[str, ...] = ()
    # coordinate_resolution_nm_xyz was read from the table (its pandas attrs), not given
    coordinate_resolution_from_table: bool = False

    def generation(self) -> dict:
        """The options that decide the records' bytes (an incremental run extends a dataset only
        when these are unchanged; their sha256 is the manifest's generation_hash). Without
        TFRecord shards their options decide nothing: hashed at their defaults."""
        config = self
        if layout.TFRECORD not in self.formats:
            config = dataclasses.replace(self, **TFRECORD_DEFAULTS)
        return {o.key: o.generation(config) for o in OPTIONS if o.generation is not None
                and (o.unless is None or o.value(config) != o.unless)}

    def idle_tfrecord_options(self) -> Dict[str, str]:
        """{flag: value} of the TFRecord options given other than their defaults in a run that
        writes no TFRecord shards (they change nothing)."""
        if layout.TFRECORD in self.formats:
            return {}
        return {f"--{key.replace('_', '-')}": getattr(self, key)
                for key, default in TFRECORD_DEFAULTS.items() if getattr(self, key) != default}

    def fetch_block_size(self) -> Tuple[int, int, int]:
        """Work block (target voxels): ``--block-size``, or chosen from the volumes' chunks and
        ``--fetch-memory-mb``."""
        return tuple(self.block_size_xyz or default_block_size(
            self.target, self.source, self.scale_xyz, self.crop_size_xyz,
            int(self.fetch_memory_mb) << 20))

    def split_blocks(self) -> Tuple[int, int, int]:
        """The blocks (target voxels, from the target's voxel offset) that ``--split-by block``
        gives one split each: the dataset's own when extending one (work blocks only tune
        fetching and may change from run to run), else this run's work blocks."""
        return tuple(self.split_block_size_xyz or self.fetch_block_size())

    def source_bounds_in_target(self) -> Optional[Box]:
        """The target voxels the source volume covers (see table.parse_row); None when it covers
        every target voxel, so no centre needs the check. (Volumes that do not overlap are
        refused before any work.)"""
        covered = target_voxels_inside(self.source.bounds, self.scale_xyz)
        return None if covered and covered.intersect(self.target.bounds) == self.target.bounds \
            else covered

    @property
    def source_shape_zyx(self) -> Tuple[int, int, int]:
        return tuple(c * f for c, f in zip(self.crop_size_xyz, self.scale_xyz))[::-1]

    @property
    def bytes_per_instance(self) -> int:
        """Approximate TFRecord bytes of one instance, uncompressed: source and target once
        (instance layout), or source, target and seed mask per variant."""
        records, arrays = layout.record_arrays(self.record_layout, self.variants)
        return max(1, records * arrays * math.prod(self.source_shape_zyx))

    def to_manifest(self) -> dict:
        """The options as given (no derived volume facts, no credentials)."""
        return {o.key: o.value(self) for o in OPTIONS if o.in_manifest}

    def table_manifest(self) -> dict:
        """How the table was read: format, point columns (null: absent), units (and where
        they come from, when the table declared them)."""
        table = {
            "format": self.table_format, "points": self.points.to_manifest(),
            "point_features": list(self.points.point_features()),
            "coordinate_resolution_nm_xyz": list(
                self.coordinate_resolution_nm_xyz or self.target.resolution_nm_xyz),
            "note": "pre_pt_xyz and post_pt_xyz are features and index keys only when the table "
                    "has them; points are floor(value * table_nm / target_nm) target voxels",
        }
        if self.coordinate_resolution_from_table:
            table["coordinate_resolution_from"] = TABLE_RESOLUTION_SOURCE
        return table


@dataclass(frozen=True)
class Option:
    """One option as the manifest's ``config`` shows it (``value``; not there unless
    ``in_manifest``) and, if it decides the records' bytes, as the generation hash sees it
    (``generation``; left out of the hash while its value equals ``unless``, so hashes made
    before the option existed still match). ``flag``: the run flag it shows (its dest), when
    ``key`` names it otherwise."""

    key: str
    value: Callable[[Config], Any]
    generation: Optional[Callable[[Config], Any]] = None
    unless: Any = None
    in_manifest: bool = True
    flag: Optional[str] = None


def _hashed_url(url: str) -> str:
    """A volume URL as the generation hash sees it: without its password and its optional
    ``precomputed://`` prefix."""
    from synanno_datagen.transforms.readers import precomputed_url

    return redact(precomputed_url(url))


def _xyz(values) -> Optional[list]:
    return list(values) if values else None


def _volumes(modes) -> dict:
    return dict(zip(("source", "target"), modes))


# Run flags deliberately not in the manifest's config: how a run treats its output directory, not
# what it writes. Every other run flag is an Option (a test holds this).
NOT_IN_MANIFEST = {"overwrite", "retry_failed", "lease_hours", "break_lease"}
OPTIONS = [  # the manifest's config, in this order; generation keys as hashes always had them
    Option("materialization", lambda c: c.materialization),
    Option("table_shards", lambda c: list(c.table_shards)),
    Option("id_column", lambda c: c.id_column, lambda c: c.id_column),
    # Without a URL's password (errors.redact): not written, and not what decides the records;
    # nor is the optional precomputed:// prefix.
    Option("source_url", lambda c: redact(c.source.url), lambda c: _hashed_url(c.source.url)),
    Option("target_url", lambda c: redact(c.target.url), lambda c: _hashed_url(c.target.url)),
    Option("output_dir", lambda c: c.output_dir),
    Option("num_instances", lambda c: c.num_instances),
    Option("variants", lambda c: c.variants, lambda c: c.variants),
    Option("max_seed_slices", lambda c: c.seed_model.max_seed_slices),
    # the manifest has its own; hashed with the rng text of before the generator's fix (seeds.py:
    # ids and seeds from 2**32 on), a fix, not an option: a root goes on, its instances as drawn
    Option("seed_model", lambda c: c.seed_model.to_manifest(),
           lambda c: {**c.seed_model.to_manifest(), "rng": RNG_AS_HASHED}, in_manifest=False),
    Option("crop_size_xyz", lambda c: list(c.crop_size_xyz), lambda c: list(c.crop_size_xyz),
           flag="crop_size"),
    Option("source_mip", lambda c: c.source.mip, lambda c: c.source.mip),
    Option("pad_value", lambda c: c.pad_value, lambda c: c.pad_value),
    Option("seed", lambda c: c.seed, lambda c: c.seed),
    Option("formats", lambda c: list(c.formats), lambda c: list(c.formats)),
    Option("splits", lambda c: dict(c.splits), lambda c: [list(s) for s in c.splits]),
    Option("record_layout", lambda c: c.record_layout, lambda c: c.record_layout, "variant"),
    Option("split_by", lambda c: c.split_by, lambda c: c.split_by, "instance"),
    Option("compression", lambda c: c.compression, lambda c: c.compression, "none"),
    Option("shard_size_mb", lambda c: c.shard_size_mb),
    Option("incremental", lambda c: c.incremental is not None),
    Option("fetch_strategy", lambda c: c.fetch_strategy),
    Option("block_size_xyz", lambda c: _xyz(c.block_size_xyz), flag="block_size"),
    Option("fetch_memory_mb", lambda c: c.fetch_memory_mb),
    Option("missing_chunks", lambda c: _volumes(c.missing_chunks),
           lambda c: _volumes(c.missing_chunks), _volumes(DEFAULT_MISSING_CHUNKS)),
    Option("volume_reader", lambda c: c.volume_reader),
    Option("center_column", lambda c: c.center_column),
    Option("pre_column", lambda c: c.pre_column),
    Option("post_column", lambda c: c.post_column),
    Option("coordinate_resolution_nm_xyz", lambda c: _xyz(c.coordinate_resolution_nm_xyz),
           flag="coordinate_resolution"),
    Option("table_points", lambda c: c.points.to_manifest(), lambda c: c.points.to_manifest(),
           TableLayout().to_manifest(), in_manifest=False),  # the manifest's "table" has it
]


def parse(argv: Sequence[str]) -> Tuple[Config, List[str]]:
    """argv -> (validated Config with its incremental plan, arguments for Beam's
    PipelineOptions)."""
    config, beam_args = check(argv)
    return settle(config), beam_args


def check(argv: Sequence[str]) -> Tuple[Config, List[str]]:
    """argv -> (validated Config, Beam's arguments): flags, values and storage probes, before
    the output directory's part (``settle``)."""
    args, beam_args = run_parser().parse_known_args(list(argv))
    check_beam_args(beam_args, [option for f in run_flags() for option in f.option_strings],
                    args.materialization)
    check_runner(beam_args)
    _check_paths_reach_workers(args, beam_args)
    return from_args(args), beam_args


def _check_paths_reach_workers(args: argparse.Namespace, beam_args: Sequence[str]) -> None:
    """A Dataflow job reads and writes from its workers, which cannot see this machine's files:
    every path must be in storage they reach (gs://, or http(s) for volumes)."""
    from synanno_datagen.pipeline.unknown_flags import runs_on_dataflow
    from synanno_datagen.transforms.readers import precomputed_url

    if not runs_on_dataflow(beam_args):
        return
    for flag, path in (("--materialization", args.materialization),
                       ("--source-url", precomputed_url(args.source_url)),
                       ("--target-url", precomputed_url(args.target_url)),
                       ("--output-dir", args.output_dir)):
        scheme = str(path).partition("://")[0].lower() if "://" in str(path) else ""
        if scheme in ("", "file"):
            raise ConfigError(f"{flag} {path}: a local path, which the Dataflow job's workers "
                              "cannot see; put it in a bucket (gs://...)")


def settle(config: Config) -> Config:
    """The output directory's part: an incremental run's plan, or the check that a plain output
    directory holds no dataset of another config (unless --overwrite)."""
    if config.incremental_requested:
        config = _with_incremental_plan(config)
        _check_repeated_variants(config, extending=config.incremental.previous is not None)
        return config
    output_checks.check_output_dir(config.output_dir, config.to_manifest(), config.overwrite)
    return config


def check_values(args: argparse.Namespace) -> Tuple[Tuple[str, ...], Any, Tuple]:
    """The checks of the flags' values that need no storage (what a schedule is checked
    against too; the output directory's name included): (formats, missing-chunk modes,
    splits), or ConfigError."""
    validate.check_numbers(args)
    output_checks.to_output_dir(args.output_dir)
    for flag, url in (("--target-url", args.target_url), ("--source-url", args.source_url)):
        probes.to_url(flag, url)   # its form (no query string): before anything is read
    if args.retry_failed and not args.incremental:
        raise ConfigError("--retry-failed: only incremental runs remember failures; add "
                          "--incremental")
    return (validate.parse_formats(args.formats),
            validate.parse_missing_chunks(args.missing_chunks),
            validate.parse_splits(args.splits))


def from_args(args: argparse.Namespace) -> Config:
    """Parsed flags -> Config: value checks first, then the storage probes."""
    formats, missing_chunks, splits = check_values(args)
    target_url = probes.to_url("--target-url", args.target_url)
    source_url = probes.to_url("--source-url", args.source_url)
    table = describe_table(args.materialization, args.id_column, args.center_column,
                           args.pre_column, args.post_column)
    table_nm, nm_from_table = coordinate_resolution(args.coordinate_resolution, table.shards,
                                                    table.resolution_attrs)
    if args.incremental and table.id_column is None:
        raise ConfigError(f"--incremental: {args.materialization} has no id column, so instances "
                          "would be numbered by row, and a row added before others would "
                          "renumber them; name a column of stable ids with --id-column")
    engine = args.volume_reader
    target = probes.volume("--target-url", target_url, 0, engine)
    source_mip = args.source_mip
    if source_mip == NEAREST:
        source_mip = probes.nearest_source_mip(source_url, target, engine)
    source = probes.volume("--source-url", source_url, source_mip, engine)
    try:
        scale = scale_factors(target.resolution_nm_xyz, source.resolution_nm_xyz)
    except ValueError as e:
        raise ConfigError(f"--source-mip {args.source_mip}: {e}") from None
    crop = tuple(args.crop_size)
    if any(c > s for c, s in zip(crop, target.size_xyz)):
        raise ConfigError(f"--crop-size {' '.join(map(str, crop))} is larger than the target "
                          f"volume {list(target.size_xyz)}; choose a smaller crop")
    points = dataclasses.replace(table.layout, to_target_xyz=to_target_factors(
        table_nm or target.resolution_nm_xyz, target.resolution_nm_xyz))
    config = Config(
        materialization=args.materialization, table_shards=table.shards,
        id_column=table.id_column, source=source, target=target, scale_xyz=scale,
        output_dir=output_checks.to_output_dir(args.output_dir), num_instances=args.num_instances,
        variants=args.variants, seed_model=SeedModel(max_seed_slices=args.max_seed_slices),
        crop_size_xyz=crop, pad_value=args.pad_value, seed=args.seed, formats=formats,
        splits=splits, shard_size_mb=args.shard_size_mb, overwrite=args.overwrite,
        fetch_strategy=args.fetch_strategy, fetch_memory_mb=args.fetch_memory_mb,
        block_size_xyz=tuple(args.block_size) if args.block_size else None,
        missing_chunks=missing_chunks, volume_reader=engine, table_format=table.format,
        points=points, center_column=args.center_column, pre_column=args.pre_column,
        post_column=args.post_column, coordinate_resolution_nm_xyz=table_nm,
        record_layout=args.record_layout, split_by=args.split_by, compression=args.compression,
        incremental_requested=args.incremental, retry_failed=args.retry_failed,
        lease_hours=args.lease_hours, break_lease=args.break_lease,
        typed_volume_urls=(args.source_url, args.target_url),
        coordinate_resolution_from_table=nm_from_table)
    covered = target_voxels_inside(source.bounds, scale)
    if covered is None or covered.intersect(target.bounds) is None:
        raise ConfigError(f"--source-url {source.url}: covers none of the target volume's voxels "
                          f"(target {target.bounds.to_list()}, source {source.bounds.to_list()} "
                          f"at {list(scale)} source voxels per target voxel); check that the two "
                          "volumes belong together")
    _check_sizes(config)
    _check_block_memory(config)
    output_checks.check_writable(config.output_dir)
    if not (config.incremental_requested
            and output_checks.is_incremental_root(config.output_dir)):
        _check_repeated_variants(config)   # an existing root's: once its plan says if it extends
    idle = config.idle_tfrecord_options()
    if idle:
        log.warning("%s: no TFRecord shards are written (--formats %s), so they change nothing",
                    ", ".join(f"{flag} {value}" for flag, value in idle.items()),
                    ",".join(config.formats))
    return config


def _check_repeated_variants(config: Config, extending: bool = False) -> None:
    """Variants beyond the distinct seed-slice sets of a crop only repeat earlier ones
    (seeds.py): refused before any work, as the run would spend their time and bytes; a
    warning when ``extending`` an incremental root made so by an earlier version, which only
    warned (its variants are part of what its records are)."""
    depth, most = config.source_shape_zyx[0], config.seed_model.max_seed_slices
    sets = seed_sets(depth, most, cap=config.variants + 1)   # exact when variants exceed it
    if config.variants > sets and extending:
        log.warning("--variants %d: a crop of %d slices allows at most %d distinct sets of 1 to "
                    "%d seed slices; the root was made so, and its variants beyond repeat "
                    "earlier ones", config.variants, depth, sets, most)
    elif config.variants > sets:
        raise ConfigError(f"--variants {config.variants}: a crop of {depth} slices allows at most "
                          f"{sets} distinct sets of 1 to {most} seed slices; more variants only "
                          f"repeat them: give --variants {sets} or fewer (or "
                          + ("more --max-seed-slices, or " if most < depth else "")
                          + "a deeper --crop-size)")


def _check_block_memory(config: Config) -> None:
    """Grouped fetching holds about one work block's voxels at once: an explicit --block-size
    must fit where the default one is made to fit, a quarter of --fetch-memory-mb."""
    if config.block_size_xyz is None or config.fetch_strategy != GROUPED:
        return
    need = block_bytes(config.block_size_xyz, config.scale_xyz, config.target.dtype)
    if need > (int(config.fetch_memory_mb) << 20) // 4:
        raise ConfigError(
            f"--block-size {' '.join(map(str, config.block_size_xyz))}: grouped fetching holds a "
            f"block's source and target voxels at once, {need / 2**20:,.0f} MB here, more than a "
            f"quarter of --fetch-memory-mb {config.fetch_memory_mb}; "
            f"{_memory_advice(4 * need, 'a smaller block', '--fetch-strategy per-instance')}")


def _memory_advice(need: int, smaller: str, other: str = "") -> str:
    """'give {smaller}, --fetch-memory-mb N or more[, or {other}]' for a budget of ``need``
    bytes, or without the flag when no budget holds it."""
    enough = math.ceil(need / 2**20)
    if enough <= validate.MAX_FETCH_MEMORY_MB:
        return f"give {smaller}, --fetch-memory-mb {enough} or more" + (
            f", or {other}" if other else "")
    return (f"give {smaller}{f' or {other}' if other else ''} (no --fetch-memory-mb, at most "
            f"{validate.MAX_FETCH_MEMORY_MB}, holds it)")


def _check_sizes(config: Config) -> None:
    """A reader decodes whole chunks, and an instance holds its source and target voxels at
    once: each must fit in --fetch-memory-mb (an info's chunk size or a crop can ask for
    gigabytes, which would abort a worker); a record must fit in one protobuf message."""
    budget = int(config.fetch_memory_mb) << 20
    for flag, spec in (("--target-url", config.target), ("--source-url", config.source)):
        need = math.prod(spec.chunk_size_xyz) * spec.num_channels * np.dtype(spec.dtype).itemsize
        if need > budget:
            raise ConfigError(
                f"{flag} {spec.url}: its chunks at mip {spec.mip} are "
                f"{' x '.join(map(str, spec.chunk_size_xyz))} voxels, {need / 2**20:,.0f} MB "
                f"each decoded, more than --fetch-memory-mb {config.fetch_memory_mb}; "
                f"{_memory_advice(need, 'a volume with smaller chunks')}")
    crop = ' '.join(map(str, config.crop_size_xyz))
    need = block_bytes(config.crop_size_xyz, config.scale_xyz, config.target.dtype)
    if need > budget:
        raise ConfigError(
            f"--crop-size {crop}: an instance holds its source and target voxels at once, "
            f"{need / 2**20:,.0f} MB here, more than --fetch-memory-mb "
            f"{config.fetch_memory_mb}; {_memory_advice(need, 'a smaller crop')}")
    _, arrays = layout.record_arrays(config.record_layout, config.variants)
    record = arrays * math.prod(config.source_shape_zyx)
    if layout.TFRECORD in config.formats and record > layout.PROTOBUF_MESSAGE_MOST:
        raise ConfigError(
            f"--crop-size {crop}: a record would hold {record / 2**20:,.0f} MB of arrays, more "
            f"than the 2 GiB of one protobuf message (a TFRecord Example); give a smaller crop "
            f"or --formats npy")


MAX_REORDERED_SPLITS = 8   # 8! orders, hashed in about a second; more splits are not tried


def _splits_order_of(config: Config, digest: str, recorded: Optional[dict] = None
                     ) -> Optional[Tuple[Tuple[str, float], ...]]:
    """The order of ``config.splits`` under which an earlier version's generation hash of this
    config's records is ``digest``, or None. An earlier version laid --splits out in the order
    written, hashed the volume URLs with their passwords and with the optional
    ``precomputed://`` prefix as given, hashed a ``file://`` URL as typed (not decoded:
    ``a%20b``), and hashed the TFRecord options of a run without TFRecord shards
    as given (as ``recorded``, the root's manifest ``config``, has them). Asked only when a
    root's hash is not this config's own; orders are hashed only until one matches."""
    from synanno_datagen.pipeline.incremental import generation_hash
    from synanno_datagen.transforms.readers import precomputed_url

    keys = ("source_url", "target_url")
    decoded = (config.source.url, config.target.url)
    typed = tuple(u if "://" in u else probes.to_url("", u) for u in config.typed_volume_urls)
    own = {k: _hashed_url(u) for k, u in zip(keys, decoded)}   # this version's
    forms = []   # the URLs as earlier versions may have hashed them (with the prefix, if given)
    for urls in (decoded, typed):
        spellings = [(precomputed_url(u), "precomputed://" + precomputed_url(u)) for u in urls]
        for pair in itertools.product(*spellings):
            for form in (dict(zip(keys, pair)), {k: redact(u) for k, u in zip(keys, pair)}):
                if len(form) == 2 and form not in forms and form != own:
                    forms.append(form)
    given = [{}]   # without TFRecord shards, also those options as the root recorded them
    if layout.TFRECORD not in config.formats and recorded:
        given.append({key: recorded.get(key, _UNLESS[key]) for key in TFRECORD_DEFAULTS})
    orders = itertools.permutations(config.splits) \
        if len(config.splits) <= MAX_REORDERED_SPLITS else [config.splits]
    for order in orders:
        ordered = dataclasses.replace(config, splits=order).generation()
        for options in given:
            generation = _with_options(ordered, options)
            if generation_hash(generation) == digest or \
                    any(generation_hash({**generation, **form}) == digest for form in forms):
                return order
    return None


_UNLESS = {o.key: o.unless for o in OPTIONS}


def _with_options(generation: dict, options: dict) -> dict:
    """``generation`` (a Config's) with other values of some options, as ``Config.generation``
    would hold them (left out while a value equals the option's ``unless``)."""
    out = dict(generation)
    for key, value in options.items():
        if _UNLESS[key] is not None and value == _UNLESS[key]:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _with_incremental_plan(config: Config) -> Config:
    from synanno_datagen.pipeline.incremental import plan

    root = config.output_dir
    output_checks.check_incremental_root(root)
    # a root made with another order of these fractions is extended in its order
    orders = {}

    def same_records(digest: str, recorded: dict) -> bool:
        orders[digest] = _splits_order_of(config, digest, recorded)
        return orders[digest] is not None

    try:
        incremental = plan(root, config.generation(), config.retry_failed, same_records)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"--output-dir {root}: its LATEST run cannot be read ({e}); restore "
                          "it, or point --output-dir at another root") from None
    order = orders.get(incremental.generation_hash)
    if order is not None:   # a root of an earlier version's hash: extended under this version's
        from synanno_datagen.pipeline.incremental import generation_hash

        config = dataclasses.replace(config, splits=order)
        incremental = dataclasses.replace(incremental,
                                          generation_hash=generation_hash(config.generation()))
    if not config.overwrite:
        output_checks.check_no_foreign_entries(incremental.output_dir)
    grid = None
    if incremental.previous is not None and config.split_by == "block":
        grid = incremental.previous.split_block_size_xyz or dataclasses.replace(
            config, **incremental.previous.work_blocks).fetch_block_size()
    return dataclasses.replace(config, incremental=incremental,
                               output_dir=incremental.output_dir, split_block_size_xyz=grid)
