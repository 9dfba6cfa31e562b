"""Assembling and running the synanno-datagen pipeline: config, build, CLI, manifest."""

__version__ = "0.1.0"
GENERATOR_NAME = "synanno-datagen"
