"""launch_dataflow.sh, tested up to the command it would run (no Dataflow service here)."""
from __future__ import annotations

import json
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

from synanno_datagen.pipeline.options import run_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_dataflow.sh"
OURS = ["--materialization", "gs://tables/export_*.csv", "--source-url", "gs://h01/raw",
        "--target-url", "gs://h01/syn", "--output-dir", "gs://out/ds", "--seed", "3"]


def _package_path():
    """The sys.path folder the synanno_datagen these tests import was found in (a checkout
    reached through PYTHONPATH, or the working directory of ``python -m pytest``), else None
    (the interpreter's install finds it)."""
    import synanno_datagen

    where = Path(list(synanno_datagen.__path__)[0]).parent
    if any(Path(os.path.abspath(entry)).resolve() == where.resolve() for entry in sys.path):
        return str(where)
    return None


def launch(*args, cwd=None, script=SCRIPT, **env):
    """Run the script; PYTHON is this interpreter unless given (None: unset). Its PYTHONPATH
    is only the folder these tests' package comes from, if any: the script's Python runs the
    code under test, and its staging check compares that with the clone it stages."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("PROJECT", "REGION", "BUCKET", "SERVICE_ACCOUNT", "NETWORK",
                         "MAX_WORKERS", "MACHINE_TYPE", "JOB_NAME", "PYTHON", "SYNANNO_VENV",
                         "PYTHONPATH")}
    full["PYTHON"] = sys.executable
    full["PYTHONPATH"] = _package_path()
    full.update(env)
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env=full, timeout=60, cwd=cwd)


def test_dry_run_prints_the_exact_dataflow_command():
    done = launch("--dry-run", *OURS, "--num-instances", "1000", PROJECT="proj",
                  REGION="europe-west4", BUCKET="gs://my-bucket/", SERVICE_ACCOUNT="sa@x.iam",
                  NETWORK="net", MAX_WORKERS="50", MACHINE_TYPE="n2-highmem-4")
    assert done.returncode == 0 and done.stderr == "", done.stderr   # (submits nothing)
    argv = shlex.split(done.stdout)
    assert argv[:5] == [sys.executable, "-P", "-m", "synanno_datagen", "run"]
    args, beam_args = run_parser().parse_known_args(argv[5:])
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


@pytest.mark.parametrize("action", ["run", "schedule"])
def test_a_dry_run_shows_no_password(action):
    """A dry run's commands go to a terminal or a CI log: a volume URL's password is shown as
    *** there (the command run keeps it)."""
    flags = [f if f != "gs://h01/raw" else "https://me:s3cr%2Ft@host/raw" for f in OURS]
    flags += ["--incremental"] if action == "schedule" else []
    done = launch("--dry-run", action, *flags, PROJECT="proj", REGION="europe-west4",
                  BUCKET="gs://my-bucket", SERVICE_ACCOUNT="sa@x.iam")
    assert done.returncode == 0, done.stderr
    assert "s3cr" not in done.stdout + done.stderr
    assert "https://me:***@host/raw" in done.stdout


def test_the_interpreter_is_the_clones_venv_and_must_have_the_package(tmp_path):
    """Without PYTHON the script takes the .venv that ./dev makes beside it, else python3; an
    interpreter that cannot import the package is a usage error naming it, before anything is
    submitted (a user set up with ./dev had a traceback, or 'the template parameters above are
    not valid')."""
    clone = _clone_copy(tmp_path)
    (clone / ".venv" / "bin").mkdir(parents=True)
    venv_python = clone / ".venv" / "bin" / "python"   # stands in for ./dev's venv
    venv_python.write_text(f"#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    venv_python.chmod(0o755)
    script = clone / "launch_dataflow.sh"
    env = dict(PROJECT="p", REGION="r", BUCKET="b", PYTHON=None)
    done = launch("--dry-run", *OURS, script=script, cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout)[0] == str(venv_python)

    bare = tmp_path / "bin"   # python3 without the package: the interpreter the venv is made
    bare.mkdir()              # from, isolated from the working directory
    (bare / "python3").write_text("#!/usr/bin/env bash\nexec "
                                  f"{shlex.quote(sys._base_executable)} -I \"$@\"\n")
    (bare / "python3").chmod(0o755)
    venv_python.unlink()
    path = f"{bare}:{os.environ['PATH']}"
    for action in ((), ("schedule",)):
        done = launch("--dry-run", *action, *OURS, script=script, cwd=tmp_path, PATH=path,
                      SERVICE_ACCOUNT="sa@x", **env)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip() == (
            f"launch_dataflow.sh: error: python3 cannot import synanno_datagen: install the "
            f"package there (pip install {clone}), or set PYTHON to an interpreter that has it "
            f"(./dev makes {clone}/.venv)")


def test_the_interpreter_is_the_venv_dev_made_where_synanno_venv_says(tmp_path):
    """Found by review: ./dev puts its venv at SYNANNO_VENV (a relative one inside the clone),
    but the script looked only at the clone's .venv, and its hint named that one."""
    clone = _clone_copy(tmp_path)
    script = clone / "launch_dataflow.sh"
    for venv, where in ((tmp_path / "elsewhere", tmp_path / "elsewhere"),
                        ("venvs/dev", clone / "venvs" / "dev")):
        (where / "bin").mkdir(parents=True)
        python = where / "bin" / "python"
        python.write_text(f"#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        python.chmod(0o755)
        done = launch("--dry-run", *OURS, script=script, cwd=tmp_path, PROJECT="p", REGION="r",
                      BUCKET="b", PYTHON=None, SYNANNO_VENV=str(venv))
        assert done.returncode == 0, done.stderr
        assert shlex.split(done.stdout)[0] == str(python)
        python.unlink()   # not made yet: the hint names where ./dev makes it (python3
        done = launch("--dry-run", *OURS, script=script, cwd=tmp_path, PROJECT="p", REGION="r",
                      BUCKET="b", PYTHON=None, SYNANNO_VENV=str(venv), PYTHONPATH=None,
                      PATH=f"{tmp_path / 'nopython'}:/usr/bin:/bin")   # without the package)
        assert done.returncode == 2 and f"(./dev makes {where})" in done.stderr, done.stderr


def _clone_copy(tmp_path) -> Path:
    """The script, setup.py and the package's folders copied to another folder, as a clone."""
    import shutil

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("launch_dataflow.sh", "setup.py", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    for folder in ("synanno_datagen", "pipeline", "transforms"):
        shutil.copytree(ROOT / folder, clone / folder, ignore=_not_in_a_clone)
    return clone


def _not_in_a_clone(folder, names):
    """What _clone_copy leaves out: __pycache__, and the links synanno_datagen/pipeline and
    /transforms that a checkout reached through PYTHONPATH may hold (setup.py maps the
    package's pipeline and transforms from the top-level folders)."""
    left_out = {"__pycache__"} & set(names)
    if Path(folder) == ROOT / "synanno_datagen":
        left_out |= {"pipeline", "transforms"} & set(names)
    return left_out


def test_a_run_refuses_a_package_that_is_not_the_code_it_stages(tmp_path):
    """Found by review: the script submits with the package its Python has installed and stages
    the clone's setup.py for the workers; after a git pull without reinstalling the two
    differed and nothing said so. The same code goes; other code is refused in one line."""
    clone = _clone_copy(tmp_path)
    env = dict(PROJECT="p", REGION="r", BUCKET="b")
    done = launch("--dry-run", *OURS, script=clone / "launch_dataflow.sh", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    run = clone / "pipeline" / "run.py"
    original = run.read_text()
    run.write_text(original + "\n# pulled, not installed\n")
    done = launch("--dry-run", *OURS, script=clone / "launch_dataflow.sh", cwd=tmp_path, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"launch_dataflow.sh: error: the synanno_datagen that {sys.executable} runs is not the "
        f"code of {clone}, which the workers get (1 module files differ, e.g. pipeline/run.py): "
        f"reinstall it (pip install {clone}), or use the .venv ./dev makes there"]
    # a module the pull deleted, still installed, is other code too (found by mutation review:
    # comparing only the clone's files passed every test)
    run.write_text(original)
    (clone / "transforms" / "clean.py").unlink()
    done = launch("--dry-run", *OURS, script=clone / "launch_dataflow.sh", cwd=tmp_path, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert "(1 module files differ, e.g. transforms/clean.py)" in done.stderr


def test_files_setuptools_does_not_ship_do_not_count_as_other_code(tmp_path):
    """Found by review: an editor's lock file (a dangling '.#run.py' link) was a traceback, and
    dot-files, files other than .py and folders that are no package, which the workers never
    get, were 'other code'."""
    clone = _clone_copy(tmp_path)
    (clone / "pipeline" / ".#run.py").symlink_to("user@host.1234:1700000000")
    (clone / "pipeline" / ".scratch.py").write_text("x = 1\n")
    (clone / "synanno_datagen" / "scratch").mkdir()
    (clone / "synanno_datagen" / "scratch" / "a.py").write_text("x = 1\n")
    (clone / "pipeline" / "notes.txt").write_text("no module\n")   # (found by mutation review)
    done = launch("--dry-run", *OURS, script=clone / "launch_dataflow.sh", cwd=tmp_path,
                  PROJECT="p", REGION="r", BUCKET="b")
    assert done.returncode == 0, done.stderr


def test_an_install_older_than_the_check_is_told_to_reinstall(tmp_path):
    """Found by review: a package installed before the check existed has no staging module, so
    'python -m' of it said only 'No module named ...' (exit 1). The clone's own copy runs."""
    import shutil

    clone = _clone_copy(tmp_path)
    site = tmp_path / "site" / "synanno_datagen"   # installed as it was: no staging.py yet
    older = shutil.ignore_patterns("staging.py")
    shutil.copytree(clone / "synanno_datagen", site, ignore=older)
    for folder in ("pipeline", "transforms"):
        shutil.copytree(clone / folder, site / folder, ignore=older)
    python = tmp_path / "python"    # that package on the path, nothing of the venv's
    python.write_text("#!/usr/bin/env bash\n"
                      f"PYTHONPATH={shlex.quote(str(site.parent))} "
                      f"exec {shlex.quote(sys.executable)} -S \"$@\"\n")
    python.chmod(0o755)
    done = launch("--dry-run", *OURS, script=clone / "launch_dataflow.sh", cwd=tmp_path,
                  PROJECT="p", REGION="r", BUCKET="b", PYTHON=str(python))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].endswith(
        f"(1 module files differ, e.g. pipeline/staging.py): reinstall it (pip install "
        f"{clone}), or use the .venv ./dev makes there")


def test_a_run_needs_setuptools_in_the_interpreter(tmp_path):
    """Beam builds the package it stages with setuptools, which venvs of Python 3.12+ lack:
    refused before anything is submitted, saying what to install. (A stand-in interpreter: the
    real one, but for setuptools.)"""
    without = tmp_path / "python"
    without.write_text("#!/usr/bin/env bash\n"
                       "if [ \"$*\" = \"-c import setuptools\" ]; then exit 1; fi\n"
                       f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    without.chmod(0o755)
    done = launch("--dry-run", *OURS, PROJECT="p", REGION="r", BUCKET="b", PYTHON=str(without))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        f"launch_dataflow.sh: error: {without} has no setuptools, which Beam needs to build the "
        "package it stages for the workers (venvs of Python 3.12+ come without it): "
        f"{without} -m pip install setuptools")
    assert launch("--dry-run", *OURS, PROJECT="p", REGION="r", BUCKET="b").returncode == 0


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
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "b", "MAX_WORKERS": "0"},
     "MAX_WORKERS '0' is not a positive integer"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "b", "JOB_NAME": "Nightly_Run"},
     "JOB_NAME 'Nightly_Run'"),
    # found by review: these sent temp, staging and template files to gs://synanno-datagen/
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "gs://"}, "BUCKET 'gs://' names no bucket"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "/"}, "BUCKET '/' names no bucket"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "gs://b/sub dir"},
     "BUCKET 'gs://b/sub dir' names no bucket"),
    ({"PROJECT": "p", "REGION": "r", "BUCKET": "my-bucket-"}, "BUCKET 'my-bucket-' names no"),
])
def test_missing_or_bad_variables_fail_clearly(env, message):
    done = launch("--dry-run", *OURS, **env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("launch_dataflow.sh: error: ") and message in done.stderr


def test_submission_runs_the_command_with_a_stand_in_python(tmp_path):
    """Stub: the Dataflow service cannot be reached here, so PYTHON is a stand-in that records
    the arguments it was called with, and where, instead of submitting. It runs where the user
    called the script: in the repository, ``python -m synanno_datagen`` would import its
    ``synanno_datagen/`` folder, which is not the installed package."""
    record, where = tmp_path / "args.txt", tmp_path / "cwd.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n'
                    f'pwd > {shlex.quote(str(where))}\n')
    stub.chmod(0o755)
    done = launch(*OURS, cwd=tmp_path, PROJECT="p", REGION="r", BUCKET="b", PYTHON=str(stub))
    assert done.returncode == 0, done.stderr
    assert where.read_text().strip() == str(tmp_path)
    assert "checking the run, then submitting job synanno-datagen-" in done.stderr
    called = record.read_text().splitlines()
    dry = shlex.split(launch("--dry-run", *OURS, PROJECT="p", REGION="r", BUCKET="b",
                             JOB_NAME="x").stdout)
    assert called[:3] == dry[1:4] and "--runner" in called and "DataflowRunner" in called
    assert called[called.index("--setup_file") + 1] == str(ROOT / "setup.py")


