"""The user-facing error types, each one line from the CLI (exit code as each says)."""
import re

# What to do about a file of a dataset that is cut short, changed or unreadable.
DAMAGED = "copy the file again, or generate the dataset again"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")   # where a URL (or one inside it) starts
_REST_END = re.compile(r'[\s"]')                      # a URL's rest ends at a space or a "
_USER = re.compile(r"""[^/?#\s'",:\[\]]*""")        # a user name (an e-mail address too)


def _redacted_rest(rest: str) -> str:
    """What follows a URL's ``://``, its password (or token) as ``***``. The user information
    ends at the last ``@`` before the path; when none is there but the host part is no
    ``host:port``, at the last ``@`` of the word (a raw ``/``, ``?`` or ``#`` in a password:
    tokens and base64 hold them; more is hidden rather than less)."""
    head = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in head:
        end = head.rindex("@")
    else:
        _, colon, port = head.partition(":")
        if not colon or port.isdigit() or "@" not in rest:
            return rest
        end = rest.rindex("@")
    user, colon, _ = rest[:end].partition(":")
    if not _USER.fullmatch(user):   # not a user name: an @ in a path or text after the URL
        return rest
    return (f"{user}:***" if colon else "***") + rest[end:]


# Schemes whose URLs name a file or object with '?' and '#' taken as written (a bucket's object
# may be named "a?b"); in the others they start a query and a fragment.
LITERAL_SCHEMES = ("file", "gs")
_SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*$")
_CLOSING = re.compile(r"""['"),;:\]>]*$""")   # text around a URL, kept after a hidden value


def _hidden_query(rest: str) -> str:
    """What follows a URL's ``://`` with the value of each parameter of its query shown as
    ``***`` (``?access_token=***&x=***``; a parameter without ``=`` wholly) and its fragment as
    ``#***``: tokens and signatures travel there."""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return rest
    closing = _CLOSING.search(rest, cut + 1).group()
    tail = rest[cut:len(rest) - len(closing)]
    query, hash_, fragment = tail.partition("#")
    shown = ""
    if query:
        params = [p.partition("=") for p in query[1:].split("&")]
        shown = "?" + "&".join(f"{k}={'***' if v else ''}" if eq else ("***" if k else "")
                               for k, eq, v in params)
    return rest[:cut] + shown + ("#***" if hash_ else "") + closing


def redact(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***`` (``http://user:***@host``),
    or the whole user information when it has no password (a token: ``http://***@host``), and
    the values of its query and its fragment too (``https://host/v?access_token=***``; not in
    ``file://`` and ``gs://`` URLs, whose names hold '?' and '#' as written): what goes into
    messages, logs, the manifest and dead letters (a volume behind HTTP basic auth is read with
    its URL's password, which is written nowhere)."""
    out, done = [], 0
    for scheme in re.finditer("://", text):
        start = scheme.end()
        if start < done:
            continue
        space = _REST_END.search(text, start)
        end = space.start() if space else len(text)
        inner = _SCHEME.search(text, start, end)   # another URL in it (precomputed://https://,
        end = inner.start() if inner else end      # a list, a query): redacted on its own
        rest = _redacted_rest(text[start:end])
        name = _SCHEME_NAME.search(text, done, scheme.start())
        if not name or name.group().lower() not in LITERAL_SCHEMES:
            rest = _hidden_query(rest)
        out += [text[done:start], rest]
        done = end
    return "".join(out + [text[done:]])


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
    signal's number (143, 130). ``complete``: the output directory, when the dataset was
    complete before the signal came; ``views``: the demo's views were being drawn."""

    complete = None
    views = False

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


# A terminal's control sequences (CSI: ESC [ ... final byte): cloud-volume colours its errors
_TERMINAL_CODES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    """``text`` without terminal control sequences (colours), as logs and JSON should hold it."""
    return _TERMINAL_CODES.sub("", text)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, without terminal colours, at most ``limit``
    characters (for one-line reports)."""
    return (plain(str(error)).strip().splitlines() or [""])[0][:limit]
