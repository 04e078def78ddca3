"""Assembling guest sources (Intel syntax) into the flat multiboot image that QEMU and svmemu boot.

keystone-engine 0.9.2 does the encoding; everything around it is ours, because keystone on its own
is not safe to hand user text:

* it cannot read files (``.include``), reports errors without a line number, and a ``.macro`` or
  ``.rept`` it expands itself would hide where the error came from; so includes, macros and
  repeats are expanded here and every statement keeps its origin (file, line, macro chain);
* some inputs hang it or kill the process: an unterminated string, a statement starting with
  anything but a letter, '_' or '.' (``:``, ``<``, ``|``, ``\\``...), a stray backslash or other
  odd character, an integer literal wider than 64 bits, ``.align`` by a huge value (SIGFPE), a
  huge ``.fill``; all are refused before keystone sees them (found by fuzzing the guests);
* once any keystone instance in the process has had a symbol resolver, later assemblies lay out
  ``.align`` wrongly: we never install one (undefined symbols are found by bisection);
* some inputs it encodes silently wrong, checked after assembly by decoding each statement's
  bytes with capstone (see ``_check_statement``), or rewritten before:
  - in 64-bit code ``[0x10070]`` or ``[CONST]`` (a number, not a label) becomes RIP-relative and
    ``[0xFEE00000]`` a sign-extended disp32: refused, the user is told to use a register base
    (``mov eax, [0x10070]`` is the absolute moffs form and fine; ``[label]`` is absolute too);
  - in 32-bit code ``lgdt/lidt/sgdt/sidt`` get a 0x66 prefix (a 24-bit base): we drop it;
  - ``ljmp sel:off`` in 32-bit code is a 16-bit far jump: we encode ``EA off32 sel16`` ourselves;
  - ``iret`` is the 16-bit ``66 CF``; ``sysret`` is the 64-bit form: both rewritten to their usual
    meaning (``iret`` = ``CF``, ``sysret`` = ``0F 07``, ``sysretq`` = ``48 0F 07``);
  - a data directive whose value does not fit (``.word 0x10000``) emits nothing at all: refused;
  - ``[reg]``/``[label]`` is still fine, but a label starting with '.' inside ``[...]`` is an
    "invalid operand": such labels are renamed behind the user's back;
  - ``.align N, FILL`` puts its padding in the wrong place: refused (plain ``.align N`` pads
    code with NOPs, which is correct);
  - a shift inside parentheses, or of a label, in an instruction operand does not assemble: the
    error says so;
  - the SVM instructions are unknown to it: encoded as bytes here.

Source conventions (what the guests and the prelude rely on):

* ``#`` and ``;`` start a comment; one statement per line; labels are identifiers (``.Lx`` for
  local ones, numeric labels ``1:`` are not supported by keystone).
* ``.include "file"`` searches the including file's directory, then ``include_dirs`` (guests/);
  a file is included once, later ``.include`` of it are skipped.
* ``.macro name a, b=default`` ... ``.endm``; ``\\a`` is replaced by the argument, ``\\@`` by a
  number unique to each expansion, ``\\()`` by nothing.  ``.rept N`` ... ``.endr`` repeats.
* ``.code32`` / ``.code64`` switch the mode (the file starts in 64-bit mode).
* ``.bss`` / ``.text``: lines under ``.bss`` (labels, ``.space N``, ``.align N``, ``.equ``) are
  moved after all code and are not stored in the image; the loader zeroes them.  The assembler defines
  ``__image_start`` (the load address), ``__bss_start`` (end of the stored image) and
  ``__bss_end``, which the multiboot header in the prelude uses for its a.out-kludge fields.
"""
from __future__ import annotations

import ast
import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from emu.errors import AsmError
from emu.loader.gas.att import AttError, att_to_intel
from emu.loader.gas.cpp import preprocess, uses_cpp
from emu.loader.gas.intel import fold_constants, keystone_form, rewrite_operand
from emu.loader.gas.locallabels import LocalLabels
from emu.loader.gas.locallabels import is_internal as is_local_number
from emu.loader.gas.macroargs import split_macro_args
from emu.loader.gas.padding import code_padding

from emu.loader.gas.lexer import LexError, statements
from emu.loader.gas.link import IMAGE_BASE, SECTION_ORDER as _SECTION_ORDER

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"

_MAX_INCLUDE_DEPTH = 16
_MAX_MACRO_DEPTH = 100
_MAX_REPEAT = 1 << 16
_MAX_EXPANSION = 500_000   # lines after macros and .rept: ~100x the largest guest's
_MAX_FILL = 16 << 20  # a bigger .space/.fill makes keystone crawl; no guest needs one
_MAX_ALIGN = 1 << 21

_IDENT = r"[A-Za-z_.$][\w.$]*"
_LABEL_RE = re.compile(rf"\s*({_IDENT})\s*:(?!:)")
_NUM_RE = re.compile(r"(?<![\w.$])(0[xX][0-9A-Fa-f]+|0[bB][01]+|[0-9][0-9A-Fa-f]*[hH]|[0-9]+)(?![\w.$])")
_INTERNAL_PREFIX = "__svmemu_"

# Instructions keystone does not know or gets wrong, as bytes.  Operand lists are the implicit
# operands an assembler accepts (AMD writes "VMRUN rAX"), normalised to lower case, no spaces.
FIXED_BYTES: dict[str, tuple[tuple[str, ...], bytes]] = {
    "vmrun": (("", "rax", "eax"), b"\x0f\x01\xd8"),
    "vmmcall": (("",), b"\x0f\x01\xd9"),
    "vmload": (("", "rax", "eax"), b"\x0f\x01\xda"),
    "vmsave": (("", "rax", "eax"), b"\x0f\x01\xdb"),
    "stgi": (("",), b"\x0f\x01\xdc"),
    "clgi": (("",), b"\x0f\x01\xdd"),
    "skinit": (("", "eax"), b"\x0f\x01\xde"),
    "invlpga": (("", "rax,ecx", "eax,ecx"), b"\x0f\x01\xdf"),
    "iret": (("",), b"\xcf"),
    "iretd": (("",), b"\xcf"),
    "sysret": (("",), b"\x0f\x07"),
    "sysretl": (("",), b"\x0f\x07"),
    "sysretd": (("",), b"\x0f\x07"),
    "sysretq": (("",), b"\x48\x0f\x07"),
    "lretq": (("",), b"\x48\xcb"),
    "lret": (("",), b"\xcb"),
    # keystone adds an operand-size prefix (66 9C is a 16-bit PUSHF); GNU as writes the
    # default size for the mode
    "pushf": (("",), b"\x9c"),
    "popf": (("",), b"\x9d"),
}

_PREFIXES = {"lock", "rep", "repe", "repz", "repne", "repnz"}
# LGDT/LIDT/SGDT/SIDT (0F 01 /2 /3 /0 /1) and the FF-group instructions with the same /reg.
_DESCRIPTOR_TABLE_OPS = {"lgdt": "call dword ptr", "lidt": "lcall dword ptr", "sgdt": "inc dword ptr",
                         "sidt": "dec dword ptr"}

