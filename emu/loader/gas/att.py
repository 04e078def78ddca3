"""AT&T syntax (GNU as's default) translated into Intel syntax, which the rest of the front end
gives GNU as's meaning and keystone encodes.

What changes between the two: operands are reversed (source first); registers carry ``%``;
immediates carry ``$`` (``$label`` is the address, a bare ``label`` a memory operand);
memory is ``seg:disp(base, index, scale)``; the operand size is a mnemonic suffix (``movl``,
``addq``) when no register gives it; ``movzbl``/``movslq``-style names carry both sizes;
indirect branches take ``*``; ``ljmp $sel, $off`` keeps its order. A statement this module
cannot translate faithfully is refused (AttError), never guessed.
"""
from __future__ import annotations

import re

from emu.loader.gas.intel import REGISTERS


class AttError(ValueError):
    """An AT&T statement that has no faithful Intel form here."""


_SIZES = {"b": "byte", "w": "word", "l": "dword", "q": "qword", "s": "dword", "t": "tbyte"}
# Mnemonics whose last letter is part of the name, not an operand-size suffix.
_WHOLE = {
    "sub", "sbb", "adc", "add", "and", "xor", "or", "cmp", "test", "mov", "shl", "sal", "rol",
    "rcl", "shld", "imul", "mul", "call", "jmp", "cdq", "cqo", "cwd", "cbw", "cwde", "cdqe",
    "lgdt", "lidt", "sgdt", "sidt", "lldt", "sldt", "ltr", "str", "lmsw", "smsw", "invlpg",
    "invlpga", "vmrun", "vmload", "vmsave", "vmmcall", "stgi", "clgi", "skinit", "bswap",
    "movsxd", "xchg", "nop", "pushf", "popf", "ret", "lret", "iret", "int", "int3", "into",
    "hlt", "cli", "sti", "cld", "std", "clc", "stc", "cmc", "leave", "enter", "cpuid", "rdmsr",
    "wrmsr", "rdtsc", "rdtscp", "rdpmc", "ud2", "pause", "lfence", "mfence", "sfence", "wbinvd",
    "invd", "clts", "sahf", "lahf", "xsetbv", "xgetbv", "monitor", "mwait", "rsm", "swapgs",
    "syscall", "sysret", "sysenter", "sysexit", "in", "out", "bt", "bts", "btr", "btc", "bsf",
    "bsr", "popcnt", "lzcnt", "tzcnt", "xadd", "cmpxchg", "cmpxchg8b", "cmpxchg16b", "neg",
    "not", "inc", "dec", "div", "idiv", "shr", "sar", "ror", "rcr", "shrd", "lea", "push",
    "pop", "loop", "loope", "loopne", "jecxz", "jrcxz", "movabs", "crc32", "rdrand", "rdseed",
    "xlat", "aaa", "aas", "daa", "das", "pushad", "popad", "cmovl", "cmovnl", "cmovb", "cmovnb",
    "setb", "setnb", "setl", "setnl", "setnae", "setae", "jb", "jnb", "jl", "jnl", "jnae",
    "lock", "rep", "repe", "repz", "repne", "repnz", "fxsave", "fxrstor", "xsave", "xrstor",
    "ldmxcsr", "stmxcsr", "prefetchw",
}
_CONVERSIONS = {"cltq": "cdqe", "cqto": "cqo", "cltd": "cdq", "cwtl": "cwde", "cbtw": "cbw",
                "cwtd": "cwd", "lretq": "lretq", "iretq": "iretq", "iretl": "iretd",
                "sysretq": "sysretq", "sysretl": "sysret", "pushfq": "pushfq", "popfq": "popfq",
                "pushfl": "pushfd", "popfl": "popfd", "lretl": "lret", "retq": "ret", "retl": "ret",
                "callq": "call", "calll": "call", "jmpq": "jmp", "jmpl": "jmp", "leaveq": "leave",
                "leavel": "leave"}
_STRINGS = ("movs", "stos", "lods", "scas", "cmps", "ins", "outs")
_STRING_SUFFIX = {"b": "b", "w": "w", "l": "d", "q": "q"}
_EXTEND = re.compile(r"^mov([sz])([bwl])([wlq])$")
_NOT_REVERSED = {"ljmp", "lcall", "enter", "invlpga"}


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    quote = ""
    for c in text:
        if quote:
            cur += c
            if c == quote:
                quote = ""
            continue
        if c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += c
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _register(text: str) -> str | None:
    t = text.strip()
    if t.startswith("%") and re.fullmatch(r"%\s*[\w]+(\s*\(\s*\d\s*\))?", t):
        name = t[1:].lower().replace(" ", "")
        if name in REGISTERS or re.fullmatch(r"st\(\d\)", name):
            return name
        raise AttError(f"unknown register {t}")
    return None


