"""``synanno-datagen``: the command line. Thin: parse, run, summarise.

Usage errors print one line and exit with code 2 before any work starts.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional, Sequence

from pipeline import __version__
from pipeline.config import ConfigError, UsageParser, parse
from pipeline.view_commands import add_commands as add_view_commands

USAGE_ERROR = 2
PROG = "synanno-datagen"


def run(argv: Sequence[str]) -> dict:
    """Validate the options, run the pipeline to completion, return the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import build
    from pipeline.manifest import clear_dataset, load_manifest

    config, beam_args = parse(argv)
    options = PipelineOptions(beam_args)
    clear_dataset(config.output_dir)  # parse() refused a different config unless --overwrite
    with beam.Pipeline(options=options) as p:
        build(p, config)
    return load_manifest(config.output_dir)


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


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = UsageParser(prog=PROG, description="Synapse seed-slice training data.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,demo,inspect,preview}",
                                parser_class=UsageParser)
    sub.add_parser("run", add_help=False, help="generate a dataset (see 'run --help')")
    demo = sub.add_parser("demo", help="make the embedded demo data and run on it")
    demo.add_argument("--output-dir", default="synanno-demo-output", metavar="DIR")
    views = add_view_commands(sub)  # inspect, preview
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv[0] == "run":
            manifest = run(argv[1:])
            print(summary(manifest, manifest["config"]["output_dir"]))
            return 0
        if argv[0] == "demo":
            from pipeline.demo import run_demo, write_demo_views

            args, beam_args = demo.parse_known_args(argv[1:])
            manifest = run_demo(args.output_dir, beam_args)
            print(summary(manifest, manifest["config"]["output_dir"]))
            preview, plots = write_demo_views(args.output_dir)
            print(f"preview: {preview}\nplots: " + " ".join(plots))
            return 0
        if argv[0] in views:
            return views[argv[0]](argv[1:])
        parser.parse_args(argv)  # prints the usage error for an unknown command
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
