"""What an Intel-syntax operand means to GNU as, written so that keystone encodes that meaning.

GNU as (``.intel_syntax noprefix``) reads a bare symbol as a memory operand: ``mov edi, label``
LOADS from ``label``, ``push label`` pushes the quadword there, ``lea rax, label`` is
``lea rax, [label]``. Only ``offset label`` is the address. A bare expression is an immediate
when it is a constant at that line: numbers, symbols already given a constant value
(``.equ``/``=`` above the line; a constant defined below it is still read as memory), or a
difference in which the labels cancel (``end - start``). Direct branches (``jmp``, ``call``,
``jcc``, ``loop``) take their target as written. keystone reads every bare symbol as an
immediate, so memory operands are rewritten with brackets and ``offset`` is dropped.
"""
from __future__ import annotations

import re
from typing import Callable

REGISTERS = frozenset(
    [f"r{n}{w}" for n in range(8, 16) for w in ("", "d", "w", "b")]
    + [f"{p}{r}" for p in ("r", "e", "") for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")]
    + ["al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "spl", "bpl", "rip", "eip",
       "cs", "ds", "es", "fs", "gs", "ss", "st"]
    + [f"cr{n}" for n in range(16)] + [f"dr{n}" for n in range(16)]
    + [f"xmm{n}" for n in range(32)] + [f"ymm{n}" for n in range(32)]
    + [f"mm{n}" for n in range(8)] + [f"st({n})" for n in range(8)] + [f"k{n}" for n in range(8)])
SIZES = ("byte", "word", "dword", "fword", "qword", "tbyte", "xmmword", "ymmword", "oword")
KEYWORDS = frozenset(SIZES) | {"ptr", "offset", "flat", "short", "near", "far", "rel", "abs"}

BRANCHES = frozenset(
    ["jmp", "call", "jecxz", "jrcxz", "jcxz", "loop", "loope", "loopne", "loopz", "loopnz",
     "xbegin"]
    + ["j" + cc for cc in ("o", "no", "b", "nb", "c", "nc", "ae", "nae", "e", "z", "ne", "nz",
                           "be", "na", "a", "nbe", "s", "ns", "p", "pe", "np", "po", "l", "nge",
                           "ge", "nl", "le", "ng", "g", "nle")])

_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_.$][\w.$]*)(?![\w.$])")
_SIZE_PTR = re.compile(r"(?i)^\s*(" + "|".join(SIZES) + r")\s+ptr\s+")
_SEG = re.compile(r"(?i)^\s*([c-gs]s)\s*:\s*(?!\[)")


def symbols_in(expr: str) -> list[str]:
    """Identifiers in an expression that are neither registers nor keywords."""
    return [s for s in _IDENT.findall(expr)
            if s.lower() not in REGISTERS and s.lower() not in KEYWORDS]


def is_constant(expr: str, evaluate: Callable[[str, dict[str, int]], int | None],
                consts: dict[str, int]) -> bool:
    """A constant at this line: all symbols known constants, or labels that cancel (the value
    does not move when every label moves by the same amount)."""
    labels = [s for s in dict.fromkeys(symbols_in(expr)) if s not in consts]
    if not labels:
        return evaluate(expr, consts) is not None
    trial = []
    for base in (0x1000_0000, 0x7000_0000):
        env = dict(consts)
        env.update({lab: base + 0x10 * k for k, lab in enumerate(labels)})
        trial.append(evaluate(expr, env))
    return trial[0] is not None and trial[0] == trial[1]


def fold_constants(text: str, consts: dict[str, int]) -> str:
    """Known constants replaced by their values: keystone encodes ``[rdi + C + 4]`` with a
    disp32 where C is a symbol (it cannot size a symbol+offset early), GNU as with the disp8
    the value fits in."""
    def sub(m: re.Match[str]) -> str:
        v = consts.get(m.group(1))
        return m.group(1) if v is None else (str(v) if v >= 0 else f"({v})")
    return _IDENT.sub(sub, text)


