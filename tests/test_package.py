"""One import package: a training project with its own ``pipeline.py`` and ``transforms.py``
(common names) uses our CLI and reading API without either shadowing ours."""
from __future__ import annotations

import json
import subprocess
import sys

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


def test_the_reading_side_imports_no_beam():
    """Reading a dataset (open_dataset, inspect, preview, plots, the loaders) is apart from the
    generator: importing it loads no Beam (seconds of start-up in a training job)."""
    from pathlib import Path

    reading = Path(__file__).resolve().parents[1] / "synanno_datagen" / "reading"
    modules = sorted(f"synanno_datagen.reading.{p.stem}" for p in reading.glob("*.py"))
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert len(modules) > 5 and out.strip() == "[]"
