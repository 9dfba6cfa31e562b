"""Errors as a run ends with them, from behind Beam's wrapping: the one-line errors a step may
raise (a lost lease, a bad table, storage that did not answer), which Beam annotates with the
step ("[while running 'X']") or, with worker threads or processes, passes back as a
RuntimeError holding the traceback's text; and a logging filter for Beam's own logs of them."""
from __future__ import annotations

import logging
import re
from typing import Optional, Tuple

from synanno_datagen.errors import LeaseLost, StorageUnavailable, first_line
from synanno_datagen.transforms.table_formats import TableFormatError

ONE_LINE_ERRORS = (LeaseLost, StorageUnavailable, TableFormatError)
_STEP_NOTE = re.compile(r" \[while running '[^\]]*'\]")
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION = re.compile(r"(?:[\w.]+\.)?([A-Za-z_]\w*)(?:: (.*))?$")


def _last_exception(text: str) -> Optional[Tuple[str, str]]:
    """(type name, first line of its message) of the exception a traceback's text ends with:
    the first unindented line after the frames of its last ``Traceback`` (the outermost of a
    chain); for text without one (Beam's RuntimeError of an error), its first line."""
    start = text.rfind(_TRACEBACK)
    rest = text[start + len(_TRACEBACK):] if start >= 0 else text
    line = next((x for x in rest.splitlines() if x.strip() and not x[0].isspace()), "")
    match = _EXCEPTION.match(line)
    return (match[1], match[2] or "") if match else None


def _in_text(text: str) -> Optional[BaseException]:
    """The one-line error a traceback's text (or a RuntimeError Beam made of one) ends with."""
    last = _last_exception(text)
    kind = next((c for c in ONE_LINE_ERRORS if last and c.__name__ == last[0]), None)
    return kind(_STEP_NOTE.sub("", last[1])) if kind else None


def error_summary(error: BaseException) -> str:
    """``Type: first line`` of an error for the closing line, without Beam's step note; of a
    RuntimeError Beam made of a worker's traceback text, the exception it ends with."""
    text = str(error)
    last = _last_exception(text) if type(error) is RuntimeError and \
        text.startswith(_TRACEBACK) else None
    summary = f"{last[0]}: {last[1]}" if last else f"{type(error).__name__}: {first_line(error)}"
    return _STEP_NOTE.sub("", summary)


def unwrapped(error: BaseException) -> BaseException:
    """The one-line error ``error`` is, or Beam made a RuntimeError of (``raise ... from``, or
    its text), without Beam's step note; else ``error`` itself (also for an error raised while
    handling one: that is a bug of its own)."""
    found = next((e for e in (error, error.__cause__) if isinstance(e, ONE_LINE_ERRORS)), None)
    if found is not None:
        clean = _STEP_NOTE.sub("", str(found))
        return found if clean == str(found) else type(found)(clean)
    if type(error) is RuntimeError:
        return _in_text(str(error)) or error
    return error


def not_a_one_line_error(record: logging.LogRecord) -> bool:
    """A logging filter: no error records of Beam's for an error the run ends with in one line
    (a lost lease, a bad table, storage that did not answer), which Beam logs with its traceback
    in each step and thread that passes it on."""
    if record.levelno < logging.ERROR or not record.name.startswith("apache_beam"):
        return True
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
        return not (isinstance(error, ONE_LINE_ERRORS) or unwrapped(error) is not error)
    return _in_text(record.getMessage()) is None
