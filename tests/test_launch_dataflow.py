"""launch_dataflow.sh, tested up to the command it would run (no Dataflow service here)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions, WorkerOptions,
)

from pipeline.config import run_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_dataflow.sh"
OURS = ["--materialization", "gs://tables/export_*.csv", "--source-url", "gs://h01/raw",
        "--target-url", "gs://h01/syn", "--output-dir", "gs://out/ds", "--seed", "3"]


def launch(*args, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("PROJECT", "REGION", "BUCKET", "SERVICE_ACCOUNT", "NETWORK",
                         "MAX_WORKERS", "MACHINE_TYPE", "JOB_NAME")}
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=full, timeout=60)


def test_dry_run_prints_the_exact_dataflow_command():
    done = launch("--dry-run", *OURS, "--num-instances", "1000", PROJECT="proj",
                  REGION="europe-west4", BUCKET="gs://my-bucket/", SERVICE_ACCOUNT="sa@x.iam",
                  NETWORK="net", MAX_WORKERS="50", MACHINE_TYPE="n2-highmem-4")
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    assert argv[:4] == ["python3", "-m", "pipeline.cli", "run"]
    args, beam_args = run_parser().parse_known_args(argv[4:])
    assert args.materialization == "gs://tables/export_*.csv" and args.seed == 3
    assert args.num_instances == 1000
    options = PipelineOptions(beam_args)
    cloud = options.view_as(GoogleCloudOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region) == ("proj", "europe-west4")
    assert cloud.temp_location == "gs://my-bucket/synanno-datagen/temp"
    assert cloud.staging_location == "gs://my-bucket/synanno-datagen/staging"
    assert cloud.service_account_email == "sa@x.iam"
    assert re.fullmatch(r"synanno-datagen-\d{8}-\d{6}", cloud.job_name)
    assert options.view_as(SetupOptions).setup_file == str(ROOT / "setup.py")
    workers = options.view_as(WorkerOptions)
    assert (workers.max_num_workers, workers.machine_type, workers.network) == \
        (50, "n2-highmem-4", "net")


def test_optional_variables_stay_out_when_unset():
    done = launch("--dry-run", *OURS, PROJECT="p", REGION="r", BUCKET="b", JOB_NAME="nightly-1")
    argv = shlex.split(done.stdout)
    assert "--job_name" in argv and argv[argv.index("--job_name") + 1] == "nightly-1"
    for flag in ("--service_account_email", "--network", "--max_num_workers", "--machine_type"):
        assert flag not in argv


@pytest.mark.parametrize("env, message", [
    ({"REGION": "r", "BUCKET": "b"}, "PROJECT is not set"),
    ({"PROJECT": "p", "BUCKET": "b"}, "REGION is not set"),
    ({"PROJECT": "p", "REGION": "r"}, "BUCKET is not set"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "b", "MAX_WORKERS": "many"},
     "MAX_WORKERS 'many' is not a positive integer"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "b", "JOB_NAME": "Nightly_Run"},
     "JOB_NAME 'Nightly_Run'"),
])
def test_missing_or_bad_variables_fail_clearly(env, message):
    done = launch("--dry-run", *OURS, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("launch_dataflow.sh: error: ") and message in done.stderr


def test_submission_runs_the_command_with_a_stand_in_python(tmp_path):
    """Stub: the Dataflow service cannot be reached here, so PYTHON is a stand-in that records
    the arguments it was called with instead of submitting."""
    record = tmp_path / "args.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
    done = launch(*OURS, PROJECT="p", REGION="r", BUCKET="b", PYTHON=str(stub))
    assert done.returncode == 0, done.stderr
    assert "submitting job synanno-datagen-" in done.stderr
    called = record.read_text().splitlines()
    dry = shlex.split(launch("--dry-run", *OURS, PROJECT="p", REGION="r", BUCKET="b",
                             JOB_NAME="x").stdout)
    assert called[:3] == dry[1:4] and "--runner" in called and "DataflowRunner" in called
    assert called[called.index("--setup_file") + 1] == str(ROOT / "setup.py")


def test_the_pipeline_module_runs_as_the_script_calls_it():
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "--materialization" in done.stdout
