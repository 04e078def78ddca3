"""Errors the user can cause. The CLI turns each into one line on stderr and a non-zero exit;
anything else escaping is a bug in svmemu."""

# Process exit status for each way a run ends. Guest-chosen statuses (isa-debug-exit) are always
# odd, so ours are even and cannot be confused with them.
STATUS_HALTED = 0
STATUS_BAD_INPUT = 2
STATUS_SHUTDOWN = 4
STATUS_UNSUPPORTED = 6
STATUS_LIMIT = 8


class SvmemuError(Exception):
    """Base of every error caused by user input; str(e) is the message shown to the user."""


class ImageError(SvmemuError):
    """A kernel image that cannot be booted: missing, truncated, no multiboot header, outside RAM."""


class AsmError(SvmemuError):
    """Assembly that does not assemble; names the file and line."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


class OptionError(SvmemuError):
    """A command-line or API option with a bad value."""


class OutputError(SvmemuError):
    """An output svmemu cannot write (a full disk, /dev/full, a closed standard output): the run
    stops, since what it would report is lost."""


class SnapshotError(SvmemuError):
    """A snapshot that is corrupt, truncated or not ours."""


class Unsupported(SvmemuError):
    """The guest did something svmemu does not model; we stop rather than guess."""

    def __init__(self, what: str) -> None:
        super().__init__(f"unsupported: {what}")
        self.what = what
