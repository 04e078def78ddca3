"""The one place that reaches past the unicorn 2.1.4 Python binding's public API.

The binding's `Uc` object keeps the engine handle in `_uch`, its Python hooks in `_callbacks` and
the exception a hook raised in `_hook_exception`, and the loaded libunicorn as the module global
`uclib`. svmemu needs all four: the world switch calls libunicorn's C functions directly (each
binding method costs several Python calls), the replay engine installs a C hook, and the run loop
must know whether a tool added hooks of its own. Everything else in svmemu calls these functions,
so a different binding breaks here, in one file, instead of in eight.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable

import unicorn.unicorn_const as _uc_const
from unicorn import Uc
from unicorn.unicorn_py3 import unicorn as _py3

LIB = _py3.uclib
"""libunicorn as the binding loaded it (ctypes.CDLL)."""

LIB.uc_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_size_t]
LIB.uc_vmem_read.restype = ctypes.c_int
LIB.uc_vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                  ctypes.POINTER(ctypes.c_uint64)]
LIB.uc_vmem_translate.restype = ctypes.c_int

TLB_FLUSH_CONTROL = (_uc_const.UC_CTL_IO_WRITE << 30) | _uc_const.UC_CTL_TLB_FLUSH
"""uc_ctl's control word for UC_CTL_TLB_FLUSH (the binding has no wrapper for it)."""

HOOK_MEM_ACCESS_CFUNC = _py3.HOOK_MEM_ACCESS_CFUNC
"""The ctypes callback type of a memory-access hook."""


def library_path() -> str | None:
    """The file the binding loaded libunicorn from."""
    return getattr(LIB, "_name", None)


def handle(uc: Uc) -> ctypes.c_void_p:
    """The uc_engine pointer, for direct libunicorn calls."""
    return uc._uch


def handle_address(uc: Uc) -> int:
    """The address of the engine's uc_struct."""
    return uc._uch.value


def c_function(name: str) -> int:
    """The address of libunicorn's exported function `name` (for C code that calls it)."""
    return ctypes.cast(getattr(LIB, name), ctypes.c_void_p).value


def context_calls(uc: Uc, context: Any) -> tuple[Callable[[], int], Callable[[], int]]:
    """(save, restore) of one `UcContext` as bare C calls: the binding's context_update/restore
    wrap the same two calls with one Python call more each, and a world switch makes several."""
    uch, blob, lib = uc._uch, context.context, LIB
    return (lambda: lib.uc_context_save(uch, blob)), (lambda: lib.uc_context_restore(uch, blob))


def context_address(context: Any) -> int:
    """The address of a `UcContext`'s C struct uc_context."""
    return context.context.value


def flush_tlb(uc: Uc) -> None:
    """Drop every cached translation.

    Needed whenever CR3, paging mode or nested paging change behind Unicorn's back (world
    switches, INVLPGA, context restores): the softmmu TLB is not tagged by address space."""
    LIB.uc_ctl(uc._uch, TLB_FLUSH_CONTROL)


def vmem_read(uc: Uc, va: int, size: int, prot: int) -> bytes | None:
    """Read through the CPU's current paging (debug walk: no faults, no A/D updates); None if
    any byte is unmapped."""
    buf = ctypes.create_string_buffer(size)
    if LIB.uc_vmem_read(uc._uch, va & 0xFFFFFFFFFFFFFFFF, prot, buf, size) != 0:
        return None
    return buf.raw


def vmem_translate(uc: Uc, va: int, prot: int) -> int | None:
    """VA -> PA through the current paging by Unicorn's side-effect-free walk; None if unmapped."""
    out = ctypes.c_uint64()
    if LIB.uc_vmem_translate(uc._uch, va, prot, ctypes.byref(out)) != 0:
        return None
    return out.value


def hook_count(uc: Uc) -> int:
    """How many Python hooks the binding holds (the run loop notices a tool adding one)."""
    return len(uc._callbacks)


def add_hook_raw(uc: Uc, hook_type: int, callback: int, user_data: int,
                 begin: int = 1, end: int = 0) -> int:
    """uc_hook_add with a C function address as the callback; returns the hook handle."""
    hook = ctypes.c_size_t()
    err = LIB.uc_hook_add(uc._uch, ctypes.byref(hook), hook_type, ctypes.c_void_p(callback),
                          ctypes.c_void_p(user_data), ctypes.c_uint64(begin),
                          ctypes.c_uint64(end))
    if err:
        raise RuntimeError(f"uc_hook_add failed: {err}")
    return hook.value


def add_insn_hook_raw(uc: Uc, callback: int, user_data: int, insn: int) -> int:
    """uc_hook_add(UC_HOOK_INSN) for instruction `insn` with a C function address as the
    callback; returns the hook handle."""
    hook = ctypes.c_size_t()
    err = LIB.uc_hook_add(uc._uch, ctypes.byref(hook), _uc_const.UC_HOOK_INSN, ctypes.c_void_p(callback),
                          ctypes.c_void_p(user_data), ctypes.c_uint64(1), ctypes.c_uint64(0),
                          ctypes.c_int(insn))
    if err:
        raise RuntimeError(f"uc_hook_add failed: {err}")
    return hook.value


def add_mem_hook_cfunc(uc: Uc, hook_type: int, callback: Any) -> int:
    """Add a memory hook whose callback is already a HOOK_MEM_ACCESS_CFUNC. The binding's
    `hook_add` refuses UC_HOOK_MEM_READ_AFTER; its internal adder does not."""
    return uc._Uc__do_hook_add(hook_type, callback, 1, 0)


def del_hook_raw(uc: Uc, hook: int) -> None:
    """uc_hook_del for a handle the binding did not create (so has no record of)."""
    LIB.uc_hook_del(uc._uch, ctypes.c_size_t(hook))


def stop_with_exception(uc: Uc, exc: BaseException) -> None:
    """From a raw C callback: stop emulation so that emu_start re-raises `exc`, as it does for
    an exception in one of the binding's own hooks."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()


class RegBatch:
    """A fixed set of registers read or written in one C call with prebuilt ctypes arrays.

    The binding's reg_read_batch costs ~1.5 us per register in Python overhead (measured 9 us
    for six); this costs ~0.5 us for the batch, which matters on the world-switch path."""

    def __init__(self, uc: Uc, regs: list[int]) -> None:
        self._uclib = LIB
        self._uch = uc._uch
        n = self.n = len(regs)
        self._ids = (ctypes.c_int * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
        # The value array moves through one Struct call: item by item through ctypes costs
        # ~0.2 us per register, and the world switch moves two batches each way.
        self._packed = struct.Struct(f"<{n}Q")
        self._read_args = self._write_args = (self._uch, self._ids, self._ptrs, n)

    def read(self) -> tuple[int, ...]:
        self._uclib.uc_reg_read_batch(*self._read_args)
        return self._packed.unpack_from(self._vals)

    def write(self, *values: int) -> None:
        """Write all n registers (values in the order given at construction)."""
        try:
            self._packed.pack_into(self._vals, 0, *values)
        except struct.error:      # negative or wider than 64 bits: as the register holds it
            self._packed.pack_into(self._vals, 0, *[v & 0xFFFFFFFFFFFFFFFF for v in values])
        self._uclib.uc_reg_write_batch(*self._write_args)
