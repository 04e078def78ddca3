"""emu/arch/stack_segment.py's decision on its own: given the bytes and registers of an
instruction the engine stopped with #GP(0), is it the APM's #SS(0)? (AMD APM vol. 2, 8.2.13.)"""
from __future__ import annotations

import pytest

from emu.arch.stack_segment import noncanonical_through_ss

NC = 0xAAAAAAAAAAAAAAAA
SMALL = 0x10000


def _decide(code: str, **regs: int) -> bool:
    values = {"rax": 0, "rsp": 0x8000, "rbp": 0x9000, "rcx": 0, "rsi": 0, "rdi": 0, "r13": 0}
    values.update(regs)
    return noncanonical_through_ss(bytes.fromhex(code), 0x1000, values.__getitem__,
                                   lambda name: {"fs": NC & ~0xFFF, "gs": 0}[name])


@pytest.mark.parametrize("code, regs, want", [
    ("50", {"rsp": NC}, True),                        # push rax
    ("58", {"rsp": NC}, True),                        # pop rax
    ("c3", {"rsp": NC}, True),                        # ret
    ("c9", {"rbp": NC, "rsp": NC}, True),             # leave
    ("c8100000", {"rsp": NC}, True),                  # enter 0x10, 0
    ("50", {"rsp": 0xFFFF800000000000}, True),        # push: the slot below RSP is non-canonical
    ("48cf", {"rsp": NC}, True),                      # iretq
    ("48cb", {"rsp": NC}, True),                      # retfq
    ("0fa0", {"rsp": NC}, True),                      # push fs
    ("ff18", {"rsp": NC}, True),                      # call far [rax]
    ("ff31", {"rcx": NC}, False),                     # push [rcx]: the DS read faults first
    ("488b4508", {"rbp": NC}, True),                  # mov rax, [rbp+8]
    ("3e488b4508", {"rbp": NC}, False),               # mov rax, ds:[rbp+8]
    ("498b4508", {"r13": NC}, False),                 # mov rax, [r13+8]
    ("48830c0c00", {"rcx": NC}, True),                # or qword [rsp+rcx], 0
    ("488b01", {"rcx": NC}, False),                   # mov rax, [rcx]
    ("36488b01", {"rcx": NC}, True),                  # mov rax, ss:[rcx]
    ("64488b01", {"rcx": SMALL}, False),              # mov rax, fs:[rcx]: FS base non-canonical
    ("48a5", {"rsi": NC}, False),                     # movsq: DS:RSI
    ("3648a5", {"rsi": NC}, True),                    # ss: movsq: the source through SS
    ("48a5", {"rdi": NC}, False),                     # movsq: ES:RDI
    ("678b4500", {"rbp": NC}, False),                 # mov eax, [ebp]: 32-bit address
    ("0f0b", {"rsp": NC}, False),                     # ud2: no memory reference
])
def test_which_segment_faulted(code: str, regs: dict[str, int], want: bool) -> None:
    assert _decide(code, **regs) is want
