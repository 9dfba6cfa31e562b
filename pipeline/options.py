"""The ``run`` flags, declared once: the CLI, ``run --help``, the Flex Template's parameters and
the check for mistyped flags all come from here."""
from __future__ import annotations

import argparse
from typing import List

from synanno_datagen.errors import ConfigError
from synanno_datagen.layout import COMPRESSIONS, RECORD_LAYOUTS, SPLIT_BY
from synanno_datagen.transforms.readers import ENGINES, FETCH_STRATEGIES, GROUPED, TENSORSTORE
from synanno_datagen.transforms.volumes import DEFAULT_MISSING_CHUNKS

NEAREST = "nearest"
DEFAULT_LEASE_HOURS = 20.0  # pipeline/lease.py


def mip_arg(text: str):
    """``--source-mip``: a whole number, or 'nearest'."""
    if text == NEAREST:
        return NEAREST
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mip number or 'nearest'") from None


class UsageParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2) instead of printing usage."""

    def error(self, message):
        raise ConfigError(message)


def add_run_arguments(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    """Declare the ``run`` flags on ``parser`` (a contract: users and scripts depend on these
    names); return them, in order."""
    declared: List[argparse.Action] = []

    def flag(*names, **kwargs):
        declared.append(parser.add_argument(*names, **kwargs))

    flag("--materialization", required=True, metavar="TABLE",
         help="synapse table: a CSV (.csv; .csv.gz/.gz, .csv.bz2/.bz2, .csv.xz/.xz compressed; "
         "any other name is read as CSV) or Parquet (.parquet, .pq) file, or a glob of shards")
    flag("--source-url", required=True, metavar="URL", help="raw EM volume")
    flag("--target-url", required=True, metavar="URL",
         help="synapse segmentation volume")
    flag("--output-dir", required=True, metavar="DIR")
    flag("--num-instances", type=int, metavar="N",
         help="pick N instances reproducibly (default: all); with --incremental the dataset "
         "holds at most N in total: a run adds up to N minus what earlier runs hold")
    flag("--variants", type=int, default=4, metavar="K",
         help="seed-slice variants per instance (default 4)")
    flag("--max-seed-slices", type=int, default=3, metavar="M",
         help="at most M seed slices per variant (default 3)")
    flag("--crop-size", type=int, nargs=3, default=[128, 128, 16],
         metavar=("X", "Y", "Z"), help="crop size in target voxels (default 128 128 16)")
    flag("--source-mip", type=mip_arg, default=0, metavar="MIP",
         help="source scale to read, or 'nearest': the coarsest mip whose "
         "resolution divides the target's (default 0)")
    flag("--pad-value", type=int, default=148, metavar="V",
         help="raw value outside the source volume (default 148)")
    flag("--seed", type=int, default=0, metavar="S",
         help="seed of the selection, splits and seed slices, 0 to 2**63 - 1 (default 0)")
    flag("--formats", default="tfrecord,npy",
         help="tfrecord, npy or tfrecord,npy (default tfrecord,npy)")
    flag("--splits", default="train=1.0",
         help="e.g. train=0.8,val=0.1,test=0.1 (default: one train split)")
    flag("--id-column", metavar="NAME",
         help="id column (default: 'id' if present, else the row number)")
    flag("--center-column", metavar="NAME",
         help="synapse centre: a column of [x, y, z] lists, or NAME_x/_y/_z "
         "columns (default: columns x, y, z)")
    flag("--pre-column", metavar="NAME",
         help="presynaptic point, as --center-column, or 'none' to leave it out (default: "
         "pre_pt if the table has it, else none)")
    flag("--post-column", metavar="NAME",
         help="postsynaptic point, as --center-column, or 'none' to leave it out (default: "
         "post_pt if the table has it, else none)")
    flag("--coordinate-resolution", type=float, nargs=3, metavar=("X", "Y", "Z"),
         help="nm per table unit, per axis (default: a Parquet table's own "
         "dataframe_resolution, as pandas stores CAVEclient's df.attrs, else the target "
         "volume's resolution, i.e. target voxels)")
    flag("--record-layout", choices=RECORD_LAYOUTS, default="instance",
         help="instance: one record per instance (source, target, every variant's seed slices; "
         "default); variant: one record per variant with its seed mask")
    flag("--split-by", choices=SPLIT_BY, default="block",
         help="block: all instances of a work block in one split, so splits are spatially apart "
         "(default); instance: each instance's split drawn on its own")
    flag("--compression", choices=COMPRESSIONS, default="none",
         help="TFRecord shards: none, or gzip (TFRecord's GZIP framing, .tfrecord.gz)")
    flag("--shard-size-mb", type=float, default=256.0,
         help="approximate TFRecord shard size (default 256)")
    flag("--overwrite", action="store_true",
         help="replace a dataset made with a different config in --output-dir")
    flag("--fetch-strategy", choices=FETCH_STRATEGIES,
         default=GROUPED, help="grouped: fetch by spatial block, each shared "
         "chunk read once (default); per-instance: one cutout per instance")
    flag("--block-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
         help="grouped work block in target voxels (default: from the chunk "
         "sizes and --fetch-memory-mb)")
    flag("--fetch-memory-mb", type=int, default=1024,
         help="decoded-chunk cache for grouped fetching: one per worker process with "
         "tensorstore (shared by its threads), one per fetching thread with cloud-volume "
         "(default 1024)")
    missing = ",".join(f"{volume}={mode}" for volume, mode in
                       zip(("source", "target"), DEFAULT_MISSING_CHUNKS))
    flag("--missing-chunks", default=missing, metavar="MODE",
         help="a chunk absent from storage: 'error' dead-letters the instance "
         "(missing_chunks), 'zero' reads it as zeros and counts it; 'error', "
         f"'zero' or per volume (default {missing}: absent label chunks are background)")
    flag("--volume-reader", choices=ENGINES, default=TENSORSTORE,
         help="engine that reads the volumes (default tensorstore; the output "
         "is the same with either)")
    flag("--incremental", action="store_true",
         help="add only new instances to the dataset under --output-dir "
         "(ROOT/runs/NNNNN, ROOT/LATEST); rows that failed for good in earlier runs are "
         "not tried again until they change")
    flag("--retry-failed", action="store_true",
         help="with --incremental: try again the rows earlier runs remembered as "
         "permanent failures")
    flag("--lease-hours", type=float, default=DEFAULT_LEASE_HOURS, metavar="HOURS",
         help="one run writes --output-dir at a time: a run's lease expires HOURS after "
         f"it was last renewed (default {DEFAULT_LEASE_HOURS:g}; a writing run renews it), "
         "freeing the directory of a run that was killed")
    flag("--break-lease", action="store_true",
         help="remove another run's lease on --output-dir first (only when that run "
         "is dead)")
    return declared


def run_parser(prog: str = "synanno-datagen run", parents=()) -> argparse.ArgumentParser:
    parser = UsageParser(prog=prog, allow_abbrev=False, parents=list(parents),
                         description="Generate a training dataset. Any other argument must be "
                         "a Beam pipeline option (--runner, --temp_location, ...).",
                         epilog="exit codes: 0 done (or submitted), 1 the run failed, 2 a usage "
                         "or input error, 3 another run is writing --output-dir, 143 stopped "
                         "by SIGTERM, 130 by SIGINT (Ctrl-C); the last line on stdout is a "
                         "JSON summary of the run")
    add_run_arguments(parser)
    return parser


def run_flags() -> List[argparse.Action]:
    """The declared ``run`` flags (argparse Actions: ``dest``, ``option_strings``, ...)."""
    return add_run_arguments(UsageParser(add_help=False))


