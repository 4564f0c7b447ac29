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

    ``readable``: the file was read as the kind of data it should be (a price file too short for the
    window), so ``predict`` does not add that the checkpoint may be of another task.
    """

    readable: bool = False

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
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

    def at(self, path: str | Path | None, row: int | None) -> DataError:
        """The same error, placed elsewhere (e.g. an input's line in the file it came from)."""
        return DataError(self.message, path=path, row=row, field=self.field)


class ConfigError(LstmkitError, ValueError):
    """A configuration value that cannot work (wrong combination, missing device...)."""


def check_probability(value: float, option: str) -> float:
    """``value`` if it is a probability in ``[0, 1)`` (a dropout rate, label smoothing), else a ConfigError.

    Why: the layers take ``[nn.Dropout(p)] if p > 0``, so a negative rate trained silently without
    dropout, and label smoothing was only checked by torch at the first step, as a traceback.
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
    """SIGTERM outside Lightning's loops (while the data is read, between fit and test): the run stops
    as Lightning's own ``SIGTERMException`` stops it inside them, and is recorded as interrupted."""
