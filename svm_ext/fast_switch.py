"""World switches recorded as replay programs (emu/engine/replay.py), so that repeated ones run in C.

A hypervisor's run loop performs the same two switches over and over: L2 exits for the same
reason at the same RIP, L1 handles it and re-enters with a vmcb12 that differs only in the
volatile fields. After the Python path handles such a VMRUN or reflected #VMEXIT, this module
records what it did as a program for the C engine:

- guards on everything the Python path read: the CPU context regions a world switch loads
  (switch_cache.REGIONS), vmcb12's non-volatile bytes, the exit's own inputs (error code, RIP,
  ECX and the MSRPM byte for an MSR exit, the intercepted instruction's bytes and every paging
  entry their translation went through, for NRIP), L1's saved host state, and the *Python-side*
  state: an id (the engine's `state` word) of everything the handler reads or writes outside the
  CPU (GIF, the PAT model's registers, TSC_OFFSET, ...), which the machine clears whenever Python
  runs and this module sets only at the end of a world switch it handled;
- effects: the bytes the Python path produced for the non-volatile part (recorded from its
  result), the volatile fields moved one by one (RIP, RSP, RAX, CR2 and, through Unicorn's
  register API, RFLAGS, DR6, DR7), L1's host state kept in a buffer, a context restore and a TLB
  flush, exactly as vmrun.py and vmexit.py do them.

Recording double-checks itself: if the Python path changed any byte of the CPU context or of
vmcb12 outside the spans a program replays, no program is recorded (that switch stays in Python).
The Python-side state the C path leaves behind is brought up to date (`sync`) the moment Python
next runs, before anything looks at it: the fields recorded with the program's state id, plus the
volatile ones the program kept in buffers (L1's context and RFLAGS, the vmcb12 VMRUN read).

The result is the Python path's by construction; tests/test_fast_switch.py runs every nested
guest with and without the engine and compares everything guest-visible.
"""
from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Callable

from unicorn.x86_const import UC_X86_REG_DR7, UC_X86_REG_RFLAGS

from emu.arch.bits import RFLAGS_RF, RFLAGS_TF
from emu.engine import hostvm
from emu.engine.breakpoints import DR7_ENABLES
from emu.arch.vmcb import VMEXIT_MSR, VMEXIT_VMRUN
from emu.engine.hw_switch import (OFF_CR2, OFF_DR, OFF_EFLAGS, OFF_EIP, OFF_ERROR_CODE, OFF_HFLAGS, OFF_VM_VMCB,
                           OFF_RAX, OFF_RCX, OFF_RSP, OFF_V_TPR)
from emu.core.msr import MSR_PAT
from emu.engine.replay import Engine, Program

from .switch_cache import REGIONS, VMCB_RANGES, VOLATILE_BY_REGISTER, VOLATILE_IN_CONTEXT
from emu.arch.vmcb import CACHE_STRUCT, MSRPM_SIZE, OFFSETS, VMCB_SIZE, read_cache
from .vmexit import HOST_DR7

if TYPE_CHECKING:
    from .vcpu import Vcpu

_EFLAGS_VM = 1 << 17
_OFF_DR7 = OFF_DR + 7 * 8
# A VMRUN is replayed only with TF and RF clear in L1's RFLAGS: single-stepping it owes L1 a #DB
# after the #VMEXIT (vmexit.py), which only the Python path raises.
_VMRUN_EFLAGS = _EFLAGS_VM | RFLAGS_TF | RFLAGS_RF
_DR_SPAN = (OFF_DR, 8 * 8)
# Context bytes besides REGIONS that the VMRUN / #VMEXIT programs write: the moved registers, and
# what Unicorn's register writes of RFLAGS (flags and their lazy parts up to hflags) and DR6/DR7
# touch.
_MOVED = ((OFF_EIP, 8), (OFF_RAX, 8), (OFF_RSP, 8), (OFF_EFLAGS, OFF_HFLAGS - OFF_EFLAGS), _DR_SPAN)
_ENTER_WRITES = REGIONS + ((OFF_V_TPR, 1),) + _MOVED + ((OFF_CR2, 8),)
_EXIT_WRITES = REGIONS + _MOVED
# vmcb12 fields a #VMEXIT writes: the save-area fields store_guest encodes, the exit fields,
# V_IRQ/V_TPR and the interrupt shadow, g_pat (PAT models). The volatile ones go from the CPU.
_EXIT_FIELDS = (("es", 64), ("gdtr", 16), ("idtr", 16), ("cpl", 1), ("efer", 8), ("cr4", 24),
                ("exitcode", 32), ("eventinj", 8), ("nrip", 8), ("vintr", 16), ("g_pat", 8))
