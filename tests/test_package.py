"""One import package: a training project with its own ``pipeline.py`` and ``transforms.py``
(common names) uses our CLI and reading API without either shadowing ours."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SHADOWS = {"pipeline.py": "raise ImportError('the user project pipeline.py was imported')\n",
           "transforms.py": "raise ImportError('the user project transforms.py was imported')\n"}


def _user_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name, text in SHADOWS.items():
        (project / name).write_text(text)
    return project


def test_cli_and_reading_api_work_beside_a_users_pipeline_and_transforms(views_dataset,
                                                                        tmp_path):
    project = _user_project(tmp_path)
    code = ("import json, sys\n"
            "from synanno_datagen import open_dataset, ShardDataset, NpyDataset, tf_dataset\n"
            "import pipeline\n")  # the user's own module still imports (and raises) as theirs
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                          text=True)
    assert "the user project pipeline.py was imported" in done.stderr
    code = ("import json\nfrom synanno_datagen import open_dataset\n"
            f"d = open_dataset({str(views_dataset)!r})\n"
            "print(json.dumps(d.manifest['counts']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                         text=True, check=True).stdout
    manifest = json.loads((views_dataset / "manifest.json").read_text())
    assert json.loads(out) == manifest["counts"]


def test_python_m_runs_the_generator_from_a_users_project(small_data, tmp_path):
    project = _user_project(tmp_path)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "synanno_datagen", "run",
                           *small_data.argv(out, "--variants", "1"), "--quiet"],
                          cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["instances_written"] == 5


def test_the_python_we_ask_for_is_one_every_pinned_dependency_installs_on():
    """setup.py's python_requires is no lower than any installed dependency's: a 3.10 user
    otherwise passes our check and fails at tensorstore's."""
    import importlib.metadata as metadata
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    ours = SpecifierSet(text.split('python_requires="', 1)[1].split('"', 1)[0])
    lowest = min(v for v in ("3.8", "3.9", "3.10", "3.11", "3.12") if ours.contains(v))
    for line in metadata.requires("synanno-datagen"):
        requirement = Requirement(line)
        if requirement.marker is not None:   # extras
            continue
        theirs = metadata.metadata(requirement.name).get("Requires-Python")
        assert not theirs or SpecifierSet(theirs).contains(lowest), (requirement.name, theirs)


def test_the_sdist_workers_install_holds_the_package_and_no_half_test_suite(tmp_path):
    """Dataflow stages ``python setup.py sdist`` (``--setup_file``) for its workers: every module
    of the package is in it, and the tests are not (they need the repository: conftest, data,
    Dockerfile, scripts)."""
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=root,
                   check=True, capture_output=True)
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    modules = {p.relative_to(root).as_posix() for folder in ("synanno_datagen", "pipeline",
                                                             "transforms")
               for p in (root / folder).rglob("*.py")}
    assert modules and modules <= names
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".pyc")]
    assert {"setup.py", "README.md"} <= names


