"""Benchmark: reading and parsing a table of one large Parquet file whole, by one worker (as
ReadTable did before), against in parts of a row group each, spread over the workers (now).

    python benchmarks/table_reads.py [--rows 400000] [--row-group-rows 50000] [--workers 2]

It writes one Parquet file of CAVE-like rows (id, ctr_pt_position as an int64 list) under
``--work`` (cached), then runs ReadTable on the DirectRunner (multi_processing, ``--workers``
processes) both ways, each twice in turn (the better time counts), and prints both times, their
ratio and whether both gave the same rows (they must). On Dataflow the parts spread over every
worker; on this 2-core machine at most 2 processes read at once.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import positive_int, work_dir  # noqa: E402 - needs ROOT on the path


def write_table(path: Path, rows: int, row_group_rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    points = rng.integers(0, [20_000, 20_000, 2_000], size=(rows, 3))
    pq.write_table(pa.table({
        "id": pa.array(np.arange(rows) * 7 + 11, pa.int64()),
        "ctr_pt_position": pa.array(points.tolist(), pa.list_(pa.int64())),
    }), path, row_group_size=row_group_rows)


def run(path: Path, whole: bool, workers: int):
    """(seconds, sorted (shard, row, id) of every instance) of ReadTable over ``path``."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from synanno_datagen.transforms.geometry import Box
    from synanno_datagen.transforms.points import PointColumns, TableLayout
    from synanno_datagen.transforms.table import ReadShardFn, ReadTable

    class WholeShards(ReadTable):
        """ReadTable as it was: each shard read by one worker, start to end."""

        def _read(self, pbegin, label=""):
            return (pbegin
                    | f"ListShards{label}" >> beam.Create(
                        [(k, p, None, 0) for k, p in enumerate(self._paths)])
                    | f"ReadShards{label}" >> beam.ParDo(ReadShardFn()))

    layout = TableLayout(center=PointColumns(("ctr_pt_position",)), pre=None, post=None)
    kind = WholeShards if whole else ReadTable
    out = path.parent / ("whole.txt" if whole else "parts.txt")
    options = PipelineOptions(flags=[], direct_num_workers=workers,
                              direct_running_mode="multi_processing")
    start = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        table = p | kind([str(path)], "id", Box((0, 0, 0), (20_000, 20_000, 2_000)),
                         layout=layout, dedup=False)
        _ = (table["ok"]
             | beam.Map(lambda i: (i.ref.table_shard, i.ref.row, i.instance_id))
             | beam.combiners.ToList()
             | beam.Map(lambda refs: out.write_text("\n".join(map(repr, sorted(refs))))))
    return time.perf_counter() - start, out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=positive_int, default=400_000)
    parser.add_argument("--row-group-rows", type=positive_int, default=50_000)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--work", type=work_dir, default=Path("benchmark-work"))
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)   # the workers' start-up notes
    path = args.work / "table-reads" / f"t-{args.rows}-{args.row_group_rows}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_table(path, args.rows, args.row_group_rows)
    best, rows = {}, {}
    for _ in range(2):
        for name in ("whole", "parts"):
            seconds, rows[name] = run(path, name == "whole", args.workers)
            best[name] = min(best.get(name, seconds), seconds)
    same = rows["whole"] == rows["parts"] and rows["whole"].count("\n") + 1 == args.rows
    groups = -(-args.rows // args.row_group_rows)
    print(f"{args.rows:,} rows in one Parquet file of {groups} row groups, {args.workers} "
          f"DirectRunner processes: whole by one worker {best['whole']:.1f} s; in row groups "
          f"{best['parts']:.1f} s; ratio {best['whole'] / best['parts']:.2f}x; "
          f"same rows: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
