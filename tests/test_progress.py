"""Progress: Beam counters with stable names, the CLI's progress line on stderr, and --quiet."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from synanno_datagen.pipeline.build import build
from synanno_datagen.pipeline.config import parse
from synanno_datagen.pipeline.progress import progress_line, runs_in_process
from synanno_datagen.transforms.progress import reset_tally, tally

# small_data (tests/conftest.py): 10 rows; 4 rejected by the table, 6 selected, 1 empty target.
FINAL = {"instances_selected": 6, "instances_written": 5, "variants_written": 10,
         "failures": 5, "instances_failed": 1, "failures_empty_target": 1,
         "failures_duplicate_id": 1, "failures_missing_coordinate": 1,
         "failures_not_a_number": 1, "failures_outside_volume": 1}
LINE = re.compile(r"progress: (\d+)/(\d+) instances done, (\d+) variants written, (\d+) failures, "
                  r"[\d.]+ instances/s, \d+ s")


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "synanno_datagen", *argv], capture_output=True,
                          text=True, timeout=600)


def test_beam_counters_and_the_tally_count_the_run(small_data, tmp_path):
    config, beam_args = parse(small_data.argv(tmp_path / "out", "--variants", "2"))
    reset_tally()
    p = TestPipeline(argv=beam_args, blocking=True)
    build(p, config)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("synanno"))[
                    "counters"]}
    # One step increments each name, so the per-step results are the totals.
    assert {k: counters.get(k) for k in FINAL} == FINAL
    assert {k: v for k, v in tally().items() if k in FINAL} == FINAL


@pytest.mark.parametrize("interval", ["0.01", "3600"])
def test_run_prints_progress_lines_ending_with_the_final_counts(small_data, tmp_path, interval):
    """The last line has the final counts whatever the interval (one run shorter than it
    prints that line alone: found by mutation review, dropping it passed at 0.01 s)."""
    result = cli("run", *small_data.argv(tmp_path / "out", "--variants", "2"),
                 "--progress-interval", interval)
    assert result.returncode == 0, result.stderr
    lines = [LINE.fullmatch(line) for line in result.stderr.splitlines()
             if line.startswith("progress:")]
    assert lines and all(lines) and (interval != "3600" or len(lines) == 1)
    numbers = [tuple(int(g) for g in m.groups()) for m in lines]
    assert numbers[-1] == (6, 6, 10, 5)                  # done/selected, variants, failures
    for earlier, later in zip(numbers, numbers[1:]):     # counts only grow
        assert all(a <= b for a, b in zip(earlier, later))
    assert "written 5, variants 10" in result.stdout     # the summary, on stdout


def test_quiet_run_prints_only_the_closing_json_line(small_data, tmp_path):
    out = tmp_path / "out"
    result = cli("run", "--quiet", *small_data.argv(out, "--variants", "2"))
    assert (result.returncode, result.stderr) == (0, "")
    (line,) = result.stdout.splitlines()            # for machines: no summary, no progress
    assert json.loads(line)["status"] == "ok"
    assert json.loads((out / "manifest.json").read_text())["counts"]["variants_written"] == 10


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_what_libraries_print_during_a_run_goes_to_stderr(tmp_path, mode):
    """Found by review: cloud-volume prints 'File Read Error: ...' on stdout, which then held
    more than the closing line with --quiet."""
    from tests.conftest import make_small_data

    data = make_small_data(tmp_path / "data")
    chunks = sorted((Path(data.source_url[len("file://"):]) / "4_4_33").iterdir())
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])     # raw: a decode error, printed
    result = cli("run", "--quiet", *data.argv(tmp_path / "out", "--volume-reader", "cloudvolume",
                                              "--direct_running_mode", mode,
                                              "--direct_num_workers", "1"))
    (line,) = result.stdout.splitlines()
    closing = json.loads(line)
    assert (result.returncode, closing["status"]) == (0, "ok")
    assert closing["failures"]["fetch_error"] >= 1
    assert "File Read Error" in result.stderr


@pytest.mark.parametrize("closed", ["stdout", "stderr", "stdin"])
def test_a_run_with_a_closed_stream_writes_its_dataset(small_data, tmp_path, closed):
    """Found by review: with stdout closed (>&-) the run broke before any work, and with
    stderr closed a complete dataset was reported failed (moving stdout onto a stream that is
    not there). With stdin closed (<&-) stdout's saved copy is descriptor 0: the closing line
    is still on stdout (restore_stdout taking a saved 0 for none passed every test; found by a
    mutation review)."""
    import shlex

    out = tmp_path / "out"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "synanno_datagen", "run",
                                                *small_data.argv(out, "--variants", "1")])
    redirect = {"stdout": " >&-", "stderr": " 2>&-", "stdin": " <&-"}[closed]
    result = subprocess.run(["bash", "-c", command + redirect], capture_output=True, text=True,
                            timeout=600)
    assert json.loads((out / "manifest.json").read_text())["counts"]["instances_written"] == 5
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    if closed != "stdout":
        assert json.loads(result.stdout.splitlines()[-1])["status"] == "ok"


@pytest.mark.parametrize("stream", ["stdout", "stderr", "ascii"])
def test_a_stream_that_cannot_take_the_lines_does_not_fail_a_finished_run(small_data, tmp_path,
                                                                          stream):
    """Found by review: a summary or progress line that could not be written (a full disk,
    /dev/full; a path an ASCII stdout cannot encode) turned a complete dataset into status
    failed, with a traceback."""
    import shlex

    out = tmp_path / "out é"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "synanno_datagen", "run",
                                                *small_data.argv(out, "--variants", "1")])
    redirect = {"stdout": " >/dev/full", "stderr": " 2>/dev/full", "ascii": ""}[stream]
    env = {**os.environ, "PYTHONIOENCODING": "ascii"} if stream == "ascii" else None
    result = subprocess.run(["bash", "-c", command + redirect], capture_output=True, text=True,
                            timeout=600, env=env)
    assert json.loads((out / "manifest.json").read_text())["counts"]["instances_written"] == 5
    if stream != "stderr":   # (stderr went nowhere)
        assert "Traceback" not in result.stderr, result.stderr
    if stream == "stdout":   # the closing line is lost: exit 1, said in one line
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == (
            "synanno-datagen: cannot write to stdout ([Errno 28] No space left on device); the "
            "run's status: ok")
    else:
        assert result.returncode == 0, result.stderr
        closing = json.loads(result.stdout.splitlines()[-1])
        assert closing["status"] == "ok" and closing["output_dir"] == str(out)
        if stream == "ascii":
            assert f"manifest: {out}".encode("ascii", "backslashreplace").decode() in \
                result.stdout


def test_a_refusal_keeps_its_exit_code_when_stderr_is_full(small_data, tmp_path):
    """Found by review: the refusal's line to a full stderr raised, and the run exited 1 while
    its closing line said 2, refused."""
    import shlex

    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(tmp_path / "missing.csv")
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "synanno_datagen", "run",
                                                *argv])
    result = subprocess.run(["bash", "-c", command + " 2>/dev/full"], capture_output=True,
                            text=True, timeout=600)
    closing = json.loads(result.stdout.splitlines()[-1])
    assert (result.returncode, closing["exit_code"], closing["status"]) == (2, 2, "refused")


def test_a_refusal_keeps_its_line_and_exit_code_when_stdout_is_full(small_data, tmp_path):
    """Found by review: with stdout full the closing line's error replaced the refusal: exit 1
    and 'cannot write to stdout ...; the run's status: refused', the reason never said."""
    import shlex

    argv = small_data.argv(tmp_path / "out", "--variants", "0")
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "synanno_datagen", "run",
                                                *argv])
    result = subprocess.run(["bash", "-c", command + " >/dev/full"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "synanno-datagen: error: --variants 0: must be at least 1"]


def test_runs_in_process_leave_no_descriptor_open(small_data, tmp_path, capsys):
    """stdout's copy kept while it is moved onto stderr is closed when it is put back: a
    program running the CLI in-process loses no descriptor per run (not closing it passed
    every test; found by a mutation review)."""
    from synanno_datagen.cli import main

    argv = small_data.argv(tmp_path / "out")
    argv[argv.index("--materialization") + 1] = str(tmp_path / "missing.csv")
    assert main(["run"] + argv) == 2   # (refused by the run, inside the moved stdout)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert main(["run"] + argv) == 2
    assert len(os.listdir("/proc/self/fd")) == before
    assert [json.loads(line)["status"] for line in capsys.readouterr().out.splitlines()] == \
        ["refused"] * 4


def test_quiet_still_reports_a_usage_error(small_data, tmp_path):
    result = cli("run", "--quiet", *small_data.argv(tmp_path / "out", "--variants", "0"))
    assert result.returncode == 2
    assert json.loads(result.stdout)["status"] == "refused"
    assert result.stderr.startswith("synanno-datagen: error: --variants")


def test_progress_line_and_where_it_can_be_counted():
    counts = {"instances_selected": 300, "instances_written": 118, "instances_failed": 2,
              "variants_written": 472, "failures": 6}
    assert progress_line(counts, 4.0) == ("progress: 120/300 instances done, 472 variants "
                                          "written, 6 failures, 30.0 instances/s, 4 s")
    assert progress_line({}, 0.0) == ("progress: 0/0 instances done, 0 variants written, "
                                      "0 failures, 0.0 instances/s, 0 s")
    assert runs_in_process([]) and runs_in_process(["--runner", "DirectRunner"])
    assert runs_in_process(["--runner", "direct"])   # Beam's short name
    assert runs_in_process(["--direct_running_mode", "multi_threading"])
    assert not runs_in_process(["--direct_running_mode", "multi_processing"])
    assert not runs_in_process(["--runner", "DataflowRunner"])


def test_progress_lines_come_while_the_body_runs_until_the_stream_fails(capsys):
    """The printer's thread prints the tally every interval while the body runs, not only at
    its end; a stream that fails takes no more lines, and none goes to stdout instead (a loop
    that never printed passed every test; found by a mutation review)."""
    import io
    import threading

    from synanno_datagen.pipeline.progress import ProgressPrinter
    from synanno_datagen.transforms.progress import ProgressCounter

    class Stream(io.StringIO):
        """Takes ``lines`` lines, then fails as a full disk does."""

        def __init__(self, lines):
            super().__init__()
            self.lines, self.printed = lines, threading.Event()

        def write(self, text):
            if self.getvalue().count("\n") >= self.lines:
                raise OSError(28, "No space left on device")
            self.printed.set()
            return super().write(text)

    stream = Stream(lines=100)
    with ProgressPrinter(stream, interval_s=0.01):
        ProgressCounter("instances_selected").inc(3)
        ProgressCounter("instances_written").inc(2)
        assert stream.printed.wait(60)   # a line before the body ends
    lines = [LINE.fullmatch(line) for line in stream.getvalue().splitlines()]
    assert len(lines) >= 2 and all(lines)
    assert tuple(int(g) for g in lines[-1].groups()) == (2, 3, 0, 0)
    full = Stream(lines=1)
    with ProgressPrinter(full, interval_s=0.01):
        assert full.printed.wait(60)
    assert len(full.getvalue().splitlines()) == 1
    assert capsys.readouterr().out == ""


def test_run_help_lists_the_run_flags_and_the_output_flags(capsys):
    from synanno_datagen.cli import main

    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: synanno-datagen run")
    for flag in ("--quiet", "--progress-interval", "--materialization", "--fetch-strategy",
                 "--missing-chunks"):
        assert flag in text
