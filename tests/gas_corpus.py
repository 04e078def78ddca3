"""A deterministic corpus of Intel-syntax statements for the differential test against GNU as:
common mnemonics (ALU, moves, shifts, stack, branches through registers and memory, bit tests,
conditional moves and sets, system and SVM instructions) x registers of every size x addressing
modes x immediates of every width class, in 64-bit and 32-bit code."""
from __future__ import annotations

import itertools

REGS64 = {8: ["al", "cl", "dl", "bl", "sil", "dil", "r8b", "r15b"],
          16: ["ax", "cx", "dx", "si", "r9w", "r14w"],
          32: ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r13d"],
          64: ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r12", "r13", "r15"]}
REGS32 = {8: ["al", "cl", "dl", "bl", "ah", "bh"], 16: ["ax", "cx", "dx", "si", "di", "sp"],
          32: ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]}
MEM64 = ["[rax]", "[rsp]", "[rbp]", "[r12]", "[r13]", "[rax + 8]", "[rax - 0x80]", "[rcx + 0x80]",
         "[rax + rbx*4]", "[rsp + rcx*8 + 0x100]", "[rbp + r12*2 - 4]", "[r13 + r14]",
         "[rip + 0x10]", "[0x1000]", "[0x7ffff000]", "[corpus_data]", "[corpus_data + rbx*8]",
         "[rbx + 0x12345678]", "[rsi*2 + 0x40]", "corpus_data"]
MEM32 = ["[eax]", "[esp]", "[ebp]", "[eax + 8]", "[ecx - 0x80]", "[eax + ebx*4]",
         "[esp + ecx*8 + 0x100]", "[ebp + esi*2 - 4]", "[0x1000]", "[corpus_data]",
         "[corpus_data + ebx*8]", "[esi*2 + 0x40]", "corpus_data"]
IMMS = ["0", "1", "-1", "0x7f", "0x80", "-0x80", "-0x81", "0xff", "0x7fff", "0xffff", "0x12345678",
        "0x7fffffff", "-0x80000000", "CORPUS_K", "CORPUS_K + 1", "offset corpus_data"]
SIZE = {8: "byte", 16: "word", 32: "dword", 64: "qword"}
ALU = ["mov", "add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test"]
UNARY = ["inc", "dec", "neg", "not", "mul", "imul", "div", "idiv"]
SHIFTS = ["shl", "shr", "sar", "rol", "ror", "rcl", "rcr"]
NOOPS = ["nop", "ret", "cpuid", "rdtsc", "rdtscp", "rdmsr", "wrmsr", "hlt", "cli", "sti", "cld",
         "std", "clc", "stc", "cmc", "pushf", "popf", "cdq", "cwde", "ud2", "int3", "leave",
         "lodsb", "stosd", "movsb", "rep movsb", "rep stosd", "pause", "lfence", "mfence",
         "sfence", "wbinvd", "invd", "clts", "sahf", "lahf", "xsetbv", "xgetbv", "monitor",
         "mwait", "rdpmc", "rsm", "vmrun", "vmmcall", "vmload", "vmsave", "stgi", "clgi",
         "skinit", "invlpga", "vmrun rax", "vmload rax", "vmsave rax", "invlpga rax, ecx",
         "iretq", "swapgs", "syscall", "sysret", "sysretq", "lretq", "retf", "int 0x80",
         "ret 8", "in al, dx", "in eax, dx", "out dx, al", "out dx, eax", "in al, 0x60",
         "out 0x80, al", "out 0xf4, eax", "cqo", "cdqe", "pushfq", "popfq", "iret"]
NOOPS32 = ["nop", "ret", "cpuid", "rdmsr", "wrmsr", "hlt", "cli", "sti", "pushf", "popf", "pushad",
           "popad", "cdq", "cwde", "iret", "iretd", "vmrun", "vmrun eax", "vmmcall", "vmload",
           "vmsave", "stgi", "clgi", "skinit", "skinit eax", "invlpga", "invlpga eax, ecx",
           "lret", "retf", "in al, dx", "out dx, eax", "int 3", "into", "aaa", "daa", "sysenter",
           "sysexit", "rep stosd", "lodsd"]


def _binary(regs: dict[int, list[str]], mems: list[str], wide: int) -> list[str]:
    out = []
    sizes = [s for s in (8, 16, 32, 64) if s <= wide]
    for op in ALU:
        for size in sizes:
            rs = regs[size]
            for a, b in itertools.product(rs[:4], rs[::3]):
                out.append(f"{op} {a}, {b}")
            for k, m in enumerate(mems):
                r = rs[k % len(rs)]
                out.append(f"{op} {r}, {SIZE[size]} ptr {m}" if op != "test" else f"{op} {SIZE[size]} ptr {m}, {r}")
                out.append(f"{op} {SIZE[size]} ptr {m}, {r}")
            for k, imm in enumerate(IMMS):
                out.append(f"{op} {rs[k % len(rs)]}, {imm}")
                out.append(f"{op} {SIZE[size]} ptr {mems[k % len(mems)]}, {imm}")
    return out


