"""The kernel image formats ``svmemu run`` boots, each one loader behind the same small
interface: does it recognise these bytes, and how does it put them into a machine.  The first
format that recognises a file takes it, in QEMU's order: a Linux setup header ("HdrS" at 0x202)
first, then multiboot, whose loader explains what is wrong with a file nothing recognises.
"""
from __future__ import annotations

from typing import Callable, Protocol

from emu.errors import ImageError
from emu.loader.linux_header import recognises as _is_linux


class KernelTarget(Protocol):
    """What a format needs of the machine it loads into."""

    ram_size: int

    def load_multiboot(self, image, cmdline: str, modules=None) -> None: ...

    def load_linux(self, boot) -> None: ...


class KernelRequest:
    """A user's -kernel/-append/-initrd, as QEMU takes them."""

    __slots__ = ("data", "name", "append", "initrd")

    def __init__(self, data: bytes, name: str, append: str = "",
                 initrd: str | None = None) -> None:
        self.data = data
        self.name = name        # the image's path as given (multiboot puts it in the cmdline)
        self.append = append
        self.initrd = initrd


class KernelFormat:
    __slots__ = ("name", "recognises", "load")

    def __init__(self, name: str, recognises: Callable[[bytes], bool],
                 load: Callable[[KernelTarget, KernelRequest], None]) -> None:
        self.name = name
        self.recognises = recognises
        self.load = load


def _load_multiboot(machine: KernelTarget, req: KernelRequest) -> None:
    from emu.loader.multiboot import parse_image, qemu_cmdline
    image = parse_image(req.data, req.name, machine.ram_size)
    cmdline = qemu_cmdline(req.name, req.append)
    modules = None
    if req.initrd:
        from emu.loader.modules import place_modules, read_modules
        modules = place_modules(image, cmdline, req.initrd, read_modules(req.initrd),
                                machine.ram_size)
    machine.load_multiboot(image, cmdline, modules)


def _load_linux(machine: KernelTarget, req: KernelRequest) -> None:
    """QEMU's -initrd for a Linux kernel is one file, its name taken whole."""
    from emu.loader.linux import parse_linux
    initrd = None
    if req.initrd is not None:
        try:
            with open(req.initrd, "rb") as f:
                initrd = f.read()
        except OSError as e:
            raise ImageError(f"cannot read initrd {req.initrd}: {e.strerror}") from None
    machine.load_linux(parse_linux(req.data, req.name, machine.ram_size, req.append, initrd,
                                   req.initrd or "initrd"))


FORMATS = (KernelFormat("linux", _is_linux, _load_linux),
           KernelFormat("multiboot", lambda data: True, _load_multiboot))


def format_of(data: bytes) -> KernelFormat:
    """The format that takes these bytes (multiboot, the last, takes any and explains)."""
    return next(f for f in FORMATS if f.recognises(data))


def load_kernel(machine: KernelTarget, req: KernelRequest) -> str:
    """Load the request into the machine with the format that recognises it; its name."""
    fmt = format_of(req.data)
    fmt.load(machine, req)
    return fmt.name