_IF_DIRECTIVES = {".if", ".ifdef", ".ifndef", ".ifb", ".ifnb", ".ifc", ".ifnc", ".ifeqs",
                  ".ifnes", ".ifeq", ".ifne", ".ifgt", ".ifge", ".iflt", ".ifle"}

_DATA_SIZES = {".byte": 1, ".word": 2, ".short": 2, ".2byte": 2, ".value": 2, ".long": 4,
               ".int": 4, ".4byte": 4, ".quad": 8, ".8byte": 8}
_ZERO_FILL = {".space", ".skip", ".zero", ".fill"}
_ALIGN = {".align", ".balign", ".p2align"}
_PASS_DIRECTIVES = (set(_DATA_SIZES) | _ZERO_FILL | _ALIGN
                    | {".ascii", ".asciz", ".string", ".equ", ".set", ".globl", ".global"})
_REFUSED_DIRECTIVES = {
    ".org": "keystone cannot assemble .org; use .space or .align",
    ".code16": "16-bit code is not supported",
}

_KS_MESSAGES = {
    "KS_ERR_ASM_MNEMONICFAIL": "unknown instruction or wrong operands for it",
    "KS_ERR_ASM_INVALIDOPERAND": "invalid operand",
    "KS_ERR_ASM_SYMBOL_REDEFINED": "symbol defined twice",
    "KS_ERR_ASM_DIRECTIVE_VALUE_RANGE": "value out of range",
    "KS_ERR_ASM_EXPR_TOKEN": "unexpected token in expression",
    "KS_ERR_ASM_FIXUP_INVALID": "target out of reach",
}


@dataclass(frozen=True)
class Origin:
    """Where a statement came from, for error messages: the line the user wrote, plus the
    macro definitions it went through (innermost last)."""

    path: str
    line: int
    via: tuple[str, ...] = ()

    def error(self, message: str) -> AsmError:
        if self.via:
            message = f"{message} (in {', '.join(self.via)})"
        return AsmError(self.path, self.line, message)


@dataclass
class _Stmt:
    text: str
    origin: Origin
    labels: list[str] = field(default_factory=list)
    body: str = ""
    mode: int = 64
    kind: str = "insn"  # insn | data | other | fixed
    shown: str = ""     # the statement as written (body is rewritten), for messages
    fixup: str = ""     # "strip66" for 32-bit descriptor-table instructions
    section: str = "text"
    align: int = 0      # for .align statements: the boundary
    globals: list[str] = field(default_factory=list)


@dataclass
class Assembly:
    """An assembled image, with what a debugger or tracer wants to know about it."""

    image: bytes
    base: int
    bss_end: int
    symbols: dict[str, int]
    lines: list[tuple[int, int, Origin]]  # (address, size, origin) per statement, in address order
    globals: list[str] = field(default_factory=list)
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [start, end)


@dataclass
class _Macro:
    name: str
    params: list[tuple[str, str | None]]
    body: list[tuple[str, Origin]]
    origin: Origin


# ---------------------------------------------------------------------------------------------
# Lexical helpers


def _source_lines(text: str, path: str, include_dirs: list[str]) -> list[tuple[str, Origin]]:
    """Statements with their origins, through the C preprocessor when the file uses it."""
    first = uses_cpp(path, text)
    if not first:
        return _lex(text, path)
    lines = preprocess(path, text, include_dirs, first)
    try:
        found = statements("\n".join(t for _, _, t in lines))
    except LexError as e:
        file, line, _ = lines[e.line - 1]
        raise AsmError(file, line, str(e)) from None
    return [(st, Origin(lines[n - 1][0], lines[n - 1][1])) for n, st in found]


def _lex(text: str, path: str) -> list[tuple[str, Origin]]:
    try:
        return [(st, Origin(path, n)) for n, st in statements(text)]
    except LexError as e:
        raise AsmError(path, e.line, str(e)) from None


def _split_args(text: str) -> list[str]:
    """Split on top-level commas (not inside brackets, parentheses or quotes)."""
    parts: list[str] = []
    depth = 0
    quote = ""
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur += c
            if c == "\\" and i + 1 < len(text):
                cur += text[i + 1]
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
            cur += c
        elif c in "[(":
            depth += 1
            cur += c
        elif c in "])":
            depth -= 1
            cur += c
        elif c == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur.strip())
    return parts


def _outside_strings(text: str) -> str:
    """The text with string/char literal contents blanked, for syntax checks on the rest."""
    return re.sub(r"\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])*'", lambda m: '""', text)


def _numeric(expr: str, consts: dict[str, int] | None = None) -> str | None:
    """The expression with constants and literals replaced by decimal numbers, or None when it
    needs labels (only keystone knows those)."""
    e = expr.strip()
    if consts:
        e = re.sub(rf"(?<![\w.$])({_IDENT})(?![\w.$])",
                   lambda m: f"({consts[m.group(1)]})" if m.group(1) in consts else m.group(1), e)
    if not e or not re.fullmatch(r"[\s0-9A-Fa-fxXbBhH+\-*/%()<>|&^~=!]*", e):
        return None
    e = _NUM_RE.sub(lambda m: str(_parse_num(m.group(1))), e).replace("/", "//")
    e = e.replace("<>", "!=")
    if re.search(r"(?<![<>=!])=(?!=)|!(?!=)", e):
        return None
    if re.search(r"[A-Za-z]", e):
        return None
    return e.replace("&&", " and ").replace("||", " or ")


def _eval_int(expr: str, consts: dict[str, int] | None = None) -> int | None:
    """Value of an expression made of integer literals, arithmetic and constants already
    defined by ``.equ``/``=`` with such values; None when it needs labels or cannot be
    computed (``**``, a shift by more than 128, a value wider than 128 bits)."""
    e = _numeric(expr, consts)
    if e is None:
        return None
    try:
        return _arith(ast.parse(e, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None

# Integer arithmetic as the assembler's expressions have it. Python's eval would also take
# ``**`` and shifts by millions, which hang or exhaust memory on one line of input.
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
           ast.Mod: lambda a, b: a % b, ast.LShift: lambda a, b: a << b,
           ast.RShift: lambda a, b: a >> b, ast.BitOr: lambda a, b: a | b,
           ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b}
_UNOPS = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a, ast.Invert: lambda a: ~a}
_CMPOPS = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
           ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
           ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b}
_MAX_BITS = 128        # wider than any operand; intermediate values beyond it are refused


