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


def shown_default(value) -> str:
    """A flag's default as help texts write it: ``[128, 128, 16]`` as ``128 128 16``, ``20.0``
    as ``20``."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(shown_default, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(action: argparse.Action) -> str:
    """``action.help`` with ``%(default)s`` (and argparse's other ``%(name)s``) filled in as
    ``run --help`` and the Flex Template's parameters show it."""
    return action.help % dict(vars(action), default=shown_default(action.default))


class RunHelpFormatter(argparse.HelpFormatter):
    """argparse's help, with defaults written as ``shown_default`` writes them."""

    def _expand_help(self, action):
        return help_text(action)


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
    flag("--output-dir", required=True, metavar="DIR",
         help="where the dataset goes, local or gs:// (with --incremental, the root of its "
         "runs)")
    flag("--num-instances", type=int, metavar="N",
         help="pick N instances reproducibly (default: all); with --incremental the dataset "
         "holds at most N in total: a run adds up to N minus what earlier runs hold")
    flag("--variants", type=int, default=4, metavar="K",
         help="seed-slice variants per instance (default %(default)s)")
    flag("--max-seed-slices", type=int, default=3, metavar="M",
         help="at most M seed slices per variant (default %(default)s)")
    flag("--crop-size", type=int, nargs=3, default=[128, 128, 16],
         metavar=("X", "Y", "Z"), help="crop size in target voxels (default %(default)s)")
    flag("--source-mip", type=mip_arg, default=0, metavar="MIP",
         help="source scale to read, or 'nearest': the coarsest mip whose "
         "resolution divides the target's (default %(default)s)")
    flag("--pad-value", type=int, default=148, metavar="V",
         help="raw value outside the source volume (default %(default)s)")
    flag("--seed", type=int, default=0, metavar="S",
         help="seed of the selection, splits and seed slices, 0 to 2**63 - 1 (default "
         "%(default)s)")
    flag("--formats", default="tfrecord,npy",
         help="tfrecord, npy or tfrecord,npy (default %(default)s)")
    flag("--splits", default="train=1.0",
         help="e.g. train=0.8,val=0.1,test=0.1 (default %(default)s: one train split)")
    flag("--id-column", metavar="NAME",
         help="id column (default: 'id' if present, else the row number)")
    flag("--center-column", metavar="NAME",
         help="synapse centre: a column of [x, y, z] lists, or NAME_x/_y/_z "
         "columns (default: columns x, y, z; a CAVE export: pass ctr_pt_position)")
    flag("--pre-column", metavar="NAME",
         help="presynaptic point, as --center-column, or 'none' to leave it out (default: "
         "pre_pt if the table has it, else none)")
    flag("--post-column", metavar="NAME",
         help="postsynaptic point, as --center-column, or 'none' to leave it out (default: "
         "post_pt if the table has it, else none)")
    flag("--coordinate-resolution", type=float, nargs=3, metavar=("X", "Y", "Z"),
         help="nm per table unit, per axis (default: a Parquet table's own "
         "dataframe_resolution, as pandas stores CAVEclient's df.attrs, else the target "
         "volume's resolution, i.e. target voxels; 1 1 1 for positions in nm)")
    flag("--record-layout", choices=RECORD_LAYOUTS, default="instance",
         help="instance: one record per instance (source, target, every variant's seed "
         "slices); variant: one record per variant with its seed mask (default %(default)s)")
    flag("--split-by", choices=SPLIT_BY, default="block",
         help="block: all instances of a work block in one split, so splits are spatially apart; "
         "instance: each instance's split drawn on its own (default %(default)s)")
    flag("--compression", choices=COMPRESSIONS, default="none",
         help="TFRecord shards: none, or gzip (TFRecord's GZIP framing, .tfrecord.gz; default "
         "%(default)s)")
    flag("--shard-size-mb", type=float, default=256.0,
         help="approximate TFRecord shard size (default %(default)s)")
    flag("--overwrite", action="store_true",
         help="replace a dataset made with a different config in --output-dir")
    flag("--fetch-strategy", choices=FETCH_STRATEGIES,
         default=GROUPED, help="grouped: fetch by spatial block, each shared chunk read "
         "once; per-instance: one cutout per instance (default %(default)s)")
    flag("--block-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
         help="grouped work block in target voxels (default: from the chunk "
         "sizes and --fetch-memory-mb)")
    flag("--fetch-memory-mb", type=int, default=1024,
         help="decoded-chunk cache for grouped fetching: one per worker process with "
         "tensorstore (shared by its threads), one per fetching thread with cloud-volume "
         "(default %(default)s)")
    flag("--missing-chunks", metavar="MODE", default=",".join(
        f"{volume}={mode}" for volume, mode in zip(("source", "target"), DEFAULT_MISSING_CHUNKS)),
         help="a chunk absent from storage: 'error' dead-letters the instance "
         "(missing_chunks), 'zero' reads it as zeros and counts it; 'error', "
         "'zero' or per volume (default %(default)s: absent label chunks are background)")
    flag("--volume-reader", choices=ENGINES, default=TENSORSTORE,
         help="engine that reads the volumes (default %(default)s; the output is the same "
         "with either)")
    flag("--incremental", action="store_true",
         help="add only new instances to the dataset under --output-dir "
         "(ROOT/runs/NNNNN, ROOT/LATEST); rows that failed for good in earlier runs are "
         "not tried again until they change")
    flag("--retry-failed", action="store_true",
         help="with --incremental: try again the rows earlier runs remembered as "
         "permanent failures")
    flag("--lease-hours", type=float, default=DEFAULT_LEASE_HOURS, metavar="HOURS",
         help="one run writes --output-dir at a time: a run's lease expires this many hours "
         "after it was last renewed (default %(default)s; a writing run renews it), "
         "freeing the directory of a run that was killed")
    flag("--break-lease", action="store_true",
         help="remove another run's lease on --output-dir first (only when that run "
         "is dead)")
    return declared


def run_parser(prog: str = "synanno-datagen run", parents=()) -> argparse.ArgumentParser:
    parser = UsageParser(prog=prog, allow_abbrev=False, parents=list(parents),
                         formatter_class=RunHelpFormatter,
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