def _memory(text: str, size: str) -> str:
    """disp(base, index, scale) with an optional %seg: prefix into [base + index*scale + disp]."""
    t = text.strip()
    seg = ""
    m = re.match(r"^%([c-gs]s)\s*:\s*", t, re.I)
    if m:
        seg = m.group(1).lower() + ":"
        t = t[m.end():]
    m = re.fullmatch(r"(.*?)\(\s*([^()]*)\s*\)\s*", t)
    if m and (m.group(2).strip().startswith("%") or m.group(2).strip().startswith(",")):
        disp = m.group(1).strip()
        fields = [f.strip() for f in m.group(2).split(",")]
        if len(fields) > 3:
            raise AttError(f"bad memory operand {text}")
        fields += [""] * (3 - len(fields))
        base, index, scale = fields
        terms = []
        if base:
            r = _register(base)
            if r is None:
                raise AttError(f"bad base register in {text}")
            terms.append(r)
        if index:
            r = _register(index)
            if r is None:
                raise AttError(f"bad index register in {text}")
            terms.append(f"{r}*{scale or '1'}")
        elif scale:
            raise AttError(f"scale without index in {text}")
        if disp:
            terms.append(disp if not disp.startswith("-") or not terms else f"({disp})")
        inner = " + ".join(terms) if terms else "0"
    else:
        if "%" in t:
            raise AttError(f"bad memory operand {text}")
        inner = t
    prefix = f"{size} ptr " if size else ""
    return f"{prefix}{seg}[{inner}]"


def _operand(text: str, size: str, mnemonic: str) -> tuple[str, bool]:
    """The Intel form of one operand and whether it names a register."""
    t = text.strip()
    r = _register(t)
    if r is not None:
        return r, True
    if t.startswith("$"):
        value = t[1:].strip()
        if not value:
            raise AttError("empty immediate")
        if re.search(r"[A-Za-z_.][\w.$]*", re.sub(r"0[xXbB][0-9A-Fa-f]+", "", value)):
            return f"offset {value}", False
        return value, False
    if t.startswith("*"):
        inner = t[1:].strip()
        r = _register(inner)
        if r is not None:
            return r, True
        return _memory(inner, size or "qword"), False
    if mnemonic in _BRANCHES:
        return t, False
    return _memory(t, size), False


_BRANCHES = {"jmp", "call", "loop", "loope", "loopne", "loopz", "loopnz", "jecxz", "jrcxz",
             "jcxz", "xbegin"} | {f"j{cc}" for cc in (
                 "o", "no", "b", "nb", "c", "nc", "ae", "nae", "e", "z", "ne", "nz", "be", "na",
                 "a", "nbe", "s", "ns", "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng",
                 "g", "nle")}


def _mnemonic(word: str, mode: int) -> tuple[str, str, str]:
    """(Intel mnemonic, size of the operands, size of the source for movzx/movsx)."""
    if word in _CONVERSIONS:
        return _CONVERSIONS[word], "", ""
    m = _EXTEND.match(word)
    if m:
        src, dst = _SIZES[m.group(2)], _SIZES[m.group(3)]
        if m.group(1) == "s" and m.group(2) == "l":
            return "movsxd", dst, src
        return ("movsx" if m.group(1) == "s" else "movzx"), dst, src
    for s in _STRINGS:
        if word.startswith(s) and word[len(s):] in _STRING_SUFFIX and len(word) == len(s) + 1:
            return s + _STRING_SUFFIX[word[-1]], "", ""
    if word.startswith("cmov") and word[-1:] in "wlq" and "j" + word[4:-1] in _BRANCHES:
        return word[:-1], _SIZES[word[-1]], ""
    if word in _WHOLE or word in _BRANCHES or word.startswith("set") or word.startswith("cmov"):
        return word, "", ""
    if word[-1:] in _SIZES and word[:-1] in _WHOLE | {"movs", "movz"}:
        return word[:-1], _SIZES[word[-1]], ""
    if word.startswith("j") or word.startswith("set"):
        return word, "", ""
    return word, "", ""


def att_to_intel(stmt: str, mode: int) -> str:
    """One AT&T instruction statement (no labels) in Intel syntax."""
    word, _, rest = stmt.strip().partition(" ")
    word = word.lower()
    prefix = ""
    while word in ("lock", "rep", "repe", "repz", "repne", "repnz") and rest.strip():
        prefix += word + " "
        word, _, rest = rest.strip().partition(" ")
        word = word.lower()
    name, size, src_size = _mnemonic(word, mode)
    ops = _split(rest) if rest.strip() else []
    if name in ("ljmp", "lcall"):
        if len(ops) == 2 and all(o.startswith("$") for o in ops):
            return f"{prefix}{name} {ops[0][1:].strip()}, {ops[1][1:].strip()}"
        if len(ops) == 1 and ops[0].startswith("*"):
            return f"{prefix}{name} {_memory(ops[0][1:], '')}"
        raise AttError(f"{name} takes $SELECTOR, $OFFSET or *MEMORY")
    converted = []
    for k, op in enumerate(ops):
        this_size = size
        if src_size and k == 0:
            this_size = src_size
        intel, _is_reg = _operand(op, this_size, name)
        converted.append(intel)
    if name in ("shl", "shr", "sar", "sal", "rol", "ror", "rcl", "rcr") and len(converted) == 1:
        converted = ["1"] + converted
    if name not in _NOT_REVERSED:
        converted.reverse()
    return f"{prefix}{name} {', '.join(converted)}".strip()
