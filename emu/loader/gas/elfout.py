"""An assembled image as an ELF file with a symbol table and a DWARF line table, for gdb
(``gdb image.elf -ex 'target remote :1234'``) and for anything that reads symbols.

The image bytes sit contiguous at file offset 0x1000 under one PT_LOAD segment. A multiboot
header with the a.out kludge (the prelude's) places the file by its own addresses on QEMU and
svmemu alike, so the file is ELF64 x86-64, which gdb reads as 64-bit code. Without the kludge
the loader must read the ELF, and QEMU takes only ELF32: then the file is ELF32 i386."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.loader.gas.dwarf import debug_abbrev, debug_info, debug_line

if TYPE_CHECKING:
    from emu.loader.asm import Assembly

# ELF constants (System V ABI, "Object Files")
ET_EXEC, EM_386, EM_X86_64, EV_CURRENT = 2, 3, 62, 1
PT_LOAD, PF_X, PF_W, PF_R = 1, 1, 2, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_LOCAL, STB_GLOBAL, STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 0, 1, 2
SHN_ABS = 0xFFF1
IMAGE_OFFSET = 0x1000
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
_SECTION_FLAGS = {"text": SHF_ALLOC | SHF_EXECINSTR | SHF_WRITE, "rodata": SHF_ALLOC,
                  "data": SHF_ALLOC | SHF_WRITE, "bss": SHF_ALLOC | SHF_WRITE}


def has_aout_kludge(image: bytes) -> bool:
    for off in range(0, min(len(image), 8192) - 11, 4):
        magic, flags, check = struct.unpack_from("<III", image, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + check) & 0xFFFFFFFF == 0:
            return bool(flags & MULTIBOOT_AOUT_KLUDGE)
    return False


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.at: dict[str, int] = {}

    def add(self, s: str) -> int:
        if s not in self.at:
            self.at[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self.at[s]


def write_elf(asm: Assembly, source: str) -> bytes:
    """The ELF file for `asm`, assembled from `source` (named in the debug info)."""
    is64 = has_aout_kludge(asm.image)
    base = asm.base
    sections = [(name, lo, hi) for name, (lo, hi) in asm.sections.items() if hi > lo]
    entry = next((asm.symbols[s] for s in ("_start", "_start32", "start") if s in asm.symbols), base)
    rows = [(addr, o.path, o.line) for addr, _size, o in asm.lines if o.line > 0]
    dbg_line = debug_line(rows, max([a + s for a, s, _ in asm.lines] + [base]))
    dbg_info = debug_info(source, base, base + len(asm.image))
    shstr = _Strings()
    strtab = _Strings()

    # symbols: locals first, then globals (sh_info = first global)
    section_index = {name: k + 1 for k, (name, _, _) in enumerate(sections)}
    named = sorted((v, n) for n, v in asm.symbols.items()
                   if not n.startswith(("__svmemu_", ".L")))
    syms_local, syms_global = [], []
    for k, (value, name) in enumerate(named):
        sec = next((s for s, lo, hi in sections if lo <= value < hi), None)
        shndx = section_index[sec] if sec else SHN_ABS
        nxt = next((v for v, _ in named[k + 1:] if v > value), None)
        size = 0
        if sec and nxt is not None:
            size = min(nxt, next(hi for s, lo, hi in sections if s == sec)) - value
        kind = STT_FUNC if sec == "text" and not name.startswith(".") else (
            STT_OBJECT if sec in ("rodata", "data", "bss") else STT_NOTYPE)
        bind = STB_GLOBAL if name in asm.globals else STB_LOCAL
        entry_sym = (strtab.add(name), (bind << 4) | kind, shndx, value, size)
        (syms_global if bind == STB_GLOBAL else syms_local).append(entry_sym)
    syms = [(0, 0, 0, 0, 0)] + syms_local + syms_global
    if is64:
        symtab = b"".join(struct.pack("<IBBHQQ", n, info, 0, sh, v, s) for n, info, sh, v, s in syms)
    else:
        symtab = b"".join(struct.pack("<IIIBBH", n, v & 0xFFFFFFFF, s, info, 0, sh)
                          for n, info, sh, v, s in syms)

    ehsize, phsize, shsize = (64, 56, 64) if is64 else (52, 32, 40)
    out = bytearray(IMAGE_OFFSET)
    out += asm.image
    headers = [(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]   # name, type, flags, addr, off, size, link, info, align, entsize
    for name, lo, hi in sections:
        stype = SHT_NOBITS if name == "bss" else SHT_PROGBITS
        off = IMAGE_OFFSET + (lo - base) if name != "bss" else IMAGE_OFFSET + len(asm.image)
        headers.append((shstr.add("." + name), stype, _SECTION_FLAGS[name], lo, off, hi - lo,
                        0, 0, 1, 0))

    def blob(name: str, data: bytes, stype: int = SHT_PROGBITS, link: int = 0, info: int = 0,
             entsize: int = 0, align: int = 1) -> None:
        while len(out) % align:
            out.append(0)
        headers.append((shstr.add(name), stype, 0, 0, len(out), len(data), link, info, align,
                        entsize))
        out.extend(data)

    strtab_index = len(headers) + 1
    blob(".symtab", symtab, SHT_SYMTAB, strtab_index, 1 + len(syms_local), 24 if is64 else 16, 8)
    blob(".strtab", bytes(strtab.data), SHT_STRTAB)
    if is64:
        blob(".debug_line", dbg_line)
        blob(".debug_info", dbg_info)
        blob(".debug_abbrev", debug_abbrev())
    shstr_name = shstr.add(".shstrtab")
    shstrndx = len(headers)
    headers.append((shstr_name, SHT_STRTAB, 0, 0, len(out) + 0, 0, 0, 0, 1, 0))
    shstr_off = len(out)
    out += shstr.data
    headers[-1] = (shstr_name, SHT_STRTAB, 0, 0, shstr_off, len(shstr.data), 0, 0, 1, 0)
    while len(out) % 8:
        out.append(0)
    shoff = len(out)
    for h in headers:
        name, stype, flags, addr, off, size, link, info, align, entsize = h
        if is64:
            out += struct.pack("<IIQQQQIIQQ", name, stype, flags, addr, off, size, link, info,
                               align, entsize)
        else:
            out += struct.pack("<IIIIIIIIII", name, stype, flags, addr, off, size, link, info,
                               align, entsize)
    memsz = asm.bss_end - base
    if is64:
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        eh = ident + struct.pack("<HHIQQQIHHHHHH", ET_EXEC, EM_X86_64, EV_CURRENT, entry, ehsize,
                                 shoff, 0, ehsize, phsize, 1, shsize, len(headers), shstrndx)
        ph = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_W | PF_X, IMAGE_OFFSET, base, base,
                         len(asm.image), memsz, 0x1000)
    else:
        ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
        eh = ident + struct.pack("<HHIIIIIHHHHHH", ET_EXEC, EM_386, EV_CURRENT, entry, ehsize,
                                 shoff, 0, ehsize, phsize, 1, shsize, len(headers), shstrndx)
        ph = struct.pack("<IIIIIIII", PT_LOAD, IMAGE_OFFSET, base, base, len(asm.image), memsz,
                         PF_R | PF_W | PF_X, 0x1000)
    out[0:len(eh)] = eh
    out[ehsize:ehsize + len(ph)] = ph
    return bytes(out)
