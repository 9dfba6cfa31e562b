"""The one error type of option checking (its own module so every checker can raise it)."""


class ConfigError(ValueError):
    """A usage or configuration error: one line for the user, exit code 2."""
