"""User-facing errors.

Every problem caused by a user's input (a file, a flag, a key) is raised as an :class:`ElmoError`
whose message names the file (and line, key or dataset) and says what to do. The CLI prints the
message on one line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class ElmoError(Exception):
    """A problem with user input, reported in one line without a traceback."""


class OptionsError(ElmoError):
    """``options.json`` is missing a key, has a wrong type or disagrees with the weights."""


class VocabularyError(ElmoError):
    """A vocabulary file is unusable (missing specials, duplicates, blank lines)."""


class WeightsError(ElmoError):
    """A weights HDF5 file is unreadable or does not fit the options."""


class InputTextError(ElmoError):
    """Input text cannot be read (missing file, bad encoding, empty line where a sentence is needed)."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of a library's error message (at most ``limit`` characters), or the error's
    type when it has no message: the reason quoted in a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