def test_a_new_subpackage_in_any_folder_is_installed_and_staged(tmp_path):
    """Found by review: setup.py listed the packages by hand, so a subpackage added under
    synanno_datagen/, pipeline/ or transforms/ was left out of the install (its import failed)
    and the staging check then refused every launch, as a reinstall could not fix it."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(root / name, clone / name)
    for folder in ("synanno_datagen", "pipeline", "transforms"):
        shutil.copytree(root / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    added = ["synanno_datagen/reading/extra", "pipeline/extra", "transforms/extra/deeper"]
    for folder in added:
        (clone / folder).mkdir(parents=True)
        for where in (clone / folder, *(clone / folder).parents):
            if where == clone:
                break
            (where / "__init__.py").touch()
        (clone / folder / "part.py").write_text("VALUE = 7\n")
    dotted = clone / "transforms" / "not.a_package"   # setuptools skips it: staging must too
    dotted.mkdir()
    (dotted / "__init__.py").touch()
    built = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-lib", str(built)],
                   cwd=clone, check=True, capture_output=True)
    for folder in added:
        installed = folder.replace("pipeline/", "synanno_datagen/pipeline/").replace(
            "transforms/", "synanno_datagen/transforms/")
        assert (built / installed / "part.py").is_file(), installed
    staged = subprocess.run([sys.executable, "-P", str(clone / "pipeline" / "staging.py"),
                             str(clone)], env={**os.environ, "PYTHONPATH": str(built)},
                            capture_output=True, text=True)
    assert staged.returncode == 0, staged.stderr
    (clone / "transforms/extra/deeper/part.py").write_text("VALUE = 8\n")
    staged = subprocess.run([sys.executable, "-P", str(clone / "pipeline" / "staging.py"),
                             str(clone)], env={**os.environ, "PYTHONPATH": str(built)},
                            capture_output=True, text=True)
    assert staged.returncode == 2 and "transforms/extra/deeper/part.py" in staged.stderr


def test_the_reading_side_imports_no_beam():
    """Reading a dataset (open_dataset, inspect, preview, plots, the loaders) is apart from the
    generator: importing it loads no Beam (seconds of start-up in a training job). (The torch
    datasets' module only where the torch extra is, or must be, installed.)"""
    from pathlib import Path

    reading = Path(__file__).resolve().parents[1] / "synanno_datagen" / "reading"
    modules = sorted(f"synanno_datagen.reading.{p.stem}" for p in reading.glob("*.py"))
    if os.environ.get("SYNANNO_REQUIRE_TORCH") != "1" and not importlib.util.find_spec("torch"):
        modules.remove("synanno_datagen.reading.torch_datasets")
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert len(modules) > 5 and out.strip() == "[]"


def _dev(*args, env=None):
    import os

    return subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "dev"), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _path_of(tmp_path, **scripts) -> Path:
    """A PATH folder holding only what ./dev runs (bash, dirname, ls, sed) and the named shell
    scripts (e.g. python3="exit 1"), so no Python of this machine is found."""
    import shutil

    folder = tmp_path / "path"
    folder.mkdir()
    for tool in ("bash", "dirname", "ls", "sed"):
        (folder / tool).symlink_to(shutil.which(tool))
    for name, body in scripts.items():
        (folder / name.replace("_", ".")).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name.replace("_", ".")).chmod(0o755)
    return folder


def test_dev_refuses_what_it_cannot_make_a_venv_of_in_one_line(tmp_path):
    """Found by review: SYNANNO_VENV naming a folder of files turned it into a venv (and
    started installing into it); a venv whose python is gone (an upgraded system python) or
    too old was used as it was, failing every time with a shell error; an unknown command
    exited 1 after the help."""
    import os

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("data")
    done = _dev("inspect", "x", env={"SYNANNO_VENV": str(folder)})
    assert done.returncode == 2 and "holds files and is no venv" in done.stderr
    assert sorted(os.listdir(folder)) == ["keep.txt"]

    broken = tmp_path / "venv"
    (broken / "bin").mkdir(parents=True)
    (broken / "pyvenv.cfg").write_text("home = /nonexistent\n")
    (broken / "bin" / "python").symlink_to("/nonexistent/python3.11")
    fake = _path_of(tmp_path, python3="exit 1")     # a python3 that makes no venv
    done = _dev("inspect", "x", env={"SYNANNO_VENV": str(broken), "PATH": str(fake)})
    assert done.returncode == 2, done.stderr
    assert "is no usable Python 3.11+ venv; making it again" in done.stderr
    assert "python3 made no Python 3.11+ venv with pip" in done.stderr

    assert _dev("--help").returncode == 0
    done = _dev("frob")
    assert done.returncode == 2 and done.stderr.startswith("dev: unknown command 'frob'")


