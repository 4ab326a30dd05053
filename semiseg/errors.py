"""The one exception type users see.

Anything a user can cause (a path, a config value, a raster, a checkpoint) raises `SemisegError` with a message
that says what was wrong and how to fix it. The command-line entry points catch it and print one line, so users
never get a traceback from deep inside torch for their own mistakes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class SemisegError(Exception):
    """A user-facing error: the message alone must be enough to fix the problem."""


def did_you_mean(name: object, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest option, or nothing when none is close."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def error_reason(exc: BaseException) -> str:
    """The most specific first line of an exception chain.

    rasterio raises "Read failed. See previous exception for details." with GDAL's actual reason (which file,
    band and block) as its cause: that reason is what a user needs to see.
    """
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(err: BaseException) -> str:
    """The message of a user error on one line.

    An error raised in a DataLoader worker comes back with the worker's traceback inside its message ("Caught
    SemisegError in DataLoader worker process 0. Original Traceback ..."): its last line holds the real message.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = re.sub(r"^[\w.]*SemisegError: ", "", last)
    return " ".join(text.split("\n")[0].split()) if "\n" in text else text
