"""argparse types of the benchmark scripts' flags: a bad value is one usage line (exit 2)
before any work, not a traceback or a figure measured of nothing."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List


def _checked(kind: Callable, holds: Callable, what: str) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not holds(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what   # (argparse names the type in its message)
    return parse


positive_int = _checked(int, lambda n: n > 0, "a positive integer")
non_negative_int = _checked(int, lambda n: n >= 0, "an integer of 0 or more")
non_negative_float = _checked(float, lambda x: 0 <= x < float("inf"), "a number of 0 or more")


def _int_list(text: str) -> List[int]:
    return [int(t) for t in text.split(",")]


positive_int_list = _checked(_int_list, lambda ns: ns and all(n > 0 for n in ns),
                             "a comma-separated list of positive integers")
non_negative_float_list = _checked(
    lambda t: [float(x) for x in t.split(",")],
    lambda xs: xs and all(0 <= x < float("inf") for x in xs),
    "a comma-separated list of numbers of 0 or more")


def work_dir(text: str) -> Path:
    """A work folder, absolute from where the script is called (its child runs start in the
    clone)."""
    return Path(text).expanduser().resolve()
