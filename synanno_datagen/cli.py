"""``synanno-datagen``: the command line. Thin: parse, run, summarise.

Usage errors print one line and exit with code 2 before any work starts.
"""
from __future__ import annotations

import functools
import logging
import sys
from contextlib import nullcontext
from typing import List, Optional, Sequence

from synanno_datagen import __version__
from synanno_datagen.errors import ConfigError, UsageError
from synanno_datagen.pipeline.options import UsageParser, run_parser
from synanno_datagen.pipeline.progress import DEFAULT_INTERVAL_S, ProgressPrinter, runs_in_process
from synanno_datagen.reading.commands import add_commands as add_view_commands

USAGE_ERROR = 2
PROG = "synanno-datagen"


def summary(manifest: dict, output_dir: str) -> str:
    """A short human summary of a finished run."""
    counts = manifest["counts"]
    lines = [
        f"rows read {counts['rows_read']}, instances selected {counts['instances_selected']}, "
        f"written {counts['instances_written']}, variants {counts['variants_written']}",
    ]
    requested = manifest["config"].get("num_instances")
    if requested is not None and counts["instances_selected"] < requested:
        lines.append(f"warning: --num-instances {requested} is more than the "
                     f"{counts['instances_selected']} usable instances in the table; took them all")
    failures = counts["failures"]
    lines.append("failures: " + (", ".join(f"{r} {n}" for r, n in failures.items()) or "none"))
    for name, split in manifest["splits"].items():
        lines.append(f"split {name}: {split['instances']} instances, {split['records']} records "
                     f"in {split['shards']} shards")
    lines.append(f"manifest: {output_dir.rstrip('/')}/manifest.json")
    return "\n".join(lines)


def output_parser() -> UsageParser:
    """Flags of ``run`` and ``demo`` that shape what the command prints."""
    parser = UsageParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing but errors (no progress, no summary)")
    parser.add_argument("--progress-interval", type=float, default=DEFAULT_INTERVAL_S,
                        metavar="SECONDS", help="seconds between progress lines on stderr "
                        f"(default {DEFAULT_INTERVAL_S:g})")
    return parser


def print_run_help() -> None:
    """``run --help``: the run flags and the output flags (the latter are not template
    parameters, so they are not in config's run parser)."""
    parser = run_parser(f"{PROG} run", parents=[output_parser()])
    parser.print_help()


def generate(command: str, argv: List[str], demo_parser) -> int:
    """``run`` or ``demo``: progress lines on stderr while it runs, then the summary on stdout."""
    if command == "run" and ("-h" in argv or "--help" in argv):
        print_run_help()
        return 0
    output, argv = output_parser().parse_known_args(argv)
    if output.progress_interval <= 0:
        raise ConfigError(f"--progress-interval {output.progress_interval:g}: must be positive")
    if output.quiet:
        logging.getLogger().setLevel(logging.ERROR)
    if command == "demo":
        from synanno_datagen.pipeline.demo import run_demo

        args, beam_args = demo_parser.parse_known_args(argv)
        start = functools.partial(run_demo, args.output_dir, beam_args)
    else:
        from synanno_datagen.pipeline.run import run

        beam_args, start = argv, functools.partial(run, argv)
    # Bundles running in other processes never reach this process's tally: summary only.
    show = not output.quiet and runs_in_process(beam_args)
    with ProgressPrinter(sys.stderr, output.progress_interval) if show else nullcontext():
        manifest = start()
    if not output.quiet:
        print(summary(manifest, manifest["config"]["output_dir"]))
    if command == "demo":
        from synanno_datagen.pipeline.demo import write_demo_views

        preview, plots = write_demo_views(args.output_dir)
        if not output.quiet:
            print(f"preview: {preview}\nplots: " + " ".join(plots))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = UsageParser(prog=PROG, description="Synapse seed-slice training data.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,demo,inspect,preview}",
                                parser_class=UsageParser)
    sub.add_parser("run", add_help=False, help="generate a dataset (see 'run --help')")
    demo = sub.add_parser("demo", parents=[output_parser()],
                          help="make the embedded demo data and run on it")
    demo.add_argument("--output-dir", default="synanno-demo-output", metavar="DIR")
    views = add_view_commands(sub)  # inspect, preview
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv[0] in ("run", "demo"):
            return generate(argv[0], argv[1:], demo)
        if argv[0] in views:
            return views[argv[0]](argv[1:])
        parser.parse_args(argv)  # prints the usage error for an unknown command
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