_Q = struct.Struct("<Q")
# Slots in the engine buffer this module owns.
_SLOT_L1_RFLAGS, _SLOT_VMRUNS, _SLOT_VMEXITS, _SLOT_HOST_DR7 = range(4)
_FIRST_CODE_SLOT = 4          # then one counter per exit code a program was recorded for
_CODE_SLOTS = 64
MAX_STATES = 4096
_RECORDINGS_PER_KEY = 2


def _spans_differ_outside(a: bytes, b: bytes, allowed: tuple[tuple[int, int], ...]) -> bool:
    """Whether a and b differ anywhere outside the allowed (offset, length) spans."""
    if len(a) != len(b):
        return True
    ma, mb = bytearray(a), bytearray(b)
    for off, n in allowed:
        ma[off:off + n] = mb[off:off + n] = bytes(n)
    return ma != mb


def _guarded_digest(before: "Pending") -> int:
    """A hash of the vmcb12 bytes and L1 context regions a VMRUN program guards."""
    v12, blob = before.vmcb12, before.blob
    return hash(b"".join([v12[lo:hi] for lo, hi in VMCB_RANGES]
                         + [blob[off:off + n] for off, n in REGIONS]))


class Pending:
    """What a world switch handled in Python looked like before it ran."""

    __slots__ = ("state_id", "blob", "vmcb12_pa", "vmcb12")

    def __init__(self, state_id: int, blob: bytes, vmcb12_pa: int, vmcb12: bytes) -> None:
        self.state_id = state_id
        self.blob = blob
        self.vmcb12_pa = vmcb12_pa
        self.vmcb12 = vmcb12


