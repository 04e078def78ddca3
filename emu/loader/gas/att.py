"""AT&T syntax (GNU as's default) translated into the Intel syntax the rest of the front end
gives GNU as's meaning to."""
from __future__ import annotations


class AttError(ValueError):
    """An AT&T statement that has no faithful Intel form here."""


def att_to_intel(stmt: str, mode: int) -> str:
    raise AttError("AT&T syntax is not supported yet")
