"""The Dockerfile, read as text: one image for the Flex Template launcher and the Dataflow workers,
as Google documents it (no Docker engine here, so the image itself is never built in tests).

Google's pattern ("Build custom container images for Dataflow"; the flex-templates
pipeline_with_dependencies sample): the Beam SDK image's /opt/apache/beam/boot must run last when
a worker container starts, so it is the final ENTRYPOINT; the template launcher binary is copied
in from the launcher base image; FLEX_TEMPLATE_PYTHON_PY_FILE names a file the image has; the
package is installed in the image, so FLEX_TEMPLATE_PYTHON_SETUP_FILE is not set.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = "/opt/google/dataflow/python_template_launcher"


def instructions(text: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def substitute(text: str, args: Dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def dockerfile():
    """The parsed Dockerfile: (ARG defaults before FROM, stages as lists of instructions)."""
    args, stages = {}, []
    for word, rest in instructions((ROOT / "Dockerfile").read_text()):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            stages.append([(word, substitute(rest, args))])
        else:
            stages[-1].append((word, rest))
    return args, stages


def setup_beam_version() -> str:
    return re.search(r'BEAM_VERSION = "([^"]+)"', (ROOT / "setup.py").read_text()).group(1)


def final_stage():
    _, stages = dockerfile()
    return stages[-1]


def test_the_image_is_beams_sdk_image_at_setup_pys_beam_version():
    args, stages = dockerfile()
    assert args["BEAM_VERSION"] == setup_beam_version()
    image = final_stage()[0][1]
    assert image == f"apache/beam_python3.11_sdk:{setup_beam_version()}"
    launcher_image, _, alias = stages[0][0][1].partition(" AS ")
    assert launcher_image.startswith(
        "gcr.io/dataflow-templates-base/python311-template-launcher-base:")
    # The launcher was built for the same Python as the SDK image.
    assert "python311" in launcher_image and "python3.11" in image
    copies = [rest.split() for word, rest in final_stage() if word == "COPY"]
    assert [f"--from={alias.strip()}", LAUNCHER, LAUNCHER] in copies


def test_workers_start_with_beams_boot_and_the_launcher_finds_its_python_file():
    stage = final_stage()
    entrypoints = [rest for word, rest in stage if word == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["/opt/apache/beam/boot"]
    assert not [rest for word, rest in stage if word == "CMD"]
    # The package is installed in the image: no setup file for the launcher to install again.
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE" not in env_of(stage)
    assert not any("FLEX_TEMPLATE_PYTHON_SETUP_FILE" in rest for _, rest in stage)
    assert flex_py_file_in_repo(stage) == ROOT / "pipeline" / "flex.py"


def env_of(stage) -> Dict[str, str]:
    """Every ENV NAME=VALUE of a stage (the key=value form)."""
    return dict(item.split("=", 1) for word, rest in stage if word == "ENV"
                for item in shlex.split(rest))


def workdir(stage) -> str:
    """The working directory the stage ends in (where a container of the image starts)."""
    return [rest for word, rest in stage if word == "WORKDIR"][-1]


def copied(stage) -> Dict[str, Path]:
    """{path in the image: repository path} of what the build context COPYs bring in."""
    out, current = {}, "/"
    for word, rest in stage:
        if word == "WORKDIR":
            current = rest
        parts = rest.split()
        if word != "COPY" or parts[0].startswith("--"):
            continue
        *sources, dest = parts
        base = dest if dest.startswith("/") else f"{current}/{dest}"
        for source in sources:
            target = base.rstrip("/") + ("/" + source if dest.endswith("/") else "")
            out[target.replace("/./", "/")] = ROOT / source
    return out


def flex_py_file_in_repo(stage) -> Path:
    """The repository file the image holds at FLEX_TEMPLATE_PYTHON_PY_FILE."""
    target = env_of(stage)["FLEX_TEMPLATE_PYTHON_PY_FILE"]
    for in_image, in_repo in copied(stage).items():
        if target == in_image or target.startswith(in_image + "/"):
            path = in_repo / target[len(in_image):].lstrip("/")
            assert path.is_file(), f"{target} is {path}, which does not exist"
            return path
    raise AssertionError(f"FLEX_TEMPLATE_PYTHON_PY_FILE {target} is copied by no COPY")


def test_the_package_is_installed_from_every_folder_setup_py_packages():
    stage = final_stage()
    brought = {p.relative_to(ROOT).as_posix() for p in copied(stage).values()}
    setup = (ROOT / "setup.py").read_text()
    folders = {"synanno_datagen"} | set(re.findall(r'"synanno_datagen\.\w+": "(\w+)"', setup))
    assert folders == {"synanno_datagen", "pipeline", "transforms"}
    from synanno_datagen.pipeline import staging   # launch_dataflow.sh compares the same parts
    assert set(staging.PARTS.values()) == folders
    assert folders | {"setup.py", "README.md"} <= brought
    runs = [rest for word, rest in stage if word == "RUN"]
    assert any(re.search(r"\bpip install\b.*(^|\s)\.(\s|$)", r) for r in runs), runs
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not folders & set(ignored)


def test_a_container_starts_where_no_copy_of_the_package_shadows_the_installed_one():
    """Found by review: the image ran in the folder its sources were copied to, and Beam's boot
    starts workers with `python -m ...sdk_worker_main`, which puts the working directory first
    on sys.path: workers imported the bare synanno_datagen/ folder (no transforms, no
    pipeline: those are mapped in at install) instead of the installed package."""
    stage = final_stage()
    start = workdir(stage).rstrip("/")
    assert not [p for p in copied(stage) if p.rsplit("/", 1)[0] in (start, start or "/")
                and p.rsplit("/", 1)[1] in ("synanno_datagen", "pipeline", "transforms")]