def rewrite_operand(op: str, mnemonic: str, mode: int, consts: dict[str, int],
                    evaluate: Callable[[str, dict[str, int]], int | None],
                    operand_count: int) -> str:
    """One operand in the form keystone reads with GNU as's meaning."""
    text = op.strip()
    low = text.lower()
    if not text or low in REGISTERS:
        return text
    m = re.match(r"(?i)^offset\s+(?:flat\s*:\s*)?(.*)$", text)
    if m:
        return m.group(1)
    if "[" in text:
        # GNU as reads label[reg] as [label + reg]
        pm = _SIZE_PTR.match(text)
        size = text[:pm.end()] if pm else ""
        rest = text[len(size):]
        sm = re.match(r"(?i)^\s*([c-gs]s)\s*:\s*", rest)
        seg = rest[:sm.end()] if sm else ""
        rest = rest[len(seg):]
        m = re.fullmatch(r"([^\[\]]*?)\s*\[(.*)\]\s*", rest)
        if m and m.group(1).strip():
            return f"{size}{seg}[{m.group(1).strip()} + {m.group(2)}]"
        return text
    size = ""
    body = text
    pm = _SIZE_PTR.match(body)
    if pm:
        size = body[:pm.end()]
        body = body[pm.end():]
    seg = ""
    sm = _SEG.match(body)
    if sm:
        seg = f"{sm.group(1)}:"
        body = body[sm.end():]
    if not size and not seg:
        if mnemonic in BRANCHES or mnemonic in ("ljmp", "lcall"):
            return text
        if is_constant(body, evaluate, consts):
            return text
    if mnemonic in ("push", "pop") and not size:
        size = "qword ptr " if mode == 64 else "dword ptr "
    return f"{size}{seg}[{body.strip()}]"


_SEGMENT_REGS = ("cs", "ds", "es", "fs", "gs", "ss")
_R16_TO_R32 = {r: "e" + r for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")} | {
    f"r{n}w": f"r{n}d" for n in range(8, 16)}


def keystone_form(mnemonic: str, args: list[str], mode: int, consts: dict[str, int],
                  evaluate: Callable[[str, dict[str, int]], int | None]) -> list[str]:
    """Operands rewritten where keystone picks another encoding than GNU as for the same
    instruction (found by the differential test against binutils)."""
    low = [a.strip().lower() for a in args]
    if mnemonic == "mov" and len(low) == 2 and low[0] in _SEGMENT_REGS and low[1] in _R16_TO_R32:
        # MOV Sreg, r16: GNU as writes no operand-size prefix (8E /r reads 16 bits anyway)
        return [args[0], _R16_TO_R32[low[1]]]
    if mode == 64:
        args = [_absolute_64(a, mnemonic, args, consts, evaluate) for a in args]
    return args


_ACCUMULATORS = frozenset({"al", "ax", "eax", "rax"})


def _absolute_64(arg: str, mnemonic: str, args: list[str], consts: dict[str, int],
                 evaluate: Callable[[str, dict[str, int]], int | None]) -> str:
    """An absolute address in 64-bit code (``[label]``, ``[0x10070]``) as GNU as encodes it:
    ModRM + SIB with no base and no index, a sign-extended disp32. keystone encodes a number
    there RIP-relative and an accumulator MOV as a 64-bit moffs; ``riz*1 +`` makes it take
    GNU as's form. GNU as keeps the moffs form only for a MOV of the accumulator whose
    constant address does not fit the sign-extended disp32."""
    m = re.fullmatch(r"(?s)(.*?)\[(.*)\](.*)", arg)
    if not m:
        return arg
    inside = m.group(2)
    names = {t.lower() for t in _IDENT.findall(inside)}
    if names & REGISTERS:
        return arg
    if mnemonic == "mov" and any(a.strip().lower() in _ACCUMULATORS for a in args):
        value = evaluate(inside, consts)
        if value is not None and not -(1 << 31) <= value < (1 << 31):
            return arg
    return f"{m.group(1)}[riz*1 + {inside.strip()}]{m.group(3)}"
