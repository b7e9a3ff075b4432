"""The error a run raises for bad input or settings it finds itself (the library's own errors pass through)."""

from __future__ import annotations


class RunInputError(ValueError):
    """The run's inputs do not fit together (``usage=True``: the arguments themselves, e.g. a missing checkpoint) or
    the data they name is unusable; the message says what to pass instead."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage
