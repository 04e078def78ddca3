"""A minimal DWARF line table for an assembled image: one compile unit whose .debug_line maps
every statement's address to the file and line the user wrote (the invocation line for macro
expansions, the header's line for included files). Enough for gdb's ``list``, ``break FILE:LINE``,
``info line`` and the source line shown at a stop (DWARF 4, section 6.2)."""
from __future__ import annotations

import os
import struct

# DWARF 4 constants (DWARF Debugging Information Format, version 4, section 7)
DW_TAG_compile_unit = 0x11
DW_CHILDREN_no = 0x00
DW_AT_name = 0x03
DW_AT_stmt_list = 0x10
DW_AT_low_pc = 0x11
DW_AT_high_pc = 0x12
DW_AT_language = 0x13
DW_AT_comp_dir = 0x1B
DW_AT_producer = 0x25
DW_FORM_addr = 0x01
DW_FORM_data2 = 0x05
DW_FORM_data8 = 0x07
DW_FORM_string = 0x08
DW_FORM_sec_offset = 0x17
DW_LANG_Mips_Assembler = 0x8001
DW_LNS_copy = 1
DW_LNS_advance_line = 3
DW_LNS_set_file = 4
DW_LNE_end_sequence = 1
DW_LNE_set_address = 2
LINE_BASE, LINE_RANGE, OPCODE_BASE = -5, 14, 13
STANDARD_OPCODE_LENGTHS = bytes([0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1])


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


def debug_line(rows: list[tuple[int, str, int]], end: int) -> bytes:
    """The .debug_line (version 3: no per-instruction operation count) of one sequence: rows are (address, file path, line) in address order,
    ``end`` the address after the last byte."""
    files: list[str] = []
    index: dict[str, int] = {}
    for _, path, _ in rows:
        if path not in index:
            files.append(path)
            index[path] = len(files)          # file numbers start at 1
    file_table = b"".join(os.path.abspath(p).encode() + b"\0" + uleb(0) + uleb(0) + uleb(0)
                          for p in files) + b"\0"
    header_rest = (bytes([1, 1, LINE_BASE & 0xFF, LINE_RANGE, OPCODE_BASE])
                   + STANDARD_OPCODE_LENGTHS + b"\0" + file_table)
    program = bytearray()
    cur_file, cur_line = 1, 1
    for addr, path, line in rows:
        program += b"\0" + uleb(9) + bytes([DW_LNE_set_address]) + struct.pack("<Q", addr)
        if index[path] != cur_file:
            program += bytes([DW_LNS_set_file]) + uleb(index[path])
            cur_file = index[path]
        if line != cur_line:
            program += bytes([DW_LNS_advance_line]) + sleb(line - cur_line)
            cur_line = line
        program += bytes([DW_LNS_copy])
    program += b"\0" + uleb(9) + bytes([DW_LNE_set_address]) + struct.pack("<Q", end)
    program += b"\0" + uleb(1) + bytes([DW_LNE_end_sequence])
    body = struct.pack("<H", 3) + struct.pack("<I", len(header_rest)) + header_rest + program
    return struct.pack("<I", len(body)) + body


def debug_abbrev() -> bytes:
    attrs = [(DW_AT_name, DW_FORM_string), (DW_AT_comp_dir, DW_FORM_string),
             (DW_AT_producer, DW_FORM_string), (DW_AT_language, DW_FORM_data2),
             (DW_AT_stmt_list, DW_FORM_sec_offset), (DW_AT_low_pc, DW_FORM_addr),
             (DW_AT_high_pc, DW_FORM_data8)]
    out = uleb(1) + uleb(DW_TAG_compile_unit) + bytes([DW_CHILDREN_no])
    for a, f in attrs:
        out += uleb(a) + uleb(f)
    return out + b"\0\0" + b"\0"


def debug_info(name: str, low: int, high: int) -> bytes:
    die = (uleb(1) + os.path.abspath(name).encode() + b"\0" + os.getcwd().encode() + b"\0"
           + b"svmemu\0" + struct.pack("<H", DW_LANG_Mips_Assembler) + struct.pack("<I", 0)
           + struct.pack("<Q", low) + struct.pack("<Q", high - low))
    body = struct.pack("<HIB", 4, 0, 8) + die
    return struct.pack("<I", len(body)) + body
