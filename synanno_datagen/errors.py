"""The user-facing error types: one line for the user, exit code 2 from the CLI."""


class UsageError(ValueError):
    """A mistake in what the user asked for (an option, a path, a dataset): one line, exit 2."""


class ConfigError(UsageError):
    """A bad option or input of a run, found before any work starts."""


class DatasetError(UsageError):
    """A dataset that cannot be read as asked (no manifest, no such split, no such files)."""


class LeaseHeld(Exception):
    """Another run is writing the same output directory (its lease is live): one line, exit 3."""
