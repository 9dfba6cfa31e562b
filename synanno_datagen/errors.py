"""The user-facing error types, each one line from the CLI (exit code as each says)."""
import re

# A URL's user information (scheme://user:password@ or scheme://token@): a user name up to a
# ':' or '@', a password up to the last '@' before the host (it may hold a raw '@'); neither
# runs past a path, query or fragment, a quote or a comma.
# user, then a password up to the last @ of the word (a raw /, ? or # in it is not seen as
# the host's end: tokens and base64 passwords hold them; more is hidden rather than less; not
# "//", the scheme of a URL inside another: precomputed://https://...)
_USERINFO = re.compile(r"""(?<=://)([^/?#\s'",:@]*)(:)?(?(2)(?!//)[^\s'"]*)@""")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***`` (``http://user:***@host``),
    or the whole user information when it has no password (a token: ``http://***@host``): what
    goes into messages, logs, the manifest and dead letters (a volume behind HTTP basic auth is
    read with its URL's password, which is written nowhere)."""
    return _USERINFO.sub(lambda m: f"{m[1]}:***@" if m[2] else "***@", text)


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


class StorageUnavailable(RuntimeError):
    """Storage did not answer before any work (a server error, throttling, a dropped
    connection): not the user's mistake, and it may pass; one line, exit 1."""


class Terminated(BaseException):
    """SIGTERM (timeout, systemd, docker stop, Kubernetes) or SIGINT (Ctrl-C) arrived, its name
    the argument: raised in the main thread so that the run unwinds (its lease freed, its
    closing line printed), never caught as an error of one instance; one line, exit 128 + the
    signal's number (143, 130)."""

    @property
    def signal_name(self) -> str:
        return self.args[0]

    @property
    def exit_code(self) -> int:
        import signal

        return 128 + int(getattr(signal, self.signal_name))

    def summary(self) -> str:
        """The closing line's ``error``: ``Terminated: SIGTERM``, ``Interrupted: SIGINT``."""
        return f"{'Interrupted' if self.signal_name == 'SIGINT' else 'Terminated'}: " \
               f"{self.signal_name}"


def storage_unavailable(what: str, error: BaseException) -> StorageUnavailable:
    """The one line for storage that did not answer while doing ``what``."""
    return StorageUnavailable(f"{what}: storage did not answer ({type(error).__name__}: "
                              f"{first_line(error, 200)}); try again")


def transient(error: BaseException) -> bool:
    """Whether ``error`` is storage trouble that may pass (HTTP 5xx or 429 after the client's
    own retries, a connection that failed or timed out), not a refusal (no access, no such
    bucket, a bad path)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests
        from google.api_core import exceptions as api
        from google.auth.exceptions import TransportError
    except ImportError:  # without Beam's GCP extra, only the built-in kinds
        return False
    return isinstance(error, (api.ServerError, api.TooManyRequests, api.RetryError,
                              TransportError, requests.ConnectionError, requests.Timeout))


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, at most ``limit`` characters (for one-line
    reports)."""
    return (str(error).strip().splitlines() or [""])[0][:limit]
