"""Chooses the Unicorn library before the binding loads it: the binding (unicorn==2.1.4, stock)
loads `libunicorn.so.2` from $LIBUNICORN_PATH first, so pointing that at build.py's cached
library is all it takes. emu/__init__.py calls select() before any module imports unicorn.

$SVMEMU_ENGINE picks: `auto` (default: ours when built, else the stock wheel's library, said
once on stderr), `patched` (ours or an ImportError: CI uses it so a broken build cannot pass
unnoticed), `stock` (the wheel's library, e.g. to compare). A $LIBUNICORN_PATH the user set to
another folder is left alone and reported as a custom engine, assumed to have no fixes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import binding_import, build

ENV = "SVMEMU_ENGINE"
MODES = ("auto", "patched", "stock")
# What our patch set fixes; code that works around the stock engine asks has_fix().
FIXES = frozenset({"code-page-tracking", "inline-exit-request", "nested-walk-nx",
                   "insn-counter", "pushf-rf-smsw", "cross-engine-code", "pause-hint",
                   "cr0-wp-no-flush", "tlb-grows-under-pressure", "sse-aligned-moves",
                   "movbe-register-ud", "iret-null-keeps-base", "noncanonical-branch",
                   "null-ss-rpl", "supervisor-pkeys", "umip", "deadline-callback",
                   "sse-m128-alignment", "null-fs-gs-keeps-base", "far-stack-at-cpl"})


class Engine:
    __slots__ = ("kind", "library", "note")

    def __init__(self, kind: str, library: str | None, note: str = "") -> None:
        self.kind = kind                # "patched", "stock" or "custom"
        self.library = library          # folder given to the binding; None: the wheel's own
        self.note = note                # why this one (shown by --version)

    def describe(self) -> str:
        if self.kind == "patched":
            return (f"unicorn {build.UNICORN_VERSION} + svmemu patch set {build.patchset_id()} "
                    f"({self.library})")
        if self.kind == "custom":
            return f"custom unicorn from LIBUNICORN_PATH={self.library} (no svmemu fixes assumed)"
        return f"stock unicorn {build.UNICORN_VERSION} wheel" + (f" ({self.note})" if self.note else "")


_selected: Engine | None = None


def select() -> Engine:
    """Decides once per process and sets LIBUNICORN_PATH accordingly."""
    global _selected
    if _selected is not None:
        return _selected
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        print(f"svmemu: warning: {ENV}={mode!r} is not one of {', '.join(MODES)}; using auto",
              file=sys.stderr)
        mode = "auto"
    lib = build.built_library()
    ours = str(lib.parent) if lib else None
    user = os.environ.get("LIBUNICORN_PATH")
    if "unicorn" in sys.modules:
        # Imported before us (a script importing unicorn first): too late to choose; report it.
        _selected = _classify_loaded(ours)
    elif mode == "stock":
        os.environ.pop("LIBUNICORN_PATH", None)
        _selected = Engine("stock", None, f"{ENV}=stock")
    elif user and user != ours:
        _selected = Engine("custom", user)
    elif ours:
        os.environ["LIBUNICORN_PATH"] = ours
        _selected = Engine("patched", ours)
    elif mode == "patched":
        raise ImportError(f"{ENV}=patched but svmemu's engine is not built "
                          f"({build.engine_dir()}): run python -m emu.engine.unicorn_build")
    else:
        _selected = Engine("stock", None, "the patched engine is not built")
    binding_import.install()
    return _selected


_told = False


def tell_if_stock() -> None:
    """Says once per process, on stderr, that svmemu runs on the stock engine and what that
    costs. Called where a machine is made, not at import, so that tools that only import emu
    (the engine's own build command) stay quiet."""
    global _told
    eng = select()
    if _told or eng.kind != "stock":
        return
    _told = True
    print(f"svmemu: running on the {eng.describe()}: guest stores and block entries are "
          "slower, NX nested mappings of guest page tables are refused, and UMIP and PKS are not "
          "advertised (build the engine: "
          "python -m emu.engine.unicorn_build)", file=sys.stderr)


def _classify_loaded(ours: str | None) -> Engine:
    name = _loaded_library_path()
    if ours and name and Path(name).parent == Path(ours):
        return Engine("patched", ours)
    return Engine("stock", None, "unicorn was imported before svmemu chose its engine")


def _loaded_library_path() -> str | None:
    from emu.engine import binding      # imports unicorn: only once the engine is chosen
    return binding.library_path()


def current() -> Engine:
    """The engine this process runs on, checked against the library the binding loaded."""
    eng = select()
    name = _loaded_library_path()      # imports unicorn if nobody has yet
    if eng.kind == "patched" and (not name or Path(name).parent != Path(eng.library or "")):
        return Engine("stock", None, f"the binding loaded {name}")
    return eng


def has_fix(name: str) -> bool:
    """Whether the running engine carries the named fix (FIXES); False on stock or custom."""
    assert name in FIXES, name
    return select().kind == "patched"
