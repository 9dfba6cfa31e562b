"""What the benchmark scripts run in child processes: making demo data and whole pipeline runs.

A child keeps the measuring process small (a forked child inherits its parent's peak RSS) and
gives each pipeline run its own CPU time and peak RSS.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_data(cache: Path, **options):
    """pipeline.demo_data.make_demo_data(cache, **options) (plain values: sizes as tuples,
    strings), made or reused in a child process; returns its DemoData."""
    code = ("import dataclasses, json; from synanno_datagen.pipeline.demo_data import make_demo_data; "
            f"d = make_demo_data({str(cache)!r}, **{options!r}); "
            "print(json.dumps(dataclasses.asdict(d)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    from synanno_datagen.pipeline.demo_data import DemoData

    return DemoData(**json.loads(out.splitlines()[-1]))


def demo_dataset(work: Path) -> Path:
    """The demo's dataset under ``work`` (``synanno-datagen demo``, run in a child once)."""
    demo = work / "demo"
    if not (demo / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "synanno_datagen", "demo", "--output-dir",
                        str(demo), "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return demo


# Runs the CLI, then (atexit) saves the process's I/O counters (/proc/self/io: wchar is every
# byte passed to write(), to files or not) beside the output.
_CHILD = ("import atexit, runpy, sys\n"
          "io_file = sys.argv.pop(1)\n"
          "def save():\n"
          "    with open('/proc/self/io') as f, open(io_file, 'w') as out:\n"
          "        out.write(f.read())\n"
          "atexit.register(save)\n"
          "sys.argv[0] = 'synanno-datagen'\n"
          "runpy.run_module('synanno_datagen', run_name='__main__')\n")


def run_pipeline(argv, out: Path, prelude: str = ""):
    """``synanno-datagen run ARGV --output-dir OUT`` in a child process: (wall seconds, CPU
    seconds and peak RSS in MB of the child, the manifest). The child's bytes written (write()
    calls, /proc/self/io wchar) are in ``manifest["benchmark"]["bytes_written"]``. ``prelude``:
    Python the child runs first (a benchmark's variant of a stage). Exits with the child's stderr
    tail when the run fails."""
    io_file = Path(tempfile.mkstemp(suffix=".io")[1])
    command = [sys.executable, "-c", prelude + "\n" + _CHILD, str(io_file), "run",
               *map(str, argv), "--output-dir", str(out), "--quiet"]
    try:
        with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a full one would block
            start = time.perf_counter()
            child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
            _, status, usage = os.wait4(child.pid, 0)
            seconds = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status) != 0:
                stderr.seek(0)
                raise SystemExit(f"run {' '.join(map(str, argv))} failed: "
                                 f"{stderr.read().decode()[-2000:]}")
        counters = dict(line.split(": ") for line in io_file.read_text().splitlines())
    finally:
        io_file.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["benchmark"] = {"bytes_written": int(counters["wchar"]),
                             "dataset_bytes": dataset_bytes(out)}
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, manifest


def dataset_files(out: Path) -> dict:
    """{path relative to ``out``: sha256} of every file of a dataset but its manifest (which
    holds timings): two datasets hold the same bytes when these are equal."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def dataset_bytes(out: Path) -> int:
    """Bytes of every file of a finished dataset."""
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
