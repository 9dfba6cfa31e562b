"""Is the package this interpreter runs the code a clone stages for Dataflow's workers?

``launch_dataflow.sh run`` submits with the installed package (it builds the pipeline and writes
the manifest) and stages the clone's ``setup.py`` sdist for the workers: after a ``git pull``
without reinstalling, the two differ. ``python -P CLONE/pipeline/staging.py CLONE`` (the clone's
copy: an older install lacks this module) exits 0 when every module file is the same, else 2
with one line naming the first difference.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Dict, Optional

# The installed package's parts and the clone folders setup.py maps them from.
PARTS = {"synanno_datagen": "synanno_datagen", "synanno_datagen.pipeline": "pipeline",
         "synanno_datagen.transforms": "transforms"}


def module_files(folder: Path) -> Dict[str, str]:
    """{path relative to ``folder``: sha256} of its .py files and its subpackages' (folders
    holding an __init__.py and no '.' in their names; not those PARTS maps from elsewhere), as
    setuptools ships them: no file names starting with '.' (an editor's lock file)."""
    found = {}
    for where, dirs, files in os.walk(folder, followlinks=True):
        base = Path(where)
        dirs[:] = sorted(d for d in dirs if "." not in d   # as setuptools finds packages
                         and (base / d / "__init__.py").is_file()
                         and not (base == folder and folder.name == "synanno_datagen"
                                  and d in ("pipeline", "transforms")))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("."):
                path = base / name
                found[path.relative_to(folder).as_posix()] = \
                    hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def installed_files() -> Dict[str, str]:
    """The running package's module files, keyed as in the clone (``pipeline/run.py``)."""
    out = {}
    for name, folder in PARTS.items():
        where = Path(list(importlib.import_module(name).__path__)[0])
        for rel, digest in module_files(where).items():
            out[f"{folder}/{rel}"] = digest
    return out


def clone_files(clone: Path) -> Dict[str, str]:
    """The clone's module files, from the folders setup.py maps into the package."""
    return {f"{folder}/{rel}": digest for name, folder in PARTS.items()
            for rel, digest in module_files(clone / folder).items()}


def difference(clone: Path) -> Optional[str]:
    """None when the running package is the clone's code, else what differs."""
    ours, theirs = installed_files(), clone_files(clone)
    changed = sorted(f for f in set(ours) | set(theirs) if ours.get(f) != theirs.get(f))
    if not changed:
        return None
    return f"{len(changed)} module files differ, e.g. {changed[0]}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    clone = Path(argv[0]).resolve()
    found = difference(clone)
    if found is None:
        return 0
    print(f"launch_dataflow.sh: error: the synanno_datagen that {sys.executable} runs is not "
          f"the code of {clone}, which the workers get ({found}): reinstall it (pip install "
          f"{clone}), or use the .venv ./dev makes there", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
