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