def _arith(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        value = _UNOPS[type(node.op)](_arith(node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, (ast.LShift, ast.RShift)) and not 0 <= right <= _MAX_BITS:
            raise ValueError("shift count out of range")
        value = _BINOPS[type(node.op)](left, right)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        # GNU as: a true comparison is -1, a false one 0
        value = -int(_CMPOPS[type(node.ops[0])](_arith(node.left), _arith(node.comparators[0])))
    elif isinstance(node, ast.BoolOp):
        vals = [_arith(v) for v in node.values]
        value = -int(all(vals) if isinstance(node.op, ast.And) else any(vals))
    else:
        raise ValueError("not integer arithmetic")
    if value.bit_length() > _MAX_BITS:
        raise ValueError("value too wide")
    return value


def _parse_num(tok: str) -> int:
    t = tok.lower()
    if t.startswith("0x"):
        return int(t[2:], 16)
    if t.startswith("0b"):
        return int(t[2:], 2)
    if t.endswith("h"):
        return int(t[:-1], 16)
    return int(t, 10)


# ---------------------------------------------------------------------------------------------
# Pass 1: includes, macros, repeats -> a flat list of (text, origin)


class _Expander:
    def __init__(self, include_dirs: list[Path]) -> None:
        self.include_dirs = include_dirs
        self.macros: dict[str, _Macro] = {}
        self.counter = 0
        self.work = 0             # lines expanded so far, empty ones and .rept bodies included
        self.out: list[tuple[str, Origin]] = []
        self.included: set[Path] = set()
        self.stack: list[Path] = []
        self.consts: dict[str, int] = {}
        self.defined: set[str] = set()
        self.exiting = False      # .exitm seen: unwind to the macro's invocation

    def read_file(self, path: Path, display: str, origin: Origin | None, depth: int) -> None:
        """Include-once: a file already read is skipped, so library files can include what
        they need without guards; a file including itself (directly or not) is an error."""
        key = path.resolve()
        if key in self.stack:
            raise (origin or Origin(display, 0)).error(f"{display} includes itself")
        if key in self.included:
            return
        if depth > _MAX_INCLUDE_DEPTH:
            raise (origin or Origin(display, 0)).error("includes nested too deeply")
        try:
            raw = path.read_bytes()
        except OSError as e:
            if origin is None:
                raise AsmError(display, 0, f"cannot read file: {e.strerror or e}") from None
            raise origin.error(f"cannot read include file {display}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise AsmError(display, line, "not UTF-8 text") from None
        lines = _source_lines(text, display, [str(path.parent), *map(str, self.include_dirs)])
        self.included.add(key)
        self.stack.append(key)
        self.expand(lines, path.parent, depth, 0)
        self.stack.pop()

    def find_include(self, name: str, here: Path) -> Path | None:
        for d in [here, *self.include_dirs]:
            p = d / name
            if p.is_file():
                return p
        return None

    def expand(self, lines: list[tuple[str, Origin]], here: Path, depth: int, mdepth: int) -> None:
        i = 0
        while i < len(lines):
            text, origin = lines[i]
            i += 1
            self.work += 1
            if self.work > _MAX_EXPANSION:
                raise origin.error(f"macros and .rept expand to more than {_MAX_EXPANSION} lines "
                                   f"(a runaway expansion?)")
            stripped = text.strip()
            if not stripped:
                continue
            word = stripped.split(None, 1)[0].lower()
            rest = stripped[len(word):].strip()
            if word in _IF_DIRECTIVES:
                branches, i = self._collect_if(lines, i, origin, word, rest)
                for cond_word, cond_rest, cond_origin, body in branches:
                    if cond_word == ".else" or self._condition(cond_word, cond_rest, cond_origin):
                        self.expand(body, here, depth, mdepth)
                        break
                if self.exiting:
                    return
                continue
            if word in (".else", ".elseif", ".endif"):
                raise origin.error(f"{word} without .if")
            if word in (".err", ".error"):
                msg = rest.strip()
                if word == ".error":
                    m = re.fullmatch(r'"((?:\\.|[^"\\])*)"', msg)
                    msg = m.group(1) if m else msg
                raise origin.error(msg or ".err encountered")
            if word in (".warning", ".print"):
                continue
            if word == ".exitm":
                if mdepth == 0:
                    raise origin.error(".exitm outside a macro")
                self.exiting = True
                return
            if word in (".irp", ".irpc"):
                body, i = self._collect(lines, i, origin, word, ".endr", (".rept", ".irp", ".irpc"))
                self._irp(word, rest, body, origin, here, depth, mdepth)
                continue
            if word == ".incbin":
                self._incbin(rest, origin, here)
                continue
            self._track(stripped, origin)
            if word == ".include":
                m = re.fullmatch(r'"([^"]+)"', rest)
                if not m:
                    raise origin.error('.include needs a quoted file name: .include "file"')
                p = self.find_include(m.group(1), here)
                if p is None:
                    raise origin.error(f"include file not found: {m.group(1)}")
                self.read_file(p, str(p), origin, depth + 1)
            elif word == ".macro":
                body, i = self._collect(lines, i, origin, ".macro", ".endm")
                self._define(rest, body, origin)
            elif word in (".endm", ".endr"):
                raise origin.error(f"{word} without a matching opening directive")
            elif word == ".rept":
                body, i = self._collect(lines, i, origin, ".rept", ".endr", (".rept", ".irp", ".irpc"))
                n = _eval_int(rest)
                if n is None or not 0 <= n <= _MAX_REPEAT:
                    raise origin.error(f".rept count must be a number from 0 to {_MAX_REPEAT}")
                for _ in range(n):
                    self.work += 1          # an empty body repeated still costs a step
                    self.expand(body, here, depth, mdepth)
                    if self.exiting:
                        return
            else:
                label_end = 0
                while m := _LABEL_RE.match(stripped, label_end):
                    label_end = m.end()
                after = stripped[label_end:].strip()
                name = after.split(None, 1)[0] if after else ""
                if name in self.macros:
                    if label_end:
                        self.out.append((stripped[:label_end], origin))
                    self._invoke(self.macros[name], after[len(name):].strip(), origin, here,
                                 depth, mdepth)
                else:
                    self.out.append((stripped, origin))

    def _track(self, stripped: str, origin: Origin) -> None:
        """Constants and labels defined so far, which .if/.ifdef read as GNU as does: at the
        point of the directive, in one pass."""
        pos = 0
        while m := _LABEL_RE.match(stripped, pos):
            self.defined.add(m.group(1))
            pos = m.end()
        body = stripped[pos:].strip()
        m = (re.fullmatch(rf"(?i)\.(?:equ|set)\s+({_IDENT})\s*,\s*(.+)", body)
             or re.fullmatch(rf"({_IDENT})\s*=\s*(.+)", body))
        if m:
            self.defined.add(m.group(1))
            value = _eval_int(m.group(2), self.consts)
            if value is None:
                self.consts.pop(m.group(1), None)
            else:
                self.consts[m.group(1)] = value

    def _condition(self, word: str, rest: str, origin: Origin) -> bool:
        if word in (".ifdef", ".ifndef"):
            name = rest.strip()
            if not re.fullmatch(_IDENT, name):
                raise origin.error(f"{word} needs a symbol name")
            return (name in self.defined or name in self.macros) == (word == ".ifdef")
        if word in (".ifb", ".ifnb"):
            return (rest.strip() == "") == (word == ".ifb")
        if word in (".ifc", ".ifnc", ".ifeqs", ".ifnes"):
            parts = _split_args(rest)
            if len(parts) != 2:
                raise origin.error(f"{word} needs two strings separated by a comma")
            a, b = (p.strip() for p in parts)
            if word in (".ifeqs", ".ifnes"):
                a, b = a.strip('"'), b.strip('"')
            else:
                a, b = (x[1:-1] if len(x) >= 2 and x[0] == x[-1] == "'" else x for x in (a, b))
            return (a == b) == (word in (".ifc", ".ifeqs"))
        word = ".elseif" if word == ".elseif" else word
        value = _eval_int(rest, self.consts)
        if value is None:
            raise origin.error(f"{word if word != '.elseif' else '.elseif'}: the condition "
                               f"'{rest.strip()}' is not a constant here (GNU as evaluates it "
                               f"at this line, with what is defined above it)")
        test = {".if": value != 0, ".elseif": value != 0, ".ifne": value != 0,
                ".ifeq": value == 0, ".ifgt": value > 0, ".ifge": value >= 0,
                ".iflt": value < 0, ".ifle": value <= 0}
        return test[word]

    def _collect_if(self, lines: list[tuple[str, Origin]], i: int, origin: Origin, word: str,
                    rest: str) -> tuple[list[tuple[str, str, Origin, list[tuple[str, Origin]]]], int]:
        """The branches of an .if ... .elseif ... .else ... .endif block, each with its body."""
        branches = [(word, rest, origin, [])]
        level = 1
        while i < len(lines):
            text, o = lines[i]
            i += 1
            st = text.strip()
            w = st.split(None, 1)[0].lower() if st else ""
            if w in _IF_DIRECTIVES:
                level += 1
            elif w == ".endif":
                level -= 1
                if level == 0:
                    return branches, i
            elif level == 1 and w in (".else", ".elseif"):
                if branches[-1][0] == ".else":
                    raise o.error(f"{w} after .else")
                branches.append((w, st[len(w):].strip(), o, []))
                continue
            branches[-1][3].append((text, o))
        raise origin.error(f"{word} without .endif")

    def _irp(self, word: str, rest: str, body: list[tuple[str, Origin]], origin: Origin,
             here: Path, depth: int, mdepth: int) -> None:
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*(?:,\s*|\s+|$)(.*)", rest.strip())
        if not m:
            raise origin.error(f"{word} needs a parameter name")
        name, values_text = m.group(1), m.group(2)
        if word == ".irp":
            try:
                values = split_macro_args(values_text) if values_text.strip() else [""]
            except ValueError as e:
                raise origin.error(str(e)) from None
        else:
            values = list(values_text.strip()) or [""]
        for v in values:
            self.work += 1
            new = [(re.sub(rf"\\{name}(?!\w)", lambda _m: v, t).replace("\\()", ""), o)
                   for t, o in body]
            self.expand(new, here, depth, mdepth)
            if self.exiting:
                return

    def _incbin(self, rest: str, origin: Origin, here: Path) -> None:
        """The file's bytes as .byte statements (GNU as: .incbin "file"[, skip[, count]])."""
        args = _split_args(rest)
        m = re.fullmatch(r'"([^"]+)"', args[0]) if args else None
        if not m:
            raise origin.error('.incbin needs a quoted file name: .incbin "file"[, skip[, count]]')
        p = self.find_include(m.group(1), here)
        if p is None:
            raise origin.error(f".incbin file not found: {m.group(1)}")
        nums = [_eval_int(a, self.consts) for a in args[1:3]]
        if any(v is None or v < 0 for v in nums):
            raise origin.error(".incbin skip and count must be non-negative constants")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise origin.error(f"cannot read {m.group(1)}: {e.strerror or e}") from None
        skip = nums[0] if nums else 0
        if skip > len(data):
            raise origin.error(f".incbin skip {skip} is beyond the end of {m.group(1)}")
        data = data[skip: skip + nums[1]] if len(nums) > 1 else data[skip:]
        if len(data) > _MAX_FILL:
            raise origin.error(f".incbin of more than {_MAX_FILL:#x} bytes")
        for k in range(0, len(data), 64):
            self.out.append((".byte " + ",".join(str(b) for b in data[k:k + 64]), origin))

    def _collect(self, lines: list[tuple[str, Origin]], i: int, origin: Origin, opener: str,
                 closer: str, openers: tuple[str, ...] = ()) -> tuple[list[tuple[str, Origin]], int]:
        """Body lines up to the matching closer (nested openers of the same kind count)."""
        level = 1
        body = []
        openers = openers or (opener,)
        while i < len(lines):
            text, o = lines[i]
            i += 1
            w = text.strip().split(None, 1)[0].lower() if text.strip() else ""
            if w in openers:
                level += 1
            elif w == closer:
                level -= 1
                if level == 0:
                    return body, i
            body.append((text, o))
        raise origin.error(f"{opener} without {closer}")

    def _define(self, spec: str, body: list[tuple[str, Origin]], origin: Origin) -> None:
        m = re.match(rf"({_IDENT})\s*(.*)$", spec)
        if not m:
            raise origin.error(".macro needs a name")
        name, params_text = m.group(1), m.group(2).strip()
        params: list[tuple[str, str | None]] = []
        if params_text:
            for p in re.split(r"\s*,\s*|\s+(?=[A-Za-z_])", params_text):
                pm = re.fullmatch(r"([A-Za-z_]\w*)(?:\s*=\s*(.*))?", p.strip())
                if not pm:
                    raise origin.error(f"bad macro parameter '{p.strip()}'")
                params.append((pm.group(1), pm.group(2)))
        if name in self.macros:
            raise origin.error(f"macro '{name}' already defined at "
                               f"{self.macros[name].origin.path}:{self.macros[name].origin.line}")
        self.macros[name] = _Macro(name, params, body, origin)

    def _invoke(self, macro: _Macro, args_text: str, origin: Origin, here: Path, depth: int,
                mdepth: int) -> None:
        if mdepth >= _MAX_MACRO_DEPTH:
            raise origin.error(f"macro '{macro.name}' expands itself too deeply")
        try:
            args = split_macro_args(args_text) if args_text else []
        except ValueError as e:
            raise origin.error(str(e)) from None
        if len(args) > len(macro.params):
            raise origin.error(f"macro '{macro.name}' takes {len(macro.params)} arguments, "
                               f"got {len(args)}")
        values: dict[str, str] = {}
        for k, (pname, default) in enumerate(macro.params):
            v = args[k] if k < len(args) and args[k] != "" else default
            if v is None:
                raise origin.error(f"macro '{macro.name}': missing argument '{pname}'")
            values[pname] = v
        self.counter += 1
        unique = str(self.counter)

        def subst(m: re.Match[str]) -> str:
            key = m.group(1)
            if key == "@":
                return unique
            if key == "()":
                return ""
            return values.get(key, m.group(0))

        body = []
        for text, o in macro.body:
            new = re.sub(r"\\(@|\(\)|[A-Za-z_]\w*)", subst, text)
            # Errors point at the invocation the user wrote; the macro line is added as context.
            inner = Origin(origin.path, origin.line,
                           origin.via + (f"macro {macro.name} at {o.path}:{o.line}",))
            body.append((new, inner))
        self.expand(body, here, depth, mdepth + 1)
        self.exiting = False


# ---------------------------------------------------------------------------------------------
# Pass 2: classify, rewrite, guard


# Directives that carry information for an object file or a debugger, not bytes: accepted with
# GNU as's syntax, recorded where svmemu uses them (.globl for the ELF symbol table).
_META_DIRECTIVES = {".globl", ".global", ".extern", ".weak", ".type", ".size", ".file", ".loc",
                    ".ident", ".hidden", ".local", ".protected", ".internal", ".loc_mark_labels",
                    ".addrsig", ".addrsig_sym", ".end"}


def _section_of(name: str, origin: Origin) -> str:
    n = name.strip().strip('"')
    for prefix, section in ((".multiboot", "text"), (".text", "text"), (".rodata", "rodata"),
                            (".data", "data"), (".bss", "bss")):
        if n == prefix or n.startswith(prefix + ".") or (prefix == ".multiboot" and n.startswith(prefix)):
            return section
    if n.startswith(".note") or n.startswith(".comment") or n.startswith(".debug"):
        return "discard"
    raise origin.error(f"section {n}: the image has .text, .rodata, .data and .bss (and their "
                       f".NAME subsections, and .multiboot* placed first); other sections need a "
                       f"linker script: link with GNU ld")


def _split_labels(line: str) -> tuple[list[str], str]:
    """Leading labels (``name:`` and GNU as numeric labels ``1:``) and the statement after them."""
    pos = 0
    labels = []
    while True:
        m = _LABEL_RE.match(line, pos) or _NUM_LABEL_RE.match(line, pos)
        if not m:
            break
        labels.append(m.group(1))
        pos = m.end()
    return labels, line[pos:].strip()


_NUM_LABEL_RE = re.compile(r"\s*(\d+)\s*:(?!:)")


def _classify(exp: list[tuple[str, Origin]]) -> dict[str, list[_Stmt]]:
    """Sort statements into sections, tracking the mode and syntax, giving each its GNU as
    meaning, rewriting what keystone gets wrong and refusing what makes it hang or crash."""
    sections: dict[str, list[_Stmt]] = {k: [] for k in (*_SECTION_ORDER, "discard")}
    totals: dict[str, int] = {}
    for line, _origin in exp:
        for lab in _split_labels(line)[0]:
            if lab.isdigit():
                totals[str(int(lab))] = totals.get(str(int(lab)), 0) + 1
    local = LocalLabels(totals)
    mode = 64
    syntax = ""             # "" = not declared (Intel, svmemu's default), "intel", "att"
    current = "text"
    previous = "text"
    stack: list[str] = []
    seen: dict[str, Origin] = {}
    consts: dict[str, int] = {}
    for line, origin in exp:
        labels, body = _split_labels(line)
        for lab in labels:
            if lab.startswith(_INTERNAL_PREFIX) or lab in _LAYOUT_SYMBOLS:
                raise origin.error(f"label name '{lab}' is reserved by the assembler")
        labels = [local.define(lab) if lab.isdigit() else lab for lab in labels]
        for lab in labels:
            if lab in seen:
                o = seen[lab]
                raise origin.error(f"label '{lab}' already defined at {o.path}:{o.line}")
            seen[lab] = origin
        if body.startswith(":"):
            raise origin.error("label without a name")
        if body and not re.match(r"[A-Za-z_.]", body):
            # keystone 0.9.2 hangs on a statement that starts with any other character
            raise origin.error(f"a statement must start with an instruction, a directive or a "
                               f"label: {body}")
        shown = body
        if body:
            body, problem = local.rewrite(body)
            if problem:
                raise origin.error(problem)
        word = body.split(None, 1)[0].lower() if body else ""
        rest = body[len(word):].strip()
        st = _Stmt(line, origin, labels, body, mode, shown=shown, section=current)
        if word in (".code32", ".code64"):
            if rest:
                raise origin.error(f"{word} takes no operand")
            mode = 32 if word == ".code32" else 64
            st.kind = "other"
            sections[current].append(st)
            continue
        if word in (".intel_syntax", ".att_syntax"):
            if word == ".intel_syntax" and rest.lower() != "noprefix":
                raise origin.error(".intel_syntax: only 'noprefix' is supported (registers "
                                   "without %): .intel_syntax noprefix")
            if word == ".att_syntax" and rest.lower() not in ("", "prefix"):
                raise origin.error(".att_syntax: only the default 'prefix' form is supported")
            syntax = "intel" if word == ".intel_syntax" else "att"
            st.kind = "other"
            st.body = ""
            sections[current].append(st)
            continue
        if word in (".text", ".data", ".bss", ".section", ".previous", ".pushsection",
                    ".popsection"):
            if word == ".previous":
                target = previous
            elif word == ".popsection":
                if not stack:
                    raise origin.error(".popsection without .pushsection")
                target = stack.pop()
            elif word in (".section", ".pushsection"):
                if not rest:
                    raise origin.error(f"{word} needs a section name")
                target = _section_of(_split_args(rest)[0], origin)
                if word == ".pushsection":
                    stack.append(current)
            else:
                if rest and _eval_int(rest, consts) != 0:
                    raise origin.error(f"{word} {rest}: numbered subsections are not supported")
                target = word[1:]
            previous, current = current, target
            if labels:
                st.body = ""
                st.kind = "other"
                sections[previous].append(st)
            continue
        if word in _META_DIRECTIVES or word.startswith(".cfi_"):
            if word in (".globl", ".global", ".weak"):
                st.globals = [a.strip() for a in _split_args(rest) if a.strip()]
            st.body = ""
            st.kind = "other"
            sections[current].append(st)
            continue
        _guard_syntax(body, origin)
        assign = re.fullmatch(rf"({_IDENT})\s*=\s*(.+)", body)
        if word in (".equ", ".set"):
            assign = re.fullmatch(rf"({_IDENT})\s*,\s*(.+)", rest)
            if not assign:
                raise origin.error(f"{word} needs NAME, VALUE")
        if assign:
            value = _eval_int(assign.group(2), consts)
            if value is not None:
                consts[assign.group(1)] = value
            elif _numeric(assign.group(2), consts) is not None:
                # Only numbers, yet no value: keystone would make up one.
                raise origin.error(f"cannot compute {assign.group(2).strip()} (no '**' operator; "
                                   f"shifts and values are limited to {_MAX_BITS} bits)")
            else:
                consts.pop(assign.group(1), None)
            st.kind = "other"
        elif word.startswith("."):
            _check_directive(word, rest, origin, current == "bss", consts)
            st.kind = ("data" if word in _DATA_SIZES else "align" if word in _ALIGN
                       else "other")
            if word in _ALIGN:
                st.align = _alignment(word, rest, consts)
        elif word:
            if current == "bss":
                raise origin.error("instructions cannot go in .bss")
            if current == "discard":
                raise origin.error("instructions in a section the image does not hold")
            if syntax == "att" or (not syntax and _looks_att(rest)):
                if not syntax:
                    syntax = "att"
                try:
                    body = att_to_intel(body, mode)
                except AttError as e:
                    raise origin.error(f"{e}: {shown}") from None
                st.body = body
                word = body.split(None, 1)[0].lower()
                rest = body[len(word):].strip()
                _guard_syntax(body, origin)
            _rewrite_insn(st, word, rest, consts)
        else:
            st.kind = "other"
        sections[current].append(st)
    return sections


def _looks_att(operands: str) -> bool:
    """An instruction written in AT&T syntax (``%reg``, ``$imm``) before any syntax directive:
    GNU as's default syntax, so it is read as GNU as reads it."""
    return bool(re.search(r"(?<![\w.$])%[a-z]", operands.lower()) or
                re.match(r"\s*\$", operands))


def _alignment(word: str, rest: str, consts: dict[str, int]) -> int:
    n = _eval_int(_split_args(rest)[0], consts) or 0
    return 1 << n if word == ".p2align" else n


def _guard_syntax(body: str, origin: Origin) -> None:
    code = _outside_strings(body)
    bad = re.search(r"[^A-Za-z0-9_.$\s\[\]()+\-*/%<>|&^~,:=!\"']", code)
    if bad:
        # keystone 0.9.2 hangs on some stray characters (a backslash, for one); refuse them all
        hint = " (an unknown macro parameter?)" if bad.group(0) == "\\" else ""
        raise origin.error(f"unexpected character '{bad.group(0)}'{hint}: {body}")
    for o, c in ("[]", "()"):
        depth = 0
        for ch in code:
            depth += (ch == o) - (ch == c)
            if depth < 0:
                break
        if depth != 0:
            raise origin.error(f"unbalanced '{o}{c}'")
    for m in _NUM_RE.finditer(code):
        try:
            v = _parse_num(m.group(1))
        except ValueError:
            continue
        if v >= 1 << 64:
            raise origin.error(f"number {m.group(1)} does not fit in 64 bits")


def _check_directive(word: str, rest: str, origin: Origin, in_bss: bool,
                     consts: dict[str, int]) -> None:
    if word in _REFUSED_DIRECTIVES:
        raise origin.error(f"{word}: {_REFUSED_DIRECTIVES[word]}")
    if word not in _PASS_DIRECTIVES:
        raise origin.error(f"unsupported directive {word}")
    args = _split_args(rest) if rest else []
    if word in _DATA_SIZES and any(a == "" for a in args):
        raise origin.error(f"{word}: empty value in list")
    if word in _ALIGN:
        n = _eval_int(args[0], consts) if args else None
        if word == ".p2align":
            ok = n is not None and 0 <= n <= 21
        else:
            ok = n is not None and 0 < n <= _MAX_ALIGN and n & (n - 1) == 0
        if not ok:
            raise origin.error(f"{word} needs a constant power of two up to {_MAX_ALIGN:#x}"
                               if word != ".p2align" else ".p2align needs a constant 0..21")
        if len(args) > 1:
            raise origin.error(f"keystone 0.9.2 misplaces {word} padding given a fill value; "
                               f"write {word} {args[0]}")
    if word in _ZERO_FILL:
        n = _eval_int(args[0], consts) if args else None
        if n is None or not 0 <= n <= _MAX_FILL:
            raise origin.error(f"{word} needs a constant size from 0 to {_MAX_FILL:#x}")
        if word == ".fill" and len(args) > 1:
            size = _eval_int(args[1], consts)
            if size is None or size not in (1, 2, 4, 8):
                raise origin.error(".fill size must be 1, 2, 4 or 8")
    if in_bss and (word not in _ZERO_FILL | _ALIGN | {".equ", ".set", ".globl", ".global"}
                   or word in _ZERO_FILL and len(args) > 1):
        raise origin.error(f"{word} {rest} cannot go in .bss (only labels, .space N, .align N)")


def _rewrite_insn(st: _Stmt, word: str, rest: str, consts: dict[str, int]) -> None:
    ops = re.sub(r"\s+", "", rest.lower())
    if word in FIXED_BYTES:
        allowed, code = FIXED_BYTES[word]
        if ops not in allowed:
            raise st.origin.error(f"{word} takes no explicit operands other than "
                                  f"{' or '.join(a for a in allowed if a) or 'none'}")
        if word == "lretq" and st.mode == 32:
            raise st.origin.error("lretq does not exist in 32-bit code")
        st.body = ".byte " + ",".join(f"{b:#04x}" for b in code)
        st.kind = "fixed"
        return
    if word == "int" and _eval_int(rest, consts) == 3:
        # GNU as encodes "int 3" as INT3 (CC), not CD 03
        st.body = ".byte 0xcc"
        st.kind = "fixed"
        return
    if "[" not in rest and (word == "ljmp" or word == "jmp" and ":" in rest):
        m = re.fullmatch(r"\s*([^:,]+?)\s*[:,]\s*(.+?)\s*", rest)
        if not m:
            raise st.origin.error("far jump syntax: ljmp SELECTOR:TARGET")
        if st.mode == 64:
            raise st.origin.error("a direct far jump does not exist in 64-bit code; "
                                  "push the selector and target and use retfq")
        st.body = f".byte 0xea\n.long {m.group(2)}\n.word {m.group(1)}"
        st.kind = "fixed"
        return
    prefixes = ""
    while word in _PREFIXES and rest:
        prefixes += word + " "
        word = rest.split(None, 1)[0].lower()
        rest = rest[len(word):].strip()
    if rest:
        args = _split_args(rest)
        args = [rewrite_operand(a, word, st.mode, consts, _eval_int, len(args)) for a in args]
        args = keystone_form(word, args, st.mode, consts, _eval_int)
        args = [fold_constants(a, consts) for a in args]
        rest = ", ".join(args)
    st.body = f"{prefixes}{word} {rest}".strip()
    if st.mode == 32 and word in _DESCRIPTOR_TABLE_OPS and "[" in rest:
        # keystone gives these a 0x66 prefix in 32-bit code (a 24-bit base). The FF group
        # instruction with the same ModRM reg field has the same operand encoding: it is
        # assembled in their place and its opcode byte turned into 0F 01.
        operand = re.sub(r"(?i)^\s*\w+\s+ptr\s+", "", rest)
        st.body = f"{prefixes}.byte 0x0f\n{_DESCRIPTOR_TABLE_OPS[word]} {operand}"
        st.fixup = "ff_to_0f01"


# ---------------------------------------------------------------------------------------------
# Keystone


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """keystone's LLVM core prints its own diagnostics on fd 2; the user gets ours instead."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _ks_asm(source: str) -> bytes:
    """Assemble at IMAGE_BASE; raises keystone.KsError.

    Never with a symbol resolver: once any keystone instance in the process has had one,
    later assemblies lay out ``.align`` wrongly (measured on 0.9.2), so undefined symbols are
    diagnosed without it (_locate_error)."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    with _quiet_stderr():
        encoding, _ = ks.asm(source.encode("utf-8"), IMAGE_BASE)
    return bytes(encoding or [])


def _ks_message(err: Exception) -> str:
    text = str(err)
    for key, msg in _KS_MESSAGES.items():
        if key in text:
            return msg
    return text.split(" (KS_ERR")[0].strip().lower() or "does not assemble"


def _render(stmts: list[_Stmt], with_labels: bool) -> str:
    out = []
    for i, st in enumerate(stmts):
        if with_labels:
            out.append(f"{_INTERNAL_PREFIX}L{i}:")
        out.extend(f"{lab}:" for lab in st.labels)
        out.append(st.body)
    return "\n".join(out)


_REGISTER = re.compile(
    r"(?i)([re]?[abcd]x|[abcd][lh]|[re]?(si|di|sp|bp|ip)|[sd]il|[sb]pl|r\d+[dwb]?|[c-gs]s|"
    r"cr\d|dr\d|[xy]mm\d+|st|ptr|byte|word|dword|qword|fword|tbyte|xmmword|offset|rel|abs)")


_LAYOUT_SYMBOLS = ("__image_start", "__bss_start", "__bss_end")


def _try_prefix(stmts: list[_Stmt], n: int, defined: set[str], extra: tuple[str, ...] = ()
                ) -> Exception | None:
    """Assemble the first n statements, with every label the whole source defines later
    stubbed as a constant, so a forward reference is not mistaken for the error."""
    seen = {lab for st in stmts[:n] for lab in st.labels}
    # The layout symbols _assemble defines around the source are stubbed too, or every prefix
    # that reaches the multiboot header would fail for them and hide the real error.
    stubs = [f"{name} = {IMAGE_BASE:#x}" for name in
             sorted(((defined | set(_LAYOUT_SYMBOLS)) - seen) | set(extra))]
    try:
        _ks_asm(_render(stmts[:n], False) + "\n" + "\n".join(stubs))
    except Exception as e:  # noqa: BLE001 - any keystone failure marks the prefix bad
        return e
    return None


def _locate_error(stmts: list[_Stmt], err: Exception) -> AsmError:
    """keystone names no line: find the first statement whose prefix fails (bisection)."""
    if not stmts:
        return AsmError("<source>", 0, _ks_message(err))
    defined = {lab for st in stmts for lab in st.labels}
    consts: set[str] = set()
    for st in stmts:
        m = re.match(rf"(?:\.equ|\.set)\s+({_IDENT})|({_IDENT})\s*=", st.body)
        if m:
            consts.add(m.group(1) or m.group(2))
    lo, hi = 1, len(stmts)
    found: tuple[int, Exception] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        e = _try_prefix(stmts, mid, defined)
        if e is not None:
            found = (mid, e)
            hi = mid - 1
        else:
            lo = mid + 1
    if found is None:
        return stmts[-1].origin.error(_ks_message(err))
    n, e = found
    st = stmts[n - 1]
    if "SYMBOL_MISSING" in str(e):
        tokens = re.findall(rf"(?<![\w.$]){_IDENT}(?![\w.$])", _outside_strings(st.body))
        for tok in dict.fromkeys(tokens[1:] if st.kind == "insn" else tokens):
            if tok in defined or tok in consts or _REGISTER.fullmatch(tok):
                continue
            if _try_prefix(stmts, n, defined, (tok,)) is None:
                return st.origin.error(f"undefined symbol '{tok}'")
        return st.origin.error(f"undefined symbol in: {st.shown}")
    msg = _ks_message(e)
    if ">>" in st.body or "<<" in st.body:
        msg += (" (keystone 0.9.2 rejects a shift inside parentheses and any shift of a label "
                "in an instruction operand)")
    return st.origin.error(f"{msg}: {st.shown}")


def _check_statement(st: _Stmt, addr: int, data: bytes) -> None:
    """Catch keystone's silent mis-encodings, statement by statement."""
    if st.kind == "data":
        word = st.body.split(None, 1)[0].lower()
        rest = st.body[len(word):].strip()
        want = _DATA_SIZES[word] * (len(_split_args(rest)) if rest else 0)
        if len(data) != want:
            raise st.origin.error(f"{word}: a value does not fit in {_DATA_SIZES[word]} byte(s)")
        return
    if st.kind != "insn":
        return
    from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
    from capstone.x86 import X86_OP_MEM, X86_REG_INVALID, X86_REG_RIP

    cs = Cs(CS_ARCH_X86, CS_MODE_64 if st.mode == 64 else CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(data, addr))
    if not data or sum(i.size for i in insns) != len(data):
        raise st.origin.error(f"keystone produced no valid encoding for: {st.shown}")
    _check_push_immediate(st, insns)
    _check_immediates(st, insns)
    _check_system_registers(st)
    if st.mode != 64:
        return
    _check_rip_operand(st)
    for insn in insns:
        for op in insn.operands:
            if op.type != X86_OP_MEM:
                continue
            mem = op.mem
            if mem.base == X86_REG_RIP and "rip" not in st.body.lower():
                raise st.origin.error(
                    "keystone 0.9.2 encodes an absolute numeric address as RIP-relative in "
                    "64-bit code; load the address into a register and use it as the base "
                    f"(e.g. mov rbx, ADDR / [rbx]): {st.shown}")
            if (mem.base == X86_REG_INVALID and mem.index == X86_REG_INVALID and mem.disp < 0
                    and insn.bytes[0] not in (0xA0, 0xA1, 0xA2, 0xA3)):
                raise st.origin.error(
                    "this absolute address is at or above 2 GiB and would be sign-extended; "
                    f"load it into a register and use it as the base: {st.shown}")


_GPRS = frozenset(
    [f"r{n}{w}" for n in range(8, 16) for w in ("", "d", "w", "b")]
    + [f"{p}{r}" for p in ("r", "e", "") for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")]
    + ["al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "spl", "bpl", "rip", "eip"])


def _check_rip_operand(st: _Stmt) -> None:
    """RIP-relative addressing is ``[rip + disp]`` only (APM vol. 3, 1.7.5): keystone 0.9.2 drops
    any other register written beside RIP (``[rip+rax]`` becomes ``[rip]``), so it is refused."""
    for inner in re.findall(r"\[([^\]]*)\]", st.body.lower()):
        names = re.findall(r"[a-z_.$][\w.$]*", inner)
        if "rip" in names and sum(n in _GPRS for n in names) > 1:
            raise st.origin.error(f"RIP-relative addressing takes no other register: {st.shown}")


def _check_push_immediate(st: _Stmt, insns: list) -> None:
    """``push IMM`` whose value has no encoding: keystone silently emits a 16-bit push (66 68) of
    the low bits. A push of an immediate is sign-extended to the stack width (APM vol. 3, PUSH),
    so the value must fit in a signed 32-bit field (or be a 32-bit pattern in 32-bit code)."""
    words = st.body.split(None, 1)
    if words[0].lower() != "push" or len(words) < 2 or "word" in words[1].lower():
        return
    value = _eval_int(words[1])
    if value is None:
        return
    lo = -(1 << 31)
    hi = (1 << 31) if st.mode == 64 else (1 << 32)
    if not lo <= value < hi or any(i.bytes[0] == 0x66 for i in insns):
        raise st.origin.error(f"push: the immediate {words[1].strip()} does not fit in the "
                              f"sign-extended 32-bit field of PUSH: {st.shown}")


def _check_immediates(st: _Stmt, insns: list) -> None:
    """An immediate must fit the operand it is encoded for: keystone 0.9.2 keeps the low bits
    (``mov al, 256`` is ``B0 00``, ``mov eax, 0x100000000`` loads 0). A constant operand is
    compared with the immediate capstone decodes, modulo the operand size, and must lie in the
    signed or unsigned range of that size (GNU as: "value too large for field")."""
    from capstone.x86 import X86_OP_IMM
    words = st.body.split(None, 1)
    if len(words) < 2 or len(insns) != 1:
        return
    imms = [op for op in insns[0].operands if op.type == X86_OP_IMM]
    consts = [v for v in (_eval_int(a) for a in _split_args(words[1])) if v is not None]
    if len(imms) != 1 or len(consts) != 1:
        return
    bits = 8 * imms[0].size
    value, mask = consts[0], (1 << bits) - 1
    if not -(1 << (bits - 1)) <= value <= mask or (imms[0].imm & mask) != (value & mask):
        raise st.origin.error(f"the immediate {value:#x} does not fit the {bits}-bit operand: "
                              f"{st.shown}")


_NO_SUCH_REGISTER = re.compile(r"\b(?:cr(?:1|[5-79]|1[0-5])|dr(?:[89]|1[0-5]))\b", re.I)


def _check_system_registers(st: _Stmt) -> None:
    """CR1, CR5-CR7, CR9-CR15 and DR8-DR15 do not exist (APM vol. 2, 3.1 and 13.1): keystone
    encodes them with REX.R anyway, an instruction that raises #UD."""
    m = _NO_SUCH_REGISTER.search(st.body)
    if m:
        raise st.origin.error(f"there is no register {m.group(0)}: {st.shown}")


# ---------------------------------------------------------------------------------------------
# Public entry points


def assemble_text(source: str, path: str = "<string>", include_dirs: list[str] | None = None
                  ) -> Assembly:
    """Assemble source text as if read from ``path`` (includes resolve relative to its folder)."""
    dirs = [Path(d) for d in include_dirs] if include_dirs is not None else [GUESTS_DIR]
    exp = _Expander(dirs)
    lines = _source_lines(source, path, [str(Path(path).parent), *map(str, dirs)])
    exp.expand(lines, Path(path).parent, 0, 0)
    return _assemble(exp.out)


def assemble(path: str, include_dirs: list[str] | None = None) -> Assembly:
    """Assemble a source file into an image plus symbols and a line table."""
    dirs = [Path(d) for d in include_dirs] if include_dirs is not None else [GUESTS_DIR]
    exp = _Expander(dirs)
    exp.read_file(Path(path), path, None, 0)
    return _assemble(exp.out)


def assemble_source(path: str) -> bytes:
    """The flat multiboot image (a.out kludge, loaded at 1 MiB) that QEMU and svmemu boot."""
    return assemble(path).image


def _rename_dot_labels(stmts: list[_Stmt]) -> dict[str, str]:
    """keystone 0.9.2 rejects a label starting with '.' inside [...] ("invalid operand"), so
    every such label is renamed, in definitions and uses (outside strings)."""
    names = {lab for st in stmts for lab in st.labels if lab.startswith(".")}
    if not names:
        return {}
    rename = {n: f"{_INTERNAL_PREFIX}dot_{n[1:]}" for n in names}
    token = re.compile(r"(?<![\w.$])\.[A-Za-z_$][\w.$]*")
    literal = re.compile(r"\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])*'")
    for st in stmts:
        st.labels = [rename.get(lab, lab) for lab in st.labels]
        if "." in st.body:
            parts = []
            pos = 0
            for m in literal.finditer(st.body):
                parts.append(token.sub(lambda t: rename.get(t.group(0), t.group(0)),
                                       st.body[pos:m.start()]))
                parts.append(m.group(0))
                pos = m.end()
            parts.append(token.sub(lambda t: rename.get(t.group(0), t.group(0)), st.body[pos:]))
            st.body = "".join(parts)
    return {v: k for k, v in rename.items()}


def _assemble(exp: list[tuple[str, Origin]]) -> Assembly:
    sections = _classify(exp)
    marker = Origin("<assembler>", 0)
    stmts: list[_Stmt] = []
    starts: dict[str, int] = {}
    for name in _SECTION_ORDER:
        part = sections[name]
        boundary = max([st.align for st in part if st.kind == "align"] + [1])
        if name == "bss":
            stmts.append(_Stmt("", marker, ["__bss_start"], kind="other", section=name))
        if boundary > 1 and stmts:
            # the linker aligns each section to its largest .align and fills the gap with zeros
            stmts.append(_Stmt("", marker, [], body=f".align {boundary}", kind="align",
                               section="gap", align=boundary))
        starts[name] = len(stmts)
        stmts.extend(part)
    stmts.append(_Stmt("", marker, ["__bss_end"], kind="other", section="bss"))
    original = _rename_dot_labels(stmts)
    # In case the bss ends in 32-bit mode, the table's .quad are mode independent.
    source = (f"__image_start = {IMAGE_BASE:#x}\n" + _render(stmts, True) + "\n"
              + f"{_INTERNAL_PREFIX}end:\n"
              + "\n".join(f".quad {_INTERNAL_PREFIX}L{i}" for i in range(len(stmts)))
              + f"\n.quad {_INTERNAL_PREFIX}end\n")
    try:
        out = _ks_asm(source)
    except Exception as e:  # noqa: BLE001 - keystone raises KsError; all become AsmError
        raise _locate_error(stmts, e) from None
    n = len(stmts) + 1
    if len(out) < 8 * n:
        raise AsmError("<assembler>", 0, "internal error: line table missing from output")
    addrs = [int.from_bytes(out[len(out) - 8 * n + 8 * k: len(out) - 8 * n + 8 * k + 8], "little")
             for k in range(n)]
    body = bytearray(out[: len(out) - 8 * n])
    if len(body) != addrs[-1] - IMAGE_BASE or any(
            not IMAGE_BASE <= a <= addrs[-1] for a in addrs):
        raise AsmError("<assembler>", 0, "internal error: inconsistent line table")
    symbols: dict[str, int] = {}
    globals_: list[str] = []
    line_table: list[tuple[int, int, Origin]] = []
    for k, st in enumerate(stmts):
        start, end = addrs[k], addrs[k + 1]
        chunk = bytes(body[start - IMAGE_BASE: end - IMAGE_BASE])
        for lab in st.labels:
            if not is_local_number(lab):
                symbols[original.get(lab, lab)] = start
        globals_.extend(st.globals)
        if st.kind == "align":
            chunk = code_padding(len(chunk)) if st.section == "text" else bytes(len(chunk))
            body[start - IMAGE_BASE: end - IMAGE_BASE] = chunk
        if st.fixup == "ff_to_0f01":
            if chunk[:2] != b"\x0f\xff":
                raise st.origin.error(f"internal error: unexpected encoding of {st.shown}")
            chunk = b"\x0f\x01" + chunk[2:]
            body[start - IMAGE_BASE: end - IMAGE_BASE] = chunk
        if st.origin.path != "<assembler>":
            _check_statement(st, start, chunk)
            if end > start:
                line_table.append((start, end - start, st.origin))
    bss_start = symbols["__bss_start"] if "__bss_start" in symbols else addrs[starts["bss"]]
    bss_end = addrs[len(stmts) - 1]
    section_ranges = {}
    bounds = [starts[name] for name in _SECTION_ORDER] + [len(stmts) - 1]
    for i, name in enumerate(_SECTION_ORDER):
        section_ranges[name] = (addrs[bounds[i]], addrs[bounds[i + 1]])
    symbols.update(__image_start=IMAGE_BASE, __bss_start=bss_start, __bss_end=bss_end)
    return Assembly(bytes(body[: bss_start - IMAGE_BASE]), IMAGE_BASE, bss_end, symbols, line_table,
                    sorted(set(g for g in globals_ if g in symbols)), section_ranges)
