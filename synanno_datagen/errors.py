"""The user-facing error types: one line for the user, exit code 2 from the CLI."""


class UsageError(ValueError):
    """A mistake in what the user asked for (an option, a path, a dataset): one line, exit 2."""


class ConfigError(UsageError):
    """A bad option or input of a run, found before any work starts."""


class DatasetError(UsageError):
    """A dataset that cannot be read as asked (no manifest, no such split, no such files)."""


class LeaseHeld(Exception):
    """Another run is writing the same output directory (its lease is live): one line, exit 3."""


class LeaseLost(RuntimeError):
    """The output directory's lease is no longer this run's (broken, or expired and taken):
    the run stops writing; one line, exit 1."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, at most ``limit`` characters (for one-line
    reports)."""
    return (str(error).strip().splitlines() or [""])[0][:limit]
