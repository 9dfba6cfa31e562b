"""The ``inspect`` and ``preview`` subcommands: argument parsing and printing only (the work is in
reading.inspection and reading.preview). Errors are UsageErrors, which cli.main turns into one
line and exit code 2."""
from __future__ import annotations

from typing import Callable, Dict, List


def add_commands(sub) -> Dict[str, Callable[[List[str]], int]]:
    """Add the subparsers to ``sub``; return {command: handler(argv after the command)}."""
    inspect = sub.add_parser("inspect", help="summarise a finished dataset (manifest + index)")
    inspect.add_argument("output_dir", metavar="OUTPUT_DIR", help="dataset directory or gs://")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")

    preview = sub.add_parser("preview", help="PNG montage of sampled records")
    preview.add_argument("output_dir", metavar="OUTPUT_DIR", help="dataset directory or gs://")
    preview.add_argument("--n", type=int, default=8, help="records (rows) to show")
    preview.add_argument("--out", default="preview.png", help="PNG to write (local or gs://)")
    preview.add_argument("--seed", type=int, default=0, help="which records to show (0 or more; the same seed shows the same records)")
    preview.add_argument("--split", help="sample only this split")
    preview.add_argument("--max-slices", type=int, default=16,
                         help="z-slices per row; deeper crops show a window around the synapse")
    preview.add_argument("--tile-px", type=int, default=None,
                         help="largest tile side in pixels, default 128 (bigger crops are "
                         "scaled down)")
    preview.add_argument("--colours", type=int, default=0,
                         help="write a palette PNG with this many colours (smaller file)")

    def run_inspect_command(argv: List[str]) -> int:
        from synanno_datagen.reading.inspection import run_inspect

        args = inspect.parse_args(argv)
        print(run_inspect(args.output_dir, as_json=args.json, plots_dir=args.plots))
        return 0

    def run_preview_command(argv: List[str]) -> int:
        from synanno_datagen.reading.preview import run_preview

        args = preview.parse_args(argv)
        chosen = run_preview(args.output_dir, args.out, n=args.n, seed=args.seed,
                             split=args.split, max_slices=args.max_slices,
                             tile_px=args.tile_px, colours=args.colours)
        for c in chosen:
            print(f"id {c['instance_id']} variant {c['variant']} ({c['split']}): seed z "
                  + ",".join(map(str, c["seed_slices"])))
        print(f"preview: {args.out}")
        return 0

    return {"inspect": run_inspect_command, "preview": run_preview_command}
