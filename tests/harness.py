"""One way for tests to boot something on svmemu: an assembly source (through the product's
assembler), an image file, image bytes or a BootImage built in Python (tests/nested_image.py),
with the usual options, returning everything a test asserts on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.arch.vmcb import Vmcb
from emu.core.machine import Machine, RunResult
from emu.core.trace import Tracer
from emu.core.cpu_models import parse_cpu
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import BootImage, parse_image
from svm_ext.extension import SvmExtension
from tests.nested_image import VMCB12

RAM = 128 << 20

# A #DB handler for guest sources (at the end: it opens .bss): it keeps the pushed RIP and DR6
# of each #DB (db_rip[i], db_dr6[i] for the first 8; db_count counts all) and clears DR6, so
# each check sees only its own event.
DB_RECORDER = r'''
db_handler:
    push rax
    push rbx
    push rcx
    mov rbx, [rip + db_count]
    and ebx, 7
    mov rax, [rsp + 24]
    lea rcx, [rip + db_rip]
    mov [rcx + rbx * 8], rax
    mov rax, dr6
    lea rcx, [rip + db_dr6]
    mov [rcx + rbx * 8], rax
    inc qword ptr [rip + db_count]
    xor eax, eax
    mov dr6, rax
    pop rcx
    pop rbx
    pop rax
    iretq

.bss
.align 8
db_count:       .space 8
db_rip:         .space 64
db_dr6:         .space 64
'''


@dataclass
class Booted:
    """A finished run."""
    machine: Machine
    ext: SvmExtension | None        # None when booted without nested SVM
    result: RunResult
    serial: str                     # what the guest wrote to COM1

    def vmcb(self, pa: int = VMCB12) -> Vmcb:
        """A live view of the VMCB at guest-physical `pa` (default: nested_image's vmcb12)."""
        return Vmcb(self.machine.mem.view, pa)

    @property
    def vmcb12(self) -> Vmcb:
        return self.vmcb()


def source(tmp_path: Path, body: str, name: str = "guest.S") -> str:
    """Write a guest source that may `.include "prelude.inc"` or `"svm.inc"` (the bundled
    guests' shared code) into tmp_path; returns its path."""
    for inc in ("prelude.inc", "svm.inc"):
        body = body.replace(f'.include "{inc}"', f'.include "{GUESTS_DIR / inc}"')
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def image_of(what: str | Path | bytes | BootImage, ram: int = RAM) -> BootImage:
    """What `boot` loads: a .S file is assembled, any other path or bytes parsed as multiboot."""
    if isinstance(what, BootImage):
        return what
    if isinstance(what, bytes):
        return parse_image(what, "test", ram)
    path = str(what)
    data = assemble_source(path) if path.endswith(".S") else Path(path).read_bytes()
    return parse_image(data, path, ram)


def boot(what: str | Path | bytes | BootImage, *, nested: bool = True,
         ext: SvmExtension | None = None, pat_model: str = "architectural", ram: int = RAM,
         cmdline: str = "test", timeout: float = 20, tracer: Tracer | None = None,
         cpu: str | None = None, strict: bool = False, cpus: int = 1,
         quantum: int | None = None, **run: Any) -> Booted:
    """Boot `what` on a fresh machine (with nested SVM unless nested=False or the `cpu` model
    lacks it; `ext` to pass one built by the test) and run it to its end; `run` goes to
    Machine.run (max_insns, ...). `cpu` is a --cpu spelling, `strict` is --strict, `cpus` is
    -smp and `quantum` --quantum."""
    model = parse_cpu(cpu) if cpu is not None else None
    nested = nested and (model is None or model.svm)
    if nested and ext is None:
        ext = SvmExtension(pat_model=pat_model)
    m = Machine(ram, stdout=None, tracer=tracer, cpu=model, extensions=[ext] if nested else [],
                cpus=cpus, quantum=quantum)
    m.strict = strict
    m.load_multiboot(image_of(what, ram), cmdline)
    result = m.run(timeout=timeout, **run)
    return Booted(m, ext if nested else None, result, bytes(m.serial.output).decode())
