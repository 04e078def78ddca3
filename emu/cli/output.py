"""Outputs that fail loudly: a write error on a trace file, a coverage file or the guest's
serial output on stdout becomes one ``OutputError`` naming the output, instead of a traceback
from inside an emulation hook."""
from __future__ import annotations

import sys
from typing import IO, AnyStr, Generic

from emu.errors import OutputError


class NamedOutput(Generic[AnyStr]):
    """A text or binary stream whose write errors name it. Broken pipes pass through unchanged:
    a reader that went away (``| head``) is an ordinary ending, handled by the command."""

    def __init__(self, stream: IO[AnyStr], name: str) -> None:
        self.stream = stream
        self.name = name

    def write(self, data: AnyStr) -> int:
        try:
            return self.stream.write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write {self.name}: {e.strerror or e}") from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(f"cannot write {self.name}: {e.strerror or e}") from None

    def close(self) -> None:
        self.flush()
        if self.stream not in (sys.stdout, sys.stderr, getattr(sys.stdout, "buffer", None)):
            self.stream.close()


def guest_stdout() -> NamedOutput[bytes]:
    """Where the guest's COM1 output goes: standard output, which must be open."""
    if sys.stdout is None:
        raise OutputError("standard output is closed: the guest's serial output has nowhere to go")
    return NamedOutput(sys.stdout.buffer, "standard output")
