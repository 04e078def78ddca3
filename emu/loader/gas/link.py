"""How sections become one image: the layout svmemu's assembler gives a source, written as the
GNU ld script that gives the same layout with binutils (the differential tests use it; a user
can link their objects with it to get svmemu's image)."""
from __future__ import annotations

IMAGE_BASE = 0x100000
"""Physical load address of every assembled image (multiboot loads kernels at 1 MiB)."""

SECTION_ORDER = ("text", "rodata", "data", "bss")
"""``.multiboot*`` and ``.text*`` first, then ``.rodata*``, ``.data*``, and ``.bss*`` last; the
linker aligns each to its largest ``.align`` and fills the gaps with zeros."""


def linker_script(base: int = IMAGE_BASE) -> str:
    """A GNU ld script with svmemu's layout and the layout symbols the prelude uses."""
    return f"""ENTRY(_start32)
SECTIONS {{
  . = {base:#x};
  __image_start = .;
  .text : {{ *(.multiboot*) *(.text .text.*) }}
  .rodata : {{ *(.rodata .rodata.*) }}
  .data : {{ *(.data .data.*) }}
  __bss_start = .;
  .bss : {{ *(.bss .bss.*) }}
  __bss_end = .;
  /DISCARD/ : {{ *(.note*) *(.comment) *(.eh_frame*) }}
}}
"""