class FastSwitch:
    def __init__(self, ext: "Vcpu", engine: Engine) -> None:
        self.ext, self.engine = ext, engine
        m = ext.machine
        self.blob_size = len(m.ctx.view)
        self.l1_host, self.l1_host_addr = engine.buffer(self.blob_size)
        self.vmcb12_copy, self.vmcb12_copy_addr = engine.buffer(CACHE_STRUCT.size)
        self.slots, self.slots_addr = engine.buffer(8 * (_FIRST_CODE_SLOT + _CODE_SLOTS))
        self._code_slot: dict[int, int] = {}       # exit code -> its counter's slot
        self._code_counted: dict[int, int] = {}    # exit code -> replays already in the stats
        _Q.pack_into(self.slots, 8 * _SLOT_HOST_DR7, HOST_DR7)
        self._ids: dict[tuple, int] = {}
        self._states: dict[int, tuple] = {}
        self._counted = (0, 0)
        self._seen: set[tuple] = set()     # switches met once: recorded when met again
        self._recorded: dict[tuple, int] = {}   # switches recorded: how many times
        self._key_of: tuple = (None, b"")   # (vmcb12 cache, its non-volatile bytes)
        # C paths that keep facts per state id (fast_l2_msr.py): told when an id is made,
        # from the nested state as it is then (state_made), and when all are dropped.
        self.state_listeners: list = []
        m.replay_listeners.append(self.sync)

    def _slot(self, n: int) -> int:
        return self.slots_addr + 8 * n

    # ---- the Python-side state a program's id stands for -------------------------------------
    def _python_state(self) -> tuple:
        ext = self.ext
        st, pat, c = ext.state, ext.pat, ext.state.vmcb12
        if c is not self._key_of[0]:          # a new vmcb12 cache only at VMRUN
            self._key_of = (c, b"".join(c.to_bytes()[lo:hi] for lo, hi in VMCB_RANGES)
                            if c is not None else b"")
        key = self._key_of[1]
        return (st.gif, st.vm_cr, st.hsave_pa, st.in_l2, st.vmcb12_pa, key, st.l1_next_rip,
                st.v_irq, st.v_tpr, pat.gpat, pat.gpat_valid, pat.parked_hpat,
                ext.machine.msrs.values[MSR_PAT], ext.machine.tsc_offset, st.pause_count,
                st.pause_recent, st.vnmi, st.v_nmi, st.v_nmi_mask, st.lbrv,
                ext.machine.tsc_ratio)

    def _apply(self, s: tuple) -> None:
        ext = self.ext
        st, pat = ext.state, ext.pat
        (st.gif, st.vm_cr, st.hsave_pa, st.in_l2, st.vmcb12_pa, _, st.l1_next_rip, st.v_irq,
         st.v_tpr, pat.gpat, pat.gpat_valid, pat.parked_hpat, ext.machine.msrs.values[MSR_PAT],
         ext.machine.tsc_offset, st.pause_count, st.pause_recent, st.vnmi, st.v_nmi,
         st.v_nmi_mask, st.lbrv, ext.machine.tsc_ratio) = s

    def _second_time(self, key: tuple) -> bool:
        """Recording costs ~100 us: spend it on switches that repeat, not on every first one."""
        if key in self._seen:
            return True
        if len(self._seen) >= MAX_STATES:
            self._seen.clear()
        self._seen.add(key)
        return False

    def _state_id(self) -> int:
        s = self._python_state()
        sid = self._ids.get(s)
        if sid is None:
            if len(self._ids) >= MAX_STATES:      # a guest that never repeats: start afresh
                self._ids.clear()
                self._states.clear()
                self._recorded.clear()
                self.engine.clear()
                for listener in self.state_listeners:
                    listener.states_forgotten()
            sid = self._ids[s] = len(self._ids) + 1
            self._states[sid] = s
            for listener in self.state_listeners:
                listener.state_made(sid)
        return sid

    def sync(self) -> None:
        """Python is about to run after replays: make its state what the C path left."""
        s = self._states.get(self.engine.state)
        if s is None:
            return
        self._apply(s)
        st = self.ext.state
        runs, exits = (_Q.unpack_from(self.slots, 8 * n)[0] for n in (_SLOT_VMRUNS, _SLOT_VMEXITS))
        done_runs, done_exits = self._counted
        if runs != done_runs:
            st.stats["vmrun"] += runs - done_runs
            st.l1_host = bytes(self.l1_host)
            st.l1_rflags = _Q.unpack_from(self.slots, 8 * _SLOT_L1_RFLAGS)[0]
            st.vmcb12 = read_cache(bytes(self.vmcb12_copy))
        st.stats["vmexit"] += exits - done_exits
        self._counted = (runs, exits)
        for code, slot in self._code_slot.items():
            n = _Q.unpack_from(self.slots, 8 * slot)[0]
            if n != self._code_counted[code]:
                st.exit_codes[code] = st.exit_codes.get(code, 0) + n - self._code_counted[code]
                self._code_counted[code] = n

    def unsynced(self) -> int:
        """Switches replayed in C and not yet in the stats (read from any thread: progress)."""
        runs, exits = (_Q.unpack_from(self.slots, 8 * n)[0] for n in (_SLOT_VMRUNS, _SLOT_VMEXITS))
        return runs - self._counted[0] + exits - self._counted[1]

    # ---- recording ------------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every program (a snapshot replaced the state they were recorded from)."""
        self.engine.clear()
        self._recorded.clear()

    def begin(self, pa: int) -> Pending | None:
        """Before a world switch in Python (context saved): its inputs, if it may be recorded;
        `pa` is the vmcb12 it works on."""
        m = self.ext.machine
        if not m.replay_ready() or not 0 <= pa <= len(m.mem.view) - VMCB_SIZE:
            return None
        return Pending(self._state_id(), bytes(m.ctx.view), pa,
                       bytes(m.mem.view[pa:pa + VMCB_SIZE]))

    def rearm(self) -> None:
        """Python handled an exit whose only effects are on the CPU and guest RAM
        (fast_l2_msr.py): programs may run again, from the id of the nested state as it is now."""
        self.arm(self._state_id())

    def arm(self, state_id: int) -> None:
        """The world switch is done: let programs recorded from Python state `state_id` run
        (0: none may)."""
        st = self.ext.state
        if not state_id or len(st.l1_host) != self.blob_size:   # or a damaged snapshot's
            self.engine.state = 0
            return
        ctypes.memmove(self.l1_host_addr, st.l1_host, self.blob_size)
        _Q.pack_into(self.slots, 8 * _SLOT_L1_RFLAGS, st.l1_rflags)
        self.engine.state = state_id

    def _record_and_arm(self, intno: int, key: tuple | None,
                        build: Callable[[int], Program | None]) -> None:
        """The end of every world switch handled in Python. Only a switch that left the machine
        quiet (no interrupt window opened, nothing pending) is all in its bytes, so only then is
        it recorded (`key`: None if it cannot be, else what makes it the same switch, recorded
        the second time it is met) and are programs let run."""
        st = self.ext.state
        stepping = st.in_l2 and st.l1_rflags & RFLAGS_TF    # its #VMEXIT must raise the trap
        post = self._state_id() if self.ext.machine.replay_ready() and not stepping else 0
        if post and key is not None and self._second_time(key) and self._may_record(key):
            program = build(post)
            if program is not None:
                self.engine.add_program(intno, program)
        self.arm(post)

    def _may_record(self, key: tuple) -> bool:
        """A switch met in Python again after its program was recorded did not replay (its
        guards failed, or Python ran just before it): recording it once more may help (the
        program kept may be an older state's), endlessly does not, at ~100 us a recording."""
        n = self._recorded.get(key, 0)
        if n >= _RECORDINGS_PER_KEY:
            return False
        if len(self._recorded) >= MAX_STATES:
            self._recorded.clear()
        self._recorded[key] = n + 1
        return True

    def gif_done(self, intno: int, before_state: int, rip: int, length: int) -> None:
        """L1's STGI or CLGI (`length` bytes at `rip`) finished in Python, entered in Python
        state `before_state` (0: none recorded). All either does is GIF and RIP, and STGI's look
        for a pending interrupt, which finds none while programs may run (replay_ready): record
        the program that moves RIP and the state id in C, so that a hypervisor's
        CLGI / VMRUN / #VMEXIT / STGI loop stays there."""
        m = self.ext.machine
        if (not before_state or self.ext.state.in_l2 or not m.fast_exits.env
                or m.ctx.save().u64(OFF_EIP) != rip + length):
            return
        post = self._state_id() if m.replay_ready() else 0
        key = ("gif", intno, rip, before_state)
        if post and self._second_time(key) and self._may_record(key):
            env = m.fast_exits.env
            p = Program()
            p.eq64(self.engine.state_addr, before_state)
            p.eq64(env + OFF_EIP, rip)
            p.eq64(env + OFF_VM_VMCB, hostvm.VMCB01)
            p.commit()
            p.set64(env + OFF_EIP, rip + length)
            p.set64(self.engine.state_addr, post)
            self.engine.add_program(intno, p)
        self.arm(post)

    def vmrun_done(self, before: Pending | None, vmcb12_pa: int,
                   nested_entries: tuple[tuple[int, int], ...] | None) -> None:
        """A VMRUN loaded L2 (no event injected): record it as the VMRUN program.
        `nested_entries`: what hw_quirks.guard_nested_nx read (None: it cannot be replayed)."""
        key = None
        if before is not None and nested_entries is not None:
            # The bytes the program guards belong in the key: the state id pins the vmcb12
            # cached at the *previous* VMRUN, so one hypervisor loop can meet the same id
            # before a vmcb12 another test left, and a key worn out by programs whose guards
            # failed there would never be recorded for the loop that repeats.
            key = (VMEXIT_VMRUN, vmcb12_pa, before.state_id,
                   _Q.unpack_from(before.blob, OFF_EIP)[0], _guarded_digest(before))
        self._record_and_arm(
            hostvm.UC_EXIT_BASE + VMEXIT_VMRUN, key,
            lambda post: self._vmrun_program(before, vmcb12_pa, nested_entries, post))

    def _vmrun_program(self, before: Pending, pa: int,
                       nested_entries: tuple[tuple[int, int], ...], post_state: int) -> Program | None:
        e, m = self.engine, self.ext.machine
        after = bytes(m.ctx.save().view)
        vmcb = e.ram_addr(pa, VMCB_SIZE)
        if (vmcb is None or bytes(m.mem.view[pa:pa + VMCB_SIZE]) != before.vmcb12[:VMCB_SIZE]
                or len(before.vmcb12) != VMCB_SIZE
                or _spans_differ_outside(before.blob, after, _ENTER_WRITES)):
            return None
        blob, old, new = e.blob, before.blob, after
        p = Program().save()
        p.eq64(e.state_addr, before.state_id)
        p.eq64(blob + OFF_RAX, pa)
        p.eq64(blob + OFF_EIP, _Q.unpack_from(old, OFF_EIP)[0])
        eflags = _Q.unpack_from(old, OFF_EFLAGS)[0]
        if eflags & (RFLAGS_TF | RFLAGS_RF):
            return None
        p.eq64(blob + OFF_EFLAGS, eflags, _VMRUN_EFLAGS)
        for off, n in REGIONS:
            p.same(blob + off, old[off:off + n])
        v12 = before.vmcb12
        for lo, hi in VMCB_RANGES:
            p.same(vmcb + lo, v12[lo:hi])
        # checks.py: bits 63:32 of DR6 and DR7 must be zero. And no breakpoint enabled in L1's
        # DR7 or L2's: a program loads DR7 without rebuilding Unicorn's breakpoint list
        # (emu/engine/breakpoints.py), which is right only while the list stays empty.
        if (_Q.unpack_from(old, _OFF_DR7)[0] | _Q.unpack_from(v12, OFFSETS["dr7"])[0]) & DR7_ENABLES:
            return None
        p.eq64(vmcb + OFFSETS["dr6"], 0, 0xFFFFFFFF_00000000)
        p.eq64(vmcb + OFFSETS["dr7"], 0, 0xFFFFFFFF_00000000 | DR7_ENABLES)
        p.eq64(blob + _OFF_DR7, 0, DR7_ENABLES)
        for addr, value in nested_entries:
            host = e.ram_addr(addr, 8)
            if host is None:
                return None
            p.eq64(host, value)
        p.commit()
        # Host state (vmrun.save_host_state), the vmcb12 copy behind ext.state.vmcb12.
        p.copy(self.l1_host_addr, blob, self.blob_size)
        p.reg_read(self._slot(_SLOT_L1_RFLAGS), UC_X86_REG_RFLAGS)
        p.copy(self.vmcb12_copy_addr, vmcb, CACHE_STRUCT.size)     # what read_cache reads
        # L2's state: what load_guest produced, then the volatile fields from vmcb12.
        for off, n in REGIONS + ((OFF_V_TPR, 1),):
            p.write(blob + off, new[off:off + n])
        for ctx_off, name in VOLATILE_IN_CONTEXT:
            p.copy(blob + ctx_off, vmcb + OFFSETS[name], 8)
        p.restore()
        for reg, name in VOLATILE_BY_REGISTER:
            p.reg_write(vmcb + OFFSETS[name], reg)
        p.flush_tlb()
        self._finish(p, _SLOT_VMRUNS, post_state)
        return p

    def exit_done(self, before: Pending | None, code: int, rip: int, nrip: int,
                  extra: list[tuple[int, bytes]]) -> None:
        """A reflected #VMEXIT finished: record it. `extra`: (guest-physical address, bytes) of
        memory the decision read besides vmcb12 (the MSRPM byte)."""
        self._record_and_arm(
            hostvm.UC_EXIT_BASE + code, None if before is None else (code, rip, before.state_id),
            lambda post: self._exit_program(before, code, rip, nrip, extra, post))

    def _exit_program(self, before: Pending, code: int, rip: int, nrip: int,
                      extra: list[tuple[int, bytes]], post_state: int) -> Program | None:
        e, m, st = self.engine, self.ext.machine, self.ext.state
        after = bytes(m.ctx.save().view)
        pa = before.vmcb12_pa
        vmcb = e.ram_addr(pa, VMCB_SIZE)
        post = bytes(m.mem.view[pa:pa + VMCB_SIZE])
        writes = [(OFFSETS[name], n) for name, n in _EXIT_FIELDS]
        volatile = [(OFFSETS[name], 8) for _, name in VOLATILE_IN_CONTEXT + VOLATILE_BY_REGISTER]
        if (vmcb is None or pa != st.vmcb12_pa or len(st.l1_host) != self.blob_size
                or _spans_differ_outside(before.blob, after, _EXIT_WRITES)
                or _spans_differ_outside(before.vmcb12, post, tuple(writes + volatile))):
            return None
        code_guards = self._code_guards(rip, nrip)
        code_slot = self._counter_for(code)
        if code_guards is None or code_slot is None:
            return None
        blob, old, new = e.blob, before.blob, after
        p = Program().save()
        p.eq64(e.state_addr, before.state_id)
        p.eq64(blob + OFF_EIP, rip)
        p.eq64(blob + OFF_ERROR_CODE, _Q.unpack_from(old, OFF_ERROR_CODE)[0], 0xFFFFFFFF)
        p.eq64(blob + OFF_EFLAGS, _Q.unpack_from(old, OFF_EFLAGS)[0], _EFLAGS_VM)
        for off, n in REGIONS + ((OFF_V_TPR, 1),):
            p.same(blob + off, old[off:off + n])
        host = st.l1_host
        for off, n in REGIONS:
            p.same(self.l1_host_addr + off, host[off:off + n])
        for lo, hi in VMCB_RANGES:
            p.same(vmcb + lo, before.vmcb12[lo:hi])
        if code == VMEXIT_MSR:
            # Any MSR L1's permission map intercepts (ECX and the map read in C), not only
            # this one: the exit's fields do not depend on which (EXITINFO1 is the error code,
            # guarded above). `extra` holds what Python read of the map: the op covers it.
            msrpm = e.ram_addr(st.vmcb12.msrpm_base_pa & ~0xFFF, MSRPM_SIZE)
            if msrpm is None:
                return None
            p.msrpm(msrpm, blob + OFF_RCX, _Q.unpack_from(old, OFF_ERROR_CODE)[0] & 0xFFFFFFFF == 1)
            extra = []
        for addr, data in extra + code_guards:
            host_addr = e.ram_addr(addr, len(data))
            if host_addr is None:
                return None
            p.same(host_addr, data)
        if _Q.unpack_from(old, _OFF_DR7)[0] & DR7_ENABLES:      # as in _vmrun_program
            return None
        p.eq64(blob + _OFF_DR7, 0, DR7_ENABLES)
        p.commit()
        # vmcb12: the exit's constant fields as the Python path wrote them, then L2's volatile state.
        for off, n in writes:
            p.write(vmcb + off, post[off:off + n])
        for ctx_off, name in VOLATILE_IN_CONTEXT:
            p.copy(vmcb + OFFSETS[name], blob + ctx_off, 8)
        for reg, name in VOLATILE_BY_REGISTER:
            p.reg_read(vmcb + OFFSETS[name], reg)
        # L1's state back (vmexit.restore_host): what the Python path produced, RAX/RSP from the
        # host state kept at VMRUN, RIP after the VMRUN; RFLAGS and DR7 after the restore.
        for off, n in REGIONS:
            p.write(blob + off, new[off:off + n])
        p.write(blob + OFF_EIP, new[OFF_EIP:OFF_EIP + 8])
        p.copy(blob + OFF_RAX, self.l1_host_addr + OFF_RAX, 8)
        p.copy(blob + OFF_RSP, self.l1_host_addr + OFF_RSP, 8)
        p.restore()
        p.reg_write(self._slot(_SLOT_L1_RFLAGS), UC_X86_REG_RFLAGS)
        p.reg_write(self._slot(_SLOT_HOST_DR7), UC_X86_REG_DR7)
        p.flush_tlb()
        p.add64(self._slot(code_slot), 1)
        self._finish(p, _SLOT_VMEXITS, post_state)
        return p

    def _counter_for(self, code: int) -> int | None:
        """The slot counting replayed exits of `code` (exits by code in the run summary); None
        when every slot is taken, and such an exit then stays in Python."""
        slot = self._code_slot.get(code)
        if slot is None and len(self._code_slot) < _CODE_SLOTS:
            slot = self._code_slot[code] = _FIRST_CODE_SLOT + len(self._code_slot)
            self._code_counted[code] = 0
        return slot

    def _code_guards(self, rip: int, nrip: int) -> list[tuple[int, bytes]] | None:
        """Guards that keep NRIP right: the instruction's bytes, and every paging entry the
        translation of RIP read (their values; CR3, nCR3 and the mode are in REGIONS)."""
        if not nrip:
            return []
        mem = self.ext.machine.mem
        path = mem.code_path(rip) if hasattr(mem, "code_path") else None
        length = nrip - rip
        if path is None or not 0 < length <= path.page_end:
            return None
        guards = [(path.pa, bytes(mem.view[path.pa:path.pa + length]))]
        for addr, value, width in path.entries:
            guards.append((addr, value.to_bytes(width, "little")))
        return guards

    def _finish(self, p: Program, counter: int, post_state: int) -> None:
        """The tail every program shares: the Python-side state it leaves, and its count."""
        p.set64(self.engine.state_addr, post_state)
        p.add64(self._slot(counter), 1)
