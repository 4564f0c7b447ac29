"""User-facing errors.

Every problem with user input is raised as :class:`LstmkitError` (or a subclass) where it is
first seen, with the file and the row/field in the message. The CLI prints these without a
traceback (``--verbose`` or ``HYDRA_FULL_ERROR=1`` shows it) and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class LstmkitError(Exception):
    """An error the user can fix; the message says what and where."""


class DataError(LstmkitError):
    """Bad input data: names the file, the row or field, what was found and what was expected.

    ``readable``: the file was read as the kind of data it should be, and one of its rows or its
    content is what is wrong (a cell that is no number, a truncated clip, a price file too short
    for the window), as opposed to a file that is not of the format the task reads at all (a
    sentence where a price file was expected, a file with none of the columns). ``predict`` adds
    that the checkpoint may be of another task to the second kind only: said of a right file's
    bad row, it sends the user looking for another checkpoint. One rule marks them all, so that
    no reader has to remember a flag: an error that names a row is readable (the file was read
    row by row); one without a row is readable when raised with ``readable=True``; a row error
    that says the file is of another format (not UTF-8, a header without the needed columns)
    passes ``readable=False``.
    """

    readable: bool

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
        readable: bool | None = None,
    ) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.message, self.path, self.row, self.field = message, path, row, field
        self.readable = row is not None if readable is None else readable

    def at(self, path: str | Path | None, row: int | None) -> DataError:
        """The same error, placed elsewhere (e.g. an input's line in the file it came from).

        ``readable`` follows the new place: an input given on the command line (``row=None``) was
        not read from a file of the task's kind, a line of an ``input_file`` was.
        """
        return DataError(self.message, path=path, row=row, field=self.field)


class ConfigError(LstmkitError, ValueError):
    """A configuration value that cannot work (wrong combination, missing device...)."""


def check_probability(value: float, option: str) -> float:
    """``value`` if it is a probability in ``[0, 1)`` (a dropout rate, label smoothing), else a ConfigError.

    Why: a dropout layer is built only when ``p > 0`` (``lstmkit.core.dropout_layers``, which checks the
    rate here), so a negative rate trained silently without dropout; and label smoothing was only
    checked by torch at the first step, as a traceback.
    """
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{option}={value}: expected a probability in [0, 1)")
    return float(value)


class CheckpointError(LstmkitError):
    """A file that is not a usable lstmkit checkpoint for the requested command."""


class SweepError(ConfigError):
    """A setting that is wrong for every trial of a sweep (e.g. its direction): the sweep stops at once."""


class TrialFailed(LstmkitError):
    """One sweep trial failed (already recorded and logged); raised so that Optuna marks it failed."""


class Interrupted(SystemExit):
    """SIGTERM or SIGINT outside Lightning's loops (while the data is read, between fit and test), or a
    second Ctrl-C: the run stops as Lightning's own ``SIGTERMException`` stops it inside them, and is
    recorded as interrupted. The code is 128 + the signal's number (143, 130)."""