def test_dev_needs_no_sha256sum(views_dataset, tmp_path):
    """Found by review: ./dev named its install stamp with sha256sum, which macOS does not have,
    so on a Mac every command ended there. (A sha256sum that fails as a missing one does stands
    for it; the venv is the one running this test, which ./dev installed, so nothing installs.)"""
    import hashlib

    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    digest = hashlib.sha256(setup_py.read_bytes()).hexdigest()[:16]
    if not (Path(sys.prefix) / f".installed-{digest}").exists():
        pytest.skip("NEEDS the venv ./dev installed (its stamp for this setup.py)")
    fake = _path_of(tmp_path, sha256sum="echo 'sha256sum: not found' >&2; exit 127")
    done = _dev("inspect", str(views_dataset), "--json",
                env={"SYNANNO_VENV": sys.prefix, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 0 and "install" not in done.stderr, done.stderr
    manifest = json.loads((views_dataset / "manifest.json").read_text())
    facts = json.loads(done.stdout)
    assert facts["problems"] == [] and facts["counts"]["instances_written"] > 0
    assert facts["counts"] == {k: manifest["counts"][k] for k in facts["counts"]}


def test_dev_makes_its_venv_with_a_newer_python_where_python3_is_too_old(tmp_path):
    """Found by review: where python3 is older than 3.11 (Ubuntu 22.04's 3.10, a cluster's),
    ./dev refused even with a python3.12 on PATH; it asks the newer one to make the venv now.
    (Stand-ins that log what they are asked: this one makes no venv, so nothing installs.)"""
    log = tmp_path / "asked.log"
    fake = _path_of(tmp_path, python3=f'echo "python3 $1" >> {log}; exit 1',   # "3.10"
                    python3_12=f'[ "$1" = -c ] && exit 0; echo "python3.12 $*" >> {log}; exit 1')
    venv = tmp_path / "venv"
    done = _dev("inspect", "x", env={"SYNANNO_VENV": str(venv), "PATH": str(fake)})
    assert done.returncode == 2, done.stderr
    assert log.read_text().splitlines() == ["python3 -c", f"python3.12 -m venv --clear {venv}"]
    assert done.stderr.splitlines()[-1] == (
        f"dev: python3, python3.12 made no Python 3.11+ venv with pip in {venv}; make one with "
        f"'python3.11 -m venv --clear {venv}' (on Debian, install python3.11-venv first)")


@pytest.mark.parametrize("script, flags", [
    ("seed_draws.py", ["--instances", "0"]), ("seed_draws.py", ["--variants", "4,x"]),
    ("finalize_shards.py", ["--shards", "-1"]), ("finalize_shards.py", ["--latency-ms", "-5"]),
    ("shard_readers.py", ["--readers", "0"]), ("volume_readers.py", ["--repeats", "0"]),
    ("volume_readers.py", ["--crops", "0"]), ("concurrent_reads.py", ["--latency-ms", "0,x"]),
    ("fetch_strategies.py", ["--variants", "0"]),
    ("fetch_strategies.py", ["--big-table-rows", "-1"]), ("npy_reads.py", ["--repeats", "0"]),
    ("sample_conversion.py", ["--samples", "0"]),
    ("sample_conversion.py", ["--shape", "16", "0", "8"]), ("plan_shards.py", ["--instances", "0"]),
    ("gcs_deletes.py", ["--objects", "0"]), ("gcs_deletes.py", ["--latency-ms", "-1"]),
    ("table_reads.py", ["--rows", "0"]), ("table_reads.py", ["--workers", "x"]),
    ("manifest_reads.py", ["--shards", "0"]), ("manifest_reads.py", ["--repeats", "x"]),
    ("index_tally.py", ["--lines", "0"]), ("index_tally.py", ["--repeats", "-2"]),
    ("preview_picks.py", ["--shards", "0"]), ("preview_picks.py", ["--n", "x"]),
])
def test_benchmark_flags_are_checked_before_any_work(script, flags):
    """Found by review: such values ended in tracebacks, measured nothing as a figure, were
    silently replaced by the default, or (--shards -1) reported that the two strategies
    disagreed."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / script), *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"argument {flags[0]}: " in done.stderr.splitlines()[-1]


def test_the_shard_plan_benchmark_compares_both_plans_of_one_table():
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "plan_shards.py"), "--instances", "3000"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3,000 instances in ") and "3 block splits" in lines[0]
    rows = {line.split("|")[0].strip(): line for line in lines[2:4]}
    assert set(rows) == {"earlier", "per tile"}
    assert all("MB held" in row for row in rows.values())
    assert lines[4].startswith("earlier / per tile: one worker gathers ")


def test_the_manifest_benchmark_compares_both_ways_on_one_manifest(tmp_path, torch):
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "manifest_reads.py"), "--work", str(tmp_path),
                           "--shards", "300", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("manifest: 0.2 MB listing 300 TFRecord and index shards; ")
    assert re.fullmatch(r"ratio \(before / now\): [\d.]+x time, \d+x memory", lines[3])
    assert re.fullmatch(r"ratio \(before / now\): [\d.]+x bytes, [\d.]+x held", lines[6])
    listed = json.loads((tmp_path / "listed-300" / "manifest.json").read_text())
    assert len(listed["files"]["tfrecord"]) == len(listed["files"]["index"]) == 300


def test_the_index_tally_benchmark_compares_both_ways_on_a_dataset(views_dataset, tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "index_tally.py"
    done = subprocess.run([sys.executable, str(script), str(views_dataset), "--lines", "500",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"per line: [\d.]+ us per line \(500 lines parsed and tallied in [\d.]+ "
                        r"s\)\nper foreground: [\d.]+ us per line \(500 lines .*\)\n"
                        r"per line / per foreground: [\d.]+x\n", done.stdout), done.stdout
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "not a dataset directory" in done.stderr.splitlines()[-1]


def test_the_preview_benchmark_picks_both_ways_from_one_dataset(tmp_path):
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "preview_picks.py"), "--work", str(tmp_path),
                           "--shards", "20", "--lines", "10", "--n", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("every line, sorted by id: ") and \
        lines[0].endswith(", 20 of 20 index shards read")
    assert re.fullmatch(r"counted places: [\d.]+ s, [\d.]+ MB allocated at peak, [1-3] of 20 "
                        r"index shards read", lines[1])
    assert lines[2].startswith("200 instances: before / now ")


def test_a_benchmark_scenario_its_help_says_0_skips_takes_0():
    """Found in this session: --big-table-rows 0 ('0 skips it') was refused as not positive.
    With a bad --layouts after it, the refusal is about --layouts: 0 was taken."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "fetch_strategies.py"), "--big-table-rows", "0",
                           "--layouts", "bogus"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--layouts bogus" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("script", ["shard_readers.py", "npy_reads.py"])
@pytest.mark.parametrize("flags, says", [
    (["/nonexistent-dataset"], "/nonexistent-dataset: not a dataset directory"),
    (["--split", "nope"], "split 'nope' is not in this dataset"),
])
def test_the_loader_benchmarks_refuse_a_dataset_they_cannot_read_in_one_line(
        views_dataset, script, flags, says, torch):
    """Found by review: a missing dataset or split was a DatasetError traceback."""
    argv = flags if flags[0].startswith("/") else [str(views_dataset), *flags]
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / script), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr.splitlines()[-1]


def test_a_benchmarks_work_folder_is_taken_from_where_it_is_called(tmp_path, monkeypatch):
    """Found by review: a relative --work was used by children running in the clone (data
    written inside it) and by the script where it was called (not found)."""
    from benchmarks.flags import work_dir

    monkeypatch.chdir(tmp_path)
    assert work_dir("rel/work") == tmp_path / "rel" / "work"
    assert work_dir(str(tmp_path / "abs")) == tmp_path / "abs"


@pytest.mark.parametrize("script, flags, line", [
    ("shard_readers.py", ["--readers", "1,2"], r"2 readers: read through / seek = [\d.]+x time"),
    ("npy_reads.py", ["--repeats", "1"], r"in order: read all / keep = [\d.]+x time, 1\.80x files"),
])
def test_the_loader_benchmarks_measure_a_dataset(views_dataset, script, flags, line, torch):
    """Found by review: shard_readers.py ended in an AttributeError (it patched a function the
    dataset module no longer had) and no test ran it. Read in order, an instance's 3 variants
    open 3 files each without keeping its arrays, and 1 + 2/3 with them: 1.8x the files."""
    import re

    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / script), str(views_dataset), *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(line, done.stdout), done.stdout


def test_the_conversion_benchmark_compares_both_ways_on_the_same_bits():
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "sample_conversion.py"), "--samples", "30",
                           "--shape", "4", "16", "16"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"30 samples of \(4, 16, 16\): np\.stack of copies [\d.]+ ms/sample, "
                        r"into the outputs [\d.]+ ms/sample: [\d.]+x\n", done.stdout), done.stdout


@pytest.mark.parametrize("script", ["shard_readers.py", "npy_reads.py"])
def test_the_loader_benchmarks_refuse_in_one_line_without_torch(views_dataset, script):
    """Found on Python 3.13 without the torch extra: both ended in an ImportError traceback.
    (torch made unimportable in the child, as where it is not installed.)"""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None   # import torch: ModuleNotFoundError, name 'torch'\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(views_dataset)],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"{script}: error: this loader needs PyTorch, which is an optional extra: "
        "pip install 'synanno-datagen[torch]' (in a clone of synanno-datagen: "
        "pip install -e '.[torch]')")
