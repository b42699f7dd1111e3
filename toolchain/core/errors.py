"""One exception tree. Each error carries the exit code the CLI returns for it."""

from __future__ import annotations

from pathlib import Path


class EdgesmithError(Exception):
    """Base of every error edgesmith raises on purpose; the message is one line."""

    exit_code: int = 2


class InvalidInput(EdgesmithError):
    """Bad input or usage: a missing file, a wrong format, data that does not fit the model."""

    exit_code = 2


class CheckFailed(EdgesmithError):
    """A model's outputs or accuracy were measured and found outside the budget.

    `report` is where the full figures were written, when they were.
    """

    exit_code = 1

    def __init__(self, message: str, report: Path | None = None) -> None:
        super().__init__(message)
        self.report = report


class GateFailed(CheckFailed):
    """The accuracy gate failed: the candidate dropped more than the budget allows."""


class TargetUnavailable(EdgesmithError):
    """A target that cannot build or run on this machine (the message says why)."""

    exit_code = 3


def caused_by(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in e's chain (its causes and the exceptions it was raised
    while handling): torch's exporter wraps what it catches, and Ctrl-C landing inside an
    import surfaces as whatever the half-run code raised next."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kinds):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None