def test_a_synanno_datagen_folder_where_the_script_is_called_shadows_nothing(tmp_path):
    """Found by review: called in a clone with the package installed from it (pip install .,
    not editable), `python -m synanno_datagen` imported the clone's bare synanno_datagen/
    folder (no pipeline, no transforms: setup.py maps those in at install) and the check said
    the package was not installed. The script's Python runs with -P: the working directory is
    not on sys.path."""
    shadow = tmp_path / "synanno_datagen"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the bare folder was imported')\n")
    done = launch("--dry-run", *OURS, cwd=tmp_path, PROJECT="p", REGION="r", BUCKET="b")
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout)[:4] == [sys.executable, "-P", "-m", "synanno_datagen"]


def test_the_pipeline_module_runs_as_the_script_calls_it():
    done = subprocess.run([sys.executable, "-m", "synanno_datagen", "run", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "--materialization" in done.stdout


REQUIRED = ["--materialization", "gs://tables/export_*.csv", "--source-url", "gs://h01/raw",
            "--target-url", "gs://h01/syn", "--output-dir", "gs://out/ds"]
NIGHTLY = REQUIRED + ["--incremental"]   # what a schedule needs


@pytest.fixture
def stub_gcloud(tmp_path):
    """Stub: a stand-in gcloud on PATH that records each call's arguments (one JSON list per
    line) and answers 'scheduler jobs describe' with found/not found per STUB_JOB_EXISTS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud-calls.jsonl"
    script = bin_dir / "gcloud"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:4] == ['scheduler', 'jobs', 'describe']:\n"
        "    sys.exit(0 if os.environ.get('STUB_JOB_EXISTS') == '1' else 1)\n")
    script.chmod(0o755)

    def read():
        import json

        return [json.loads(line) for line in calls.read_text().splitlines()] \
            if calls.exists() else []

    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable}
    return env, read


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_build_template_builds_the_image_and_the_spec(stub_gcloud):
    env, calls = stub_gcloud
    done = launch("build-template", PROJECT="proj", REGION="us-east1", BUCKET="bkt", **env)
    assert done.returncode == 0, done.stderr
    build, spec = calls()
    image = "us-east1-docker.pkg.dev/proj/synanno/synanno-datagen:latest"
    # each in PROJECT and REGION, not gcloud's defaults (found by mutation review: either
    # command without its --project passed every test)
    assert build == ["builds", "submit", str(ROOT), "--project", "proj", "--region", "us-east1",
                     "--tag", image]
    assert spec == ["dataflow", "flex-template", "build",
                    "gs://bkt/synanno-datagen/templates/synanno-datagen.json", "--project",
                    "proj", "--image", image, "--sdk-language", "PYTHON", "--metadata-file",
                    str(ROOT / "metadata.json")]
    dry = launch("--dry-run", "build-template", PROJECT="proj", REGION="us-east1", BUCKET="bkt",
                 **env)
    assert [shlex.split(line)[1:] for line in dry.stdout.splitlines()] == [build, spec]
    assert len(calls()) == 2   # the dry run called nothing


def _metadata():
    import json

    return {p["name"]: p for p in json.loads((ROOT / "metadata.json").read_text())["parameters"]}


def test_a_schedule_dry_run_says_an_existing_job_is_updated_instead(stub_gcloud):
    """Found by review: the dry run printed only the create command, while the real run updates
    a job that exists (and the dry run asks gcloud nothing)."""
    env, calls = stub_gcloud
    done = launch("schedule", "--dry-run", *NIGHTLY, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("# if 'gcloud scheduler jobs describe synanno-datagen-nightly --project p "
                        "--location r' finds the job, it is updated: 'gcloud scheduler jobs "
                        "update http' with --update-headers instead of --headers")
    assert lines[1].startswith("gcloud scheduler jobs create http synanno-datagen-nightly ")
    assert calls() == []


@pytest.mark.parametrize("exists, verb, headers", [("0", "create", "--headers"),
                                                   ("1", "update", "--update-headers")])
def test_schedule_creates_or_updates_a_nightly_launch(stub_gcloud, exists, verb, headers):
    import json

    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, "--num-instances", "5000", "--crop-size", "64", "64",
                  "16", "--incremental", PROJECT="proj", REGION="us-east1", BUCKET="bkt", MAX_WORKERS="20",
                  SERVICE_ACCOUNT="runner@proj.iam.gserviceaccount.com", STUB_JOB_EXISTS=exists,
                  NETWORK="lab-vpc", MACHINE_TYPE="n2-standard-4", **env)
    assert done.returncode == 0, done.stderr
    describe, job = calls()
    assert describe[:4] == ["scheduler", "jobs", "describe", "synanno-datagen-nightly"]
    assert job[:5] == ["scheduler", "jobs", verb, "http", "synanno-datagen-nightly"]
    assert _value(job, "--schedule") == "0 2 * * *" and _value(job, "--time-zone") == "Etc/UTC"
    assert _value(job, "--uri") == ("https://dataflow.googleapis.com/v1b3/projects/proj/"
                                    "locations/us-east1/flexTemplates:launch")
    assert _value(job, "--http-method") == "POST"
    assert _value(job, headers) == "Content-Type=application/json"
    assert _value(job, "--oauth-service-account-email") == "runner@proj.iam.gserviceaccount.com"
    body = json.loads(_value(job, "--message-body"))["launchParameter"]
    assert body["jobName"] == "synanno-datagen-nightly"
    assert body["containerSpecGcsPath"] == "gs://bkt/synanno-datagen/templates/synanno-datagen.json"
    # every field as the run command sets it (found by mutation review: the network sent as
    # the subnetwork, and staging under temp, passed every test)
    assert body["environment"] == {
        "maxWorkers": 20, "machineType": "n2-standard-4", "network": "lab-vpc",
        "serviceAccountEmail": "runner@proj.iam.gserviceaccount.com",
        "tempLocation": "gs://bkt/synanno-datagen/temp",
        "stagingLocation": "gs://bkt/synanno-datagen/staging",
        "sdkContainerImage": "us-east1-docker.pkg.dev/proj/synanno/synanno-datagen:latest"}
    # Every parameter is declared in metadata.json, matches its regex, and required ones are set.
    declared = _metadata()
    params = body["parameters"]
    assert params["crop_size"] == "64 64 16" and params["num_instances"] == "5000"
    assert params["incremental"] == "true"
    assert params["sdk_container_image"] == body["environment"]["sdkContainerImage"]
    for name, value in params.items():
        assert any(re.fullmatch(rx, value) for rx in declared[name]["regexes"]), (name, value)
    assert {n for n, p in declared.items() if not p["isOptional"]} <= set(params)


def test_schedule_sends_exactly_what_its_variables_say(stub_gcloud):
    """Every variable a schedule reads reaches its commands, each command is in PROJECT and
    REGION (not gcloud's defaults), unset worker settings are left out of the launch's
    environment, and the dry run prints the command that runs, quoted to be pasted (found by
    mutation review: the scheduler job's name, time zone and token scope, the template path,
    the describe's --project, --location given PROJECT, empty environment fields, and a dry run
    unquoted each passed every test)."""
    env, calls = stub_gcloud
    variables = dict(PROJECT="proj", REGION="us-east1", BUCKET="bkt", SERVICE_ACCOUNT="sa@proj",
                     JOB_NAME="datagen-h01", SCHEDULER_JOB="datagen-h01-nightly",
                     SCHEDULE="30 3 * * 1-5", TIME_ZONE="Europe/Berlin",
                     TEMPLATE_PATH="gs://tpl/datagen.json", IMAGE="registry.example/img:7")
    done = launch("schedule", *NIGHTLY, **variables, **env)
    assert done.returncode == 0, done.stderr
    describe, job = calls()
    assert describe == ["scheduler", "jobs", "describe", "datagen-h01-nightly", "--project",
                        "proj", "--location", "us-east1"]
    body = json.loads(job[-1])
    assert job == ["scheduler", "jobs", "create", "http", "datagen-h01-nightly", "--project",
                   "proj", "--location", "us-east1", "--schedule", "30 3 * * 1-5",
                   "--time-zone", "Europe/Berlin", "--uri",
                   "https://dataflow.googleapis.com/v1b3/projects/proj/locations/us-east1/"
                   "flexTemplates:launch", "--http-method", "POST", "--headers",
                   "Content-Type=application/json", "--oauth-service-account-email",
                   "sa@proj", "--oauth-token-scope",
                   "https://www.googleapis.com/auth/cloud-platform", "--message-body", job[-1]]
    launch_parameter = body["launchParameter"]
    assert (launch_parameter["jobName"], launch_parameter["containerSpecGcsPath"]) == (
        "datagen-h01", "gs://tpl/datagen.json")
    assert launch_parameter["environment"] == {
        "serviceAccountEmail": "sa@proj", "tempLocation": "gs://bkt/synanno-datagen/temp",
        "stagingLocation": "gs://bkt/synanno-datagen/staging",
        "sdkContainerImage": "registry.example/img:7"}
    assert launch_parameter["parameters"]["sdk_container_image"] == "registry.example/img:7"
    dry = launch("--dry-run", "schedule", *NIGHTLY, **variables, **env)
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout.splitlines()[1]) == ["gcloud", *job]
    assert len(calls()) == 2   # the dry run called nothing


def test_schedule_needs_a_service_account_and_valid_flags(stub_gcloud):
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, PROJECT="p", REGION="r", BUCKET="b", **env)
    assert done.returncode == 2 and "SERVICE_ACCOUNT is not set" in done.stderr
    # the launch's job name is checked as run's is (found by mutation review: unchecked, every
    # night's launch would be refused)
    done = launch("schedule", *REQUIRED, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", JOB_NAME="Nightly_Run", **env)
    assert done.returncode == 2 and "JOB_NAME 'Nightly_Run' must be lowercase" in done.stderr
    done = launch("schedule", *REQUIRED, "--runner", "DirectRunner", PROJECT="p", REGION="r",
                  BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and "--runner" in done.stderr
    assert calls() == []


def test_metadata_declares_exactly_the_run_flags_and_the_worker_image():
    from synanno_datagen.pipeline.flex import template_parameters

    assert list(_metadata()) == template_parameters() + ["sdk_container_image"]


def test_metadata_json_is_made_from_the_run_flags(capsys):
    """metadata.json is what ``python -m synanno_datagen.pipeline.flex metadata`` prints, byte for
    byte: a run flag's changed help, default or name fails here until the file is made again
    (found by review: 23 of 31 help texts had drifted from run --help)."""
    from synanno_datagen.pipeline.flex import main

    assert main(["metadata"]) == 0
    made = capsys.readouterr().out
    assert (ROOT / "metadata.json").read_text() == made, (
        "metadata.json is not what the run flags make; make it again with "
        "'.venv/bin/python -P -m synanno_datagen.pipeline.flex metadata > metadata.json'")


def test_the_template_help_is_run_help_with_parameter_names():
    declared = _metadata()
    assert declared["variants"]["helpText"] == "seed-slice variants per instance (default 4)"
    assert declared["crop_size"]["helpText"] == \
        "'X Y Z': crop size in target voxels (default 128 128 16)"
    assert declared["lease_hours"]["helpText"].startswith(
        "one run writes output_dir at a time: a run's lease expires this many hours after it "
        "was last renewed (default 20;")
    assert declared["incremental"]["helpText"].startswith(
        "true: add only new instances to the dataset under output_dir ")
    assert declared["break_lease"]["helpText"].endswith("; a one-off launch, never a schedule")
    assert ".pq" in declared["materialization"]["helpText"]
    assert declared["output_dir"]["helpText"].startswith("where the dataset goes")
    # found by review: it said "local or gs://" while its regex takes gs:// only
    assert declared["output_dir"]["helpText"].endswith("; on Dataflow a gs:// path")
    assert all(not re.search(r"--[a-z]|%\(", p["helpText"]) for p in declared.values())
    assert (declared["missing_chunks"]["isOptional"], declared["source_url"]["isOptional"]) == \
        (True, False)


def test_template_parameters_become_run_flags():
    from synanno_datagen.pipeline.flex import parameters_to_flags

    argv = parameters_to_flags(["--materialization=gs://t/*.csv", "--crop_size=64 64 16",
                                "--runner=DataflowRunner", "--seed=4", "--source_url=gs://s",
                                "--target_url=gs://t", "--output_dir=gs://o", "--incremental=true"])
    args, beam = run_parser().parse_known_args(argv)
    assert args.crop_size == [64, 64, 16] and args.seed == 4 and beam == ["--runner=DataflowRunner"]
    assert args.incremental
    assert not run_parser().parse_known_args(parameters_to_flags(
        ["--incremental=false", "--materialization=m", "--source_url=s", "--target_url=t",
         "--output_dir=o"]))[0].incremental
    # a column name may start with '-' (the template's check allows it): still the flag's value
    args, _ = run_parser().parse_known_args(parameters_to_flags(
        ["--materialization=m", "--source_url=s", "--target_url=t", "--output_dir=o",
         "--id_column=-synapse_id"]))
    assert args.id_column == "-synapse_id"


def test_flags_written_with_an_equals_sign_become_parameters_too():
    """``--seed=3`` is a flag as ``--seed 3`` is: a schedule made with either sends it (found by
    mutation review: a match of the bare flag alone dropped them from every night's launch
    without a word)."""
    from synanno_datagen.pipeline.flex import flags_to_parameters

    spaced = flags_to_parameters(list(REQUIRED) + ["--seed", "3", "--num-instances", "1000",
                                                   "--incremental"])
    equals = flags_to_parameters(["--materialization=gs://tables/export_*.csv",
                                  "--source-url=gs://h01/raw", "--target-url=gs://h01/syn",
                                  "--output-dir=gs://out/ds", "--seed=3",
                                  "--num-instances=1000", "--incremental"])
    assert equals == spaced
    assert (spaced["seed"], spaced["num_instances"], spaced["output_dir"]) == (
        "3", "1000", "gs://out/ds")


def test_table_parameters_round_trip_with_decimal_resolutions():
    from synanno_datagen.pipeline.flex import flags_to_parameters, parameters_to_flags

    params = flags_to_parameters(list(REQUIRED) + [
        "--center-column", "ctr_pt_position", "--pre-column", "pre_pt_position",
        "--coordinate-resolution", "4", "4.5", "33"])
    assert params["coordinate_resolution"] == "4.0 4.5 33.0"
    declared = _metadata()
    for name, value in params.items():
        assert any(re.fullmatch(rx, value) for rx in declared[name]["regexes"]), (name, value)
    args, _ = run_parser().parse_known_args(parameters_to_flags(
        [f"--{name}={value}" for name, value in params.items()]))
    assert args.coordinate_resolution == [4.0, 4.5, 33.0]
    assert args.center_column == "ctr_pt_position" and args.post_column is None


def launch_template(parameters, cwd, *beam_args):
    """What the Flex Template launcher does: ``python $FLEX_TEMPLATE_PYTHON_PY_FILE`` (the
    Dockerfile's, at its place in this checkout) with that variable set, template parameters as
    ``--name=value`` and the Beam options after them, from a directory that is not the repo."""
    from tests.test_dockerfile import final_stage, flex_py_file_in_repo

    py_file = flex_py_file_in_repo(final_stage())
    env = {**os.environ, "FLEX_TEMPLATE_PYTHON_PY_FILE": str(py_file)}
    argv = [sys.executable, str(py_file)] + [f"--{k}={v}" for k, v in parameters.items()]
    return subprocess.run(argv + list(beam_args), capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def _template_parameters(small_data, out):
    return {"materialization": small_data.table_path, "source_url": small_data.source_url,
            "target_url": small_data.target_url, "output_dir": out, "crop_size": "12 12 4",
            "variants": "2", "incremental": "true"}


def test_template_entry_point_runs_the_pipeline_as_the_launcher_calls_it(small_data, tmp_path):
    import json

    root = tmp_path / "root"
    done = launch_template(_template_parameters(small_data, root), tmp_path,
                           "--runner=DirectRunner")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((root / "runs" / "00001" / "manifest.json").read_text())
    assert manifest["config"]["crop_size_xyz"] == [12, 12, 4]
    assert manifest["counts"]["variants_written"] == 10
    event = json.loads(done.stdout.splitlines()[-1])
    assert (event["status"], event["instances_written"]) == ("ok", 5)
    assert not (root / "LEASE").exists()


def test_a_launch_that_only_submits_leaves_the_lease_to_the_job(small_data, tmp_path):
    """A Flex Template's launcher exits once the job is submitted (Beam writes the job to
    --template_location and does not wait). Stand-in: the DirectRunner, which ignores the
    option and runs the job before it returns, as the job would after the launcher exits. The
    launcher must not look for a manifest, and the job releases the lease."""
    import json

    root = tmp_path / "root"
    done = launch_template(_template_parameters(small_data, root), tmp_path,
                           "--runner=DirectRunner", f"--template_location={tmp_path / 'job'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "submitted"
    assert (root / "runs" / "00001" / "manifest.json").exists()   # the DirectRunner ran it
    assert not (root / "LEASE").exists()


@pytest.mark.parametrize("args, env", [
    (["schedule", "--help"], {}), (["schedule", *REQUIRED, "-h"], {}),
    (["--dry-run", "schedule", "-h"], {}), (["schedule", "--help"], None),
    (["run", *REQUIRED, "--help"], {}), (["status", "--help"], {}),
    (["build-template", "-h"], {}),
])
def test_help_after_an_action_prints_the_usage_and_does_nothing_else(stub_gcloud, args, env):
    """Found by review: 'schedule --help' wrote the usage of the run flags as the nightly job's
    request body, silently (exit 0); 'status --help' and 'build-template --help' were refused.
    Help needs no variables (None: none set)."""
    gcloud_env, calls = stub_gcloud
    needed = {} if env is None else dict(PROJECT="p", REGION="r", BUCKET="b",
                                          SERVICE_ACCOUNT="sa@p")
    done = launch(*args, **needed, **gcloud_env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("usage: ./launch_dataflow.sh") and calls() == []
    flags_help = "usage: synanno-datagen run" in done.stdout
    assert flags_help == (args[0] in ("run", "schedule") or args[1] == "schedule")
    if flags_help:
        assert "--materialization TABLE" in done.stdout


def test_help_among_the_flags_of_a_schedule_body_is_refused():
    from synanno_datagen.errors import ConfigError
    from synanno_datagen.pipeline.flex import flags_to_parameters

    for flag in ("-h", "--help"):
        with pytest.raises(ConfigError, match=f"{flag}: no template parameter"):
            flags_to_parameters(list(REQUIRED) + [flag])


def test_help_prints_the_usage_not_the_script():
    done = launch("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: ./launch_dataflow.sh")
    assert "status [--wait]" in done.stdout and "Exit codes:" in done.stdout
    script = SCRIPT.read_text().splitlines()
    assert not [line for line in done.stdout.splitlines() if line.startswith(("#", "set -"))
                or (line.strip() and line in script[:5])]


@pytest.fixture
def stub_dataflow(tmp_path):
    """Stub: a stand-in gcloud that answers 'dataflow jobs list' with STUB_JOB_ID (none if
    empty; it fails as gcloud does when STUB_JOB_ID is ERROR, and the first STUB_LIST_FAILS
    times) and each 'dataflow jobs describe' with the next state of STUB_STATES (ERROR: it
    fails), recording every call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, count = tmp_path / "calls.jsonl", tmp_path / "describes"
    lists = tmp_path / "lists"
    (bin_dir / "gcloud").write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "def answer(text):\n"
        "    if text == 'ERROR':\n"
        "        sys.exit('ERROR: (gcloud.dataflow.jobs) Connection reset by peer')\n"
        "    print(text)\n"
        "if sys.argv[1:4] == ['dataflow', 'jobs', 'list']:\n"
        f"    n = int(open({str(lists)!r}).read()) if os.path.exists({str(lists)!r}) else 0\n"
        f"    open({str(lists)!r}, 'w').write(str(n + 1))\n"
        "    failing = n < int(os.environ.get('STUB_LIST_FAILS', '0'))\n"
        "    answer('ERROR' if failing else os.environ.get('STUB_JOB_ID', ''))\n"
        "elif sys.argv[1:4] == ['dataflow', 'jobs', 'describe']:\n"
        f"    n = int(open({str(count)!r}).read()) if os.path.exists({str(count)!r}) else 0\n"
        f"    open({str(count)!r}, 'w').write(str(n + 1))\n"
        "    states = os.environ['STUB_STATES'].split(',')\n"
        "    answer(states[min(n, len(states) - 1)])\n")
    (bin_dir / "gcloud").chmod(0o755)

    def read():
        import json

        return [json.loads(line) for line in calls.read_text().splitlines()]

    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "POLL_SECONDS": "0"}, read


@pytest.mark.parametrize("states, args, code", [
    ("JOB_STATE_DONE", [], 0),
    ("JOB_STATE_FAILED", [], 1),
    ("JOB_STATE_CANCELLED", [], 1),
    ("JOB_STATE_DRAINED", [], 1),    # (ended states too: found by mutation review, --wait
    ("JOB_STATE_UPDATED", [], 1),    # would have polled them for good)
    ("JOB_STATE_RUNNING", [], 4),
    ("JOB_STATE_PENDING,JOB_STATE_RUNNING,JOB_STATE_DONE", ["--wait"], 0),
    ("JOB_STATE_RUNNING,JOB_STATE_FAILED", ["--wait"], 1),
])
def test_status_reports_the_newest_nightly_job_and_exits_by_its_state(stub_dataflow, states,
                                                                      args, code):
    env, calls = stub_dataflow
    done = launch("status", *args, PROJECT="proj", REGION="us-east1",
                  STUB_JOB_ID="2025-01-02_x\n2025-01-01_y",   # newest first, as asked
                  STUB_STATES=states, **env)
    assert done.returncode == code, done.stderr
    listed, *described = calls()
    assert listed[:3] == ["dataflow", "jobs", "list"]
    # that exact name (not synanno-datagen-nightly-backfill), newest first by the field jobs
    # list has (creationTime), all of them: gcloud's default --limit 100 cuts before sorting
    # (found by review)
    assert _value(listed, "--filter") == "name~^synanno-datagen-nightly$"
    assert _value(listed, "--sort-by") == "~creationTime"
    assert _value(listed, "--limit") == "unlimited"
    assert (_value(listed, "--project"), _value(listed, "--region")) == ("proj", "us-east1")
    assert all(d[:4] == ["dataflow", "jobs", "describe", "2025-01-02_x"] for d in described)
    assert len(described) == (len(states.split(",")) if args else 1)
    assert done.stdout.splitlines()[-1] == \
        f"synanno-datagen-nightly 2025-01-02_x {states.split(',')[-1 if args else 0]}"


def test_status_wait_gives_up_after_three_failed_polls_in_a_row_not_in_all(stub_dataflow):
    """Failed polls are counted in a row: two failed lists, then a failed describe, then the
    answer, is no reason to give up (found by mutation review: one count for both passed)."""
    env, calls = stub_dataflow
    done = launch("status", "--wait", PROJECT="proj", REGION="r", STUB_JOB_ID="2025-01-02_x",
                  STUB_LIST_FAILS="2", STUB_STATES="ERROR,JOB_STATE_DONE", **env)
    assert done.returncode == 0, done.stderr
    assert [c[2] for c in calls()] == ["list", "list", "list", "describe", "describe"]
    done = launch("status", "--wait", PROJECT="proj", REGION="r", STUB_JOB_ID="ERROR", **env,
                  STUB_STATES="JOB_STATE_DONE")
    assert done.returncode == 5, done.stderr


def test_status_of_a_job_that_does_not_exist_is_a_usage_error(stub_dataflow):
    env, _ = stub_dataflow
    done = launch("status", "my-job", PROJECT="p", REGION="r", STUB_JOB_ID="",
                  STUB_STATES="JOB_STATE_DONE", **env)
    assert done.returncode == 2 and "no Dataflow job named my-job in p/r" in done.stderr


def test_a_schedule_never_breaks_leases_or_retries_every_failure(stub_gcloud):
    """One-off parameters: every night would break a live run's lease, or (found by review)
    try every remembered failure again, paying for each every night."""
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, "--incremental", "--break-lease", PROJECT="p",
                  REGION="r", BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and "--break-lease: not in a schedule" in done.stderr
    assert calls() == []
    done = launch("schedule", *REQUIRED, "--incremental", "--retry-failed", PROJECT="p",
                  REGION="r", BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "--retry-failed: not in a schedule: every night would try again every" in done.stderr
    assert "retry_failed=true" in done.stderr and calls() == []
    done = launch("schedule", *REQUIRED, "--incremental", "--lease-hours", "30", PROJECT="p",
                  REGION="r", BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 0, done.stderr
    import json

    params = json.loads(_value(calls()[-1], "--message-body"))["launchParameter"]["parameters"]
    assert (params["incremental"], params["lease_hours"]) == ("true", "30.0")
    declared = _metadata()
    for name, value in params.items():
        assert any(re.fullmatch(rx, value) for rx in declared[name]["regexes"]), (name, value)


def test_small_and_large_numbers_become_parameters_the_template_accepts():
    """Python writes 0.00001 as 1e-05, which the template's regexes (and readers) refuse."""
    from synanno_datagen.pipeline.flex import flags_to_parameters, parameters_to_flags

    params = flags_to_parameters(list(REQUIRED) + [
        "--coordinate-resolution", "0.00001", "4.5", "33", "--shard-size-mb", "1e-3",
        "--lease-hours", "1e3"])
    assert params["coordinate_resolution"] == "0.00001 4.5 33.0"
    assert (params["shard_size_mb"], params["lease_hours"]) == ("0.001", "1000.0")
    declared = _metadata()
    for name, value in params.items():
        assert any(re.fullmatch(rx, value) for rx in declared[name]["regexes"]), (name, value)
    args, _ = run_parser().parse_known_args(parameters_to_flags(
        [f"--{name}={value}" for name, value in params.items()]))
    assert args.coordinate_resolution == [0.00001, 4.5, 33.0] and args.shard_size_mb == 0.001


@pytest.mark.parametrize("flags", [["--quiet"], ["--progress-interval", "5"],
                                   ["--progress-interval=5"]])
def test_a_schedule_refuses_output_flags_with_what_they_are(stub_gcloud, flags):
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, *flags, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    flag = flags[0].split("=")[0]
    assert done.returncode == 2 and f"{flag}: it shapes what a command prints" in done.stderr
    assert "Dataflow settings" not in done.stderr and calls() == []


def test_a_schedule_refuses_overwrite_instead_of_dropping_it(stub_gcloud):
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, "--overwrite", PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and "--overwrite: not in a schedule" in done.stderr
    assert calls() == []


def test_a_schedule_refuses_parameters_the_template_would_refuse(stub_gcloud):
    """The launch body is checked against metadata.json's regexes as the nightly launches would
    be: refused now, once, instead of every night."""
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, "--splits", "train=0.99999,val=1e-05", PROJECT="p",
                  REGION="r", BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2, done.stderr
    assert "--splits 'train=0.99999,val=1e-05': the template's check refuses it" in done.stderr
    assert len(done.stderr.splitlines()) == 1   # found by review: a second line blamed "the
    assert calls() == []                        # template parameters above"
    # the whole value must match: '$' would let a final newline through (found by mutation
    # review: re.match for re.fullmatch passed every test)
    done = launch("schedule", *REQUIRED, "--id-column", "syn_id\n", PROJECT="p", REGION="r",
                  BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2, done.stderr
    assert "--id-column 'syn_id\\n': the template's check refuses it" in done.stderr
    assert calls() == []
    # the workers' image comes from IMAGE: the message names it, not the script's inner flag
    done = launch("schedule", *REQUIRED, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", IMAGE="Registry.example/img:1", **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("synanno-datagen: error: IMAGE 'Registry.example/img:1': the "
                                  "template's check refuses it")
    assert len(done.stderr.splitlines()) == 1 and calls() == []


@pytest.mark.parametrize("flags, message", [
    (["--splits", "train=0.8,val=0.1"], "sum to 0.9"),
    (["--lease-hours", "0"], "--lease-hours 0.0: must be positive"),
    (["--fetch-memory-mb", "1"], "--fetch-memory-mb 1: must be at least 16"),
    (["--shard-size-mb", "0"], "--shard-size-mb 0.0: must be positive"),
    (["--coordinate-resolution", "0", "8", "33"], "--coordinate-resolution 0.0 8.0 33.0"),
    (["--formats", "zarr"], "--formats 'zarr'"),
    # found by review: output directories every night's run refuses were scheduled
    (["--output-dir", "gs://b/d[1]"], "--output-dir gs://b/d[1]: holds a glob character"),
    (["--output-dir", "gs://b/out*"], "holds a glob character"),
    (["--output-dir", "gs:///x"], "--output-dir 'gs:///x': no bucket after gs://"),
    # found by review: a volume URL with a query (a token) was scheduled, refused every night
    (["--source-url", "https://h.example/vol?access_token=TOKEN"],
     "--source-url https://h.example/vol?access_token=***: a volume URL takes no query string"),
])
def test_a_schedule_refuses_values_every_nightly_run_would_refuse(stub_gcloud, flags, message):
    """Values that pass the template's regexes but that run refuses: refused when scheduling,
    not at every night's launch."""
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, "--incremental", *flags, PROJECT="p", REGION="r",
                  BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.splitlines()) == 1
    assert calls() == [] and "TOKEN" not in done.stdout + done.stderr


def test_a_template_launch_without_the_worker_image_is_refused_before_the_lease(small_data,
                                                                                tmp_path):
    """A Flex Template launch without the workers' image (of a template built before it was a
    required parameter, from the console or gcloud) would give the workers Beam's own image,
    without this package: the job fails and its lease blocks the next nights. The launcher refuses it first. (Beam builds the job for
    --template_location without reaching Dataflow; here it is refused before that.)"""
    import json

    root = tmp_path / "root"
    done = launch_template(_template_parameters(small_data, root), tmp_path,
                           "--runner=DataflowRunner", "--project=my-project", "--region=r",
                           "--temp_location=gs://b/tmp", "--template_location=gs://b/job.json")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the template was launched without sdk_container_image" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["status"] == "refused"
    assert not (root / "LEASE").exists() and not (root / "runs").exists()
    from synanno_datagen.pipeline.unknown_flags import check_runner

    check_runner(["--runner=DataflowRunner", "--project=my-project", "--region=r",   # Beam's
                  "--temp_location=gs://b/tmp", "--template_location=gs://b/job.json",  # older
                  "--worker_harness_container_image=registry.example/img:1"])          # name
    # workers that install the package from the job's files have it too (refusing them passed
    # every test; found by a mutation review)
    for ships in ("--setup_file=./setup.py", "--extra_packages=dist/synanno.tar.gz",
                  "--requirements_file=requirements.txt"):
        check_runner(["--runner=DataflowRunner", "--project=my-project", "--region=r",
                      "--temp_location=gs://b/tmp", "--template_location=gs://b/job.json",
                      ships])


def test_the_worker_image_as_a_template_parameter_reaches_beam():
    """Found by review: no document says that the launcher turns the launch's
    environment.sdkContainerImage into Beam's --sdk_container_image (Google's samples pass the
    image as the template parameter sdk_container_image). The template declares it, required,
    and the launcher's ``--sdk_container_image=IMAGE`` goes to Beam as it is."""
    from synanno_datagen.pipeline.flex import parameters_to_flags
    from synanno_datagen.pipeline.unknown_flags import check_runner

    image = "us-east1-docker.pkg.dev/proj/synanno/synanno-datagen:latest"
    declared = _metadata()["sdk_container_image"]
    assert declared["isOptional"] is False
    assert any(re.fullmatch(rx, image) for rx in declared["regexes"])
    for refused in ("", "synanno-datagen", "registry.example/img name"):
        assert not any(re.fullmatch(rx, refused) for rx in declared["regexes"]), refused
    argv = parameters_to_flags(["--materialization=gs://t/x.csv", "--source_url=gs://s",
                                "--target_url=gs://t", "--output_dir=gs://o",
                                f"--sdk_container_image={image}", "--runner=DataflowRunner",
                                "--project=my-project", "--region=r", "--temp_location=gs://b/t",
                                "--template_location=gs://b/job.json"])
    args, beam = run_parser().parse_known_args(argv)
    assert f"--sdk_container_image={image}" in beam and args.output_dir == "gs://o"
    check_runner(beam)   # not refused: the workers get the image


def test_a_schedule_takes_volume_urls_with_the_precomputed_prefix(stub_gcloud):
    """``precomputed://gs://...`` is how Neuroglancer and cloud-volume write a volume URL, and
    run reads it: the template's regexes accept it too."""
    import json

    env, calls = stub_gcloud
    done = launch("schedule", "--materialization", "gs://tables/export_*.csv",
                  "--source-url", "precomputed://gs://h01/raw",
                  "--target-url", "precomputed://https://h01.example.org/syn",
                  "--output-dir", "gs://out/datagen", "--incremental", PROJECT="p", REGION="r",
                  BUCKET="b", SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 0, done.stderr
    params = json.loads(_value(calls()[-1], "--message-body"))["launchParameter"]["parameters"]
    assert params["source_url"] == "precomputed://gs://h01/raw"
    assert params["target_url"] == "precomputed://https://h01.example.org/syn"
    declared = _metadata()
    for name in ("source_url", "target_url"):
        assert any(re.fullmatch(rx, params[name]) for rx in declared[name]["regexes"])
    for refused in ("precomputed://file:///data/raw", "file:///data/raw", "precomputed://gs:/x"):
        assert not any(re.fullmatch(rx, refused) for rx in declared["source_url"]["regexes"])


@pytest.mark.parametrize("job_id, states, args, code", [
    ("ERROR", "JOB_STATE_DONE", [], 5),
    ("2025-01-02_x", "ERROR", [], 5),
    ("2025-01-02_x", "JOB_STATE_RUNNING,ERROR,JOB_STATE_DONE", ["--wait"], 0),
    ("2025-01-02_x", "JOB_STATE_RUNNING,ERROR,ERROR,ERROR", ["--wait"], 5),
    # in a row: an answer between failures starts the count again (found by mutation review)
    ("2025-01-02_x", "ERROR,ERROR,JOB_STATE_RUNNING,ERROR,ERROR,JOB_STATE_DONE", ["--wait"], 0),
    ("ERROR", "JOB_STATE_DONE", ["--wait"], 5),   # three lists in a row
])
def test_status_tells_a_gcloud_failure_from_a_failed_job(stub_dataflow, job_id, states, args,
                                                         code):
    """Found by review: gcloud failing (network, expired login) ended status with gcloud's exit
    code 1, which says the job failed. It is 5, the job's state unknown; --wait asks again at the
    next poll, up to three failures in a row."""
    env, calls = stub_dataflow
    done = launch("status", *args, PROJECT="p", REGION="r", STUB_JOB_ID=job_id,
                  STUB_STATES=states, **env)
    assert done.returncode == code, done.stderr
    if code == 5:
        assert "Connection reset by peer" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            "launch_dataflow.sh: gcloud failed, so the state of ")
    else:
        assert done.stdout.splitlines()[-1].endswith("JOB_STATE_DONE")
    described = [c for c in calls() if c[:3] == ["dataflow", "jobs", "describe"]]
    assert len(described) == (0 if job_id == "ERROR" else len(states.split(",")))
    listed = [c for c in calls() if c[:3] == ["dataflow", "jobs", "list"]]
    assert len(listed) == (3 if job_id == "ERROR" and args else 1)


def test_a_schedule_needs_incremental(stub_gcloud):
    """Found by review: a schedule without --incremental was written, and every night would
    have fetched every instance again and rewritten the dataset in place, readers included."""
    env, calls = stub_gcloud
    done = launch("schedule", *REQUIRED, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and calls() == []
    assert done.stderr.splitlines() == [
        "synanno-datagen: error: --incremental: a schedule needs it: each night adds the table's "
        "new synapses to one dataset; without it every night would fetch every instance again "
        "and rewrite the dataset in place (for a dataset made once: ./launch_dataflow.sh run "
        "...)"]


@pytest.mark.parametrize("extra, told", [
    (["--num-instance", "5"], "unknown flag --num-instance; did you mean --num-instances?"),
    (["export_2.csv"], "unexpected argument 'export_2.csv': not the value of any flag; see "),
    (["--max_num_workers", "5"], "--max_num_workers: only synanno-datagen run flags can be "
                                 "template parameters; Dataflow settings come from the "
                                 "environment variables"),
])
def test_a_schedules_stray_flags_and_words_are_told_as_run_tells_them(stub_gcloud, extra, told):
    """Found by review: a typo of a run flag, or a word a shell-expanded glob left, were told
    'only synanno-datagen run flags can be template parameters', as a Beam flag is."""
    env, calls = stub_gcloud
    done = launch("schedule", *NIGHTLY, *extra, PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and calls() == []
    assert done.stderr.startswith(f"synanno-datagen: error: {told}"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_schedules_table_glob_the_shell_expanded_is_told_to_be_quoted(stub_gcloud, tmp_path):
    env, calls = stub_gcloud
    shards = [tmp_path / f"part-{i}.csv" for i in (1, 2)]
    for shard in shards:
        shard.write_text("x,y,z\n1,2,3\n")
    flags = [str(shards[0]) if f == "gs://tables/export_*.csv" else f for f in NIGHTLY]
    done = launch("schedule", *flags, str(shards[1]), PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 2 and calls() == []
    assert done.stderr.splitlines() == [
        f"synanno-datagen: error: unexpected argument '{shards[1]}': not the value of any flag; "
        f"a glob the shell expanded into the table's shards? quote it: --materialization "
        f"'{tmp_path}/*.csv'"]


@pytest.mark.parametrize("action", [["build-template"], ["status"], ["schedule", *NIGHTLY],
                                    ["run", *REQUIRED], [*REQUIRED]])
def test_dry_run_after_the_action_is_a_dry_run_too(stub_gcloud, action):
    """Found by review: only a first --dry-run was one; after the action it was ignored, and
    build-template really submitted a build."""
    env, calls = stub_gcloud
    done = launch(*action, "--dry-run", PROJECT="p", REGION="r", BUCKET="b",
                  SERVICE_ACCOUNT="sa@p", **env)
    assert done.returncode == 0, done.stderr
    assert calls() == []
    assert "gcloud " in done.stdout or "synanno_datagen run" in done.stdout
    assert "--dry-run" not in done.stdout


@pytest.mark.parametrize("args, message", [
    (["build-template", "--tag", "x"], "build-template takes no arguments (got --tag x)"),
    (["status", "--wiat"], "status: unknown option --wiat"),
    (["status", "a", "b"], "status takes at most one JOB_NAME (got a b)"),
])
def test_arguments_an_action_does_not_take_are_refused(stub_gcloud, args, message):
    env, calls = stub_gcloud
    done = launch(*args, PROJECT="p", REGION="r", BUCKET="b", **env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert calls() == []


def test_lists_with_spaces_after_commas_become_parameters_the_template_accepts():
    """Found by review: run reads 'tfrecord, npy', but the template's regexes refused it."""
    from synanno_datagen.pipeline.flex import flags_to_parameters, parameters_to_flags

    params = flags_to_parameters(list(REQUIRED) + [
        "--formats", "tfrecord, npy", "--splits", "train=0.8, val=0.2",
        "--missing-chunks", " source=error , target=zero "])
    assert (params["formats"], params["splits"], params["missing_chunks"]) == (
        "tfrecord,npy", "train=0.8,val=0.2", "source=error,target=zero")
    declared = _metadata()
    for name, value in params.items():
        assert any(re.fullmatch(rx, value) for rx in declared[name]["regexes"]), (name, value)
    args, _ = run_parser().parse_known_args(parameters_to_flags(
        [f"--{name}={value}" for name, value in params.items()]))
    assert args.splits == "train=0.8,val=0.2"


def test_readme_alert_policy_names_a_resource_type_in_every_condition():
    """Found by review: the Monitoring API refuses (HTTP 400) a threshold condition whose
    filter names the metric but no resource.type; README's policy had one such condition."""
    text = (ROOT / "README.md").read_text()
    body = text.split("cat > bad-night-policy.json <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    policy = json.loads(body)
    kinds = []
    for condition in policy["conditions"]:
        parts = dict(p.split("=", 1) for p in condition["conditionThreshold"]["filter"]
                     .split(" AND "))
        assert parts["metric.type"] == \
            '"logging.googleapis.com/user/synanno_datagen_bad_nights"'
        kinds.append(parts["resource.type"].strip('"'))
    assert kinds == ["dataflow_step", "cloud_scheduler_job"] and policy["combiner"] == "OR"
    # the log filter's clauses come from these two types (and a machine's, for run there)
    metric = text.split("gcloud logging metrics create synanno_datagen_bad_nights", 1)[1]
    metric = metric.split("```", 1)[0]
    assert all(f'resource.type="{kind}"' in metric for kind in kinds)


def test_readme_alert_filter_counts_nights_that_need_a_look_and_no_healthy_one():
    """Found by review: a night whose storage failed for most of its instances ended ok with
    some written, and README's filter matched nothing in its closing line. The filter's text
    terms, matched as Cloud Logging matches a quoted string (a substring of the entry), against
    closing lines made by the code that prints them."""
    from synanno_datagen.pipeline.monitoring import event_line, run_event

    metric = (ROOT / "README.md").read_text().split(
        "gcloud logging metrics create synanno_datagen_bad_nights", 1)[1].split("```", 1)[0]
    run_clause = metric.split('("synanno_datagen_run" AND (', 1)[1].split("))", 1)[0]
    terms = [t.replace('\\"', '"') for t in re.findall(r'"((?:[^"\\]|\\.)*)"', run_clause)]
    assert len(terms) >= 5

    def line(written, failures, remembered=None, status="ok"):
        manifest = {"config": {"output_dir": "gs://o/ds"}, "incremental": {"run_dir": "runs/3"},
                    "counts": {"instances_written": written, "failures": failures,
                               "remembered_failures": remembered or {}}}
        return event_line(run_event("run", status, 0, 1.0, "gs://o/ds", manifest))

    def needs_a_look(text):
        return "synanno_datagen_run" in text and any(t in text for t in terms)

    healthy = line(12, {"outside_volume": 2, "empty_target": 1}, {"missing_chunks": 4})
    assert not needs_a_look(healthy)
    for bad in (line(7, {"fetch_error": 22, "outside_volume": 1}),
                line(28, {"unexpected_error": 1}), line(0, {}),
                line(5, {}, status="failed"),
                event_line(run_event("run", "refused", 2, 0.1, "gs://o/ds", error="bad flag")),
                event_line(run_event("run", "busy", 3, 0.1, "gs://o/ds", error="held"))):
        assert needs_a_look(bad), bad
