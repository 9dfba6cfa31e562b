"""synanno-datagen: synapse seed-slice training data.

One package, two sides around one layout contract (``synanno_datagen.layout``):

- the generator, an Apache Beam pipeline: ``synanno_datagen.pipeline`` (options, config, build,
  manifest; the repository's ``pipeline/`` folder) and ``synanno_datagen.transforms`` (one Beam
  stage per module and the array math; ``transforms/``);
- the reading side for training code, ``synanno_datagen.reading``, whose public part is here:
  ``open_dataset``, ``ShardDataset``, ``NpyDataset`` (PyTorch) and ``tf_dataset`` (TensorFlow).

``python -m synanno_datagen`` is the command line.
"""

__version__ = "0.1.0"
GENERATOR_NAME = "synanno-datagen"

__all__ = ["open_dataset", "Dataset", "DatasetError", "ShardDataset", "NpyDataset", "tf_dataset"]


def __getattr__(name: str):
    """The reading API, imported on first use (PyTorch only for the torch datasets)."""
    if name in ("open_dataset", "Dataset", "DatasetError"):
        from synanno_datagen.reading import dataset

        return getattr(dataset, name)
    if name in ("ShardDataset", "NpyDataset", "tf_dataset"):
        from synanno_datagen.reading import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