def _others(regs: dict[int, list[str]], mems: list[str], wide: int) -> list[str]:
    out = []
    sizes = [s for s in (8, 16, 32, 64) if s <= wide]
    for op in UNARY:
        for size in sizes:
            out += [f"{op} {r}" for r in regs[size][:3]]
            out += [f"{op} {SIZE[size]} ptr {m}" for m in mems[::2]]
    for op in SHIFTS:
        for size in sizes:
            r = regs[size][1]
            out += [f"{op} {r}, 1", f"{op} {r}, 5", f"{op} {r}, cl", f"{op} {SIZE[size]} ptr {mems[5]}, 3"]
    for size in sizes[1:]:
        rs = regs[size]
        out += [f"lea {rs[0]}, {m}" for m in mems if m.startswith("[") and "rip" not in m] if size == wide else []
        out += [f"imul {rs[1]}, {rs[2]}", f"imul {rs[1]}, {rs[2]}, 10", f"imul {rs[0]}, {rs[1]}, 1000",
                f"bt {rs[0]}, {rs[1]}", f"bt {rs[0]}, 5", f"bts {SIZE[size]} ptr {mems[1]}, 3",
                f"cmovz {rs[0]}, {rs[1]}", f"cmovnz {rs[2]}, {SIZE[size]} ptr {mems[2]}",
                f"xchg {rs[0]}, {rs[1]}", f"xchg {rs[1]}, {rs[2]}", f"cmpxchg {SIZE[size]} ptr {mems[0]}, {rs[1]}",
                f"xadd {rs[0]}, {rs[1]}", f"movzx {rs[0]}, {regs[8][1]}", f"movsx {rs[0]}, byte ptr {mems[3]}",
                f"bsf {rs[0]}, {rs[1]}", f"popcnt {rs[0]}, {rs[1]}"]
    for size in sizes[2:]:
        rs = regs[size]
        out += [f"bswap {rs[1]}", f"movzx {rs[0]}, word ptr {mems[2]}", f"movsx {rs[0]}, {regs[16][1]}"]
    out += [f"set{cc} {r}" for cc in ("z", "nz", "b", "a", "l", "ge") for r in regs[8][:2]]
    out += [f"setz byte ptr {m}" for m in mems[::4]]
    width = "qword" if wide == 64 else "dword"
    out += [f"push {r}" for r in regs[wide]] + [f"pop {r}" for r in regs[wide]]
    out += [f"push {width} ptr {m}" for m in mems[::2]] + [f"push {imm}" for imm in IMMS[:12]]
    out += [f"jmp {r}" for r in regs[wide][:4]] + [f"call {r}" for r in regs[wide][:4]]
    out += [f"jmp {width} ptr {m}" for m in mems[::3]] + [f"call {width} ptr {m}" for m in mems[::3]]
    out += [f"mov {r}, cr{n}" for r in regs[wide][:2] for n in (0, 2, 3, 4)]
    out += [f"mov cr{n}, {r}" for r in regs[wide][:2] for n in (0, 3, 4)]
    out += [f"mov {regs[wide][0]}, dr{n}" for n in (0, 6, 7)] + [f"mov dr7, {regs[wide][1]}"]
    out += [f"lgdt {m}" for m in mems[:6]] + [f"lidt {m}" for m in mems[3:8]]
    out += [f"sgdt {mems[0]}", f"sidt {mems[4]}", f"invlpg {mems[0]}", f"invlpg {mems[9]}",
            "ltr ax", "lldt cx", "str ax", f"ltr word ptr {mems[1]}", "mov ds, ax", "mov ss, cx",
            "mov ax, ds", "mov es, word ptr [" + mems[0].strip("[]") + "]", f"mov {regs[32][0]}, ss"]
    return out


def corpus(bits: int) -> list[str]:
    """The statements for 64-bit (``bits=64``) or 32-bit code, in a fixed order."""
    if bits == 64:
        regs, mems, extra = REGS64, MEM64, NOOPS
        out = _binary(regs, mems, 64) + _others(regs, mems, 64) + extra
        out += ["mov rax, 0x123456789", "mov rax, -1", "mov r9, 0x80000000", "movabs rax, 5",
                "movsxd rax, ecx", "movsxd r8, dword ptr [rax]", "mov eax, [0x10070]",
                "mov al, [corpus_data]", "mov rax, [corpus_data]", "mov [corpus_data], eax"]
        return list(dict.fromkeys(out))
    regs, mems, extra = REGS32, MEM32, NOOPS32
    out = _binary(regs, mems, 32) + _others(regs, mems, 32) + extra
    out += ["mov eax, [0x10070]", "mov al, [corpus_data]", "mov [corpus_data], eax",
            "ljmp 0x08, corpus_data", "ljmp 0x18:0x100000"]
    return list(dict.fromkeys(out))


PREAMBLE = ".intel_syntax noprefix\n.equ CORPUS_K, 0x42\n"
EPILOGUE = ".data\n.balign 8\ncorpus_data: .quad 0\n"


def source(statements: list[str], bits: int) -> str:
    """One statement per 16-byte slot, so a difference in one cannot shift the others."""
    body = "".join(f".balign 16\n{s}\n" for s in statements)
    return PREAMBLE + (".code32\n" if bits == 32 else "") + body + ".balign 16\n" + EPILOGUE
