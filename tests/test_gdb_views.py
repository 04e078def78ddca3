"""The debugger's views of SVM state, driven by Debian's gdb in batch mode: `monitor vmcb` with
fields by name, intercepts and flags decoded; physical memory (`monitor xp`, QEMU's
Qqemu.PhyMemMode packet); the control registers (`monitor sysregs`, `info registers`).

Expected names come from the guest's source (svm_world_switch.S intercepts #UD, CPUID and HLT;
svm.inc's vmcb_init VMRUN and VMMCALL) and from the architecture, not from svmemu's tables."""
from __future__ import annotations

import re

from tests.test_gdbstub import SYM, V_RIP, CliStub, needs_gdb, printed, run_gdb, values



@needs_gdb
def test_monitor_vmcb_names_intercepts_flags_and_the_exit_code():
    s = CliStub()
    out = run_gdb(s.port, "monitor break-on vmrun", "continue",
                  "monitor vmcb intercept efer cs guest_asid",
                  "monitor break-on off", "monitor break-on vmexit", "continue",
                  "monitor vmcb exitcode exitintinfo", "monitor vmcb no_such_field", "kill")
    s.finish()
    assert re.search(r"^intercept_exceptions\s+= 0x40  \(#UD\)$", out, re.M), out
    assert re.search(r"^intercept_misc1\s+= 0x[0-9a-f]+  \(CPUID HLT\)$", out, re.M), out
    assert re.search(r"^intercept_misc2\s+= 0x3  \(VMRUN VMMCALL\)$", out, re.M), out
    assert re.search(r"^intercept_cr_read\s+= 0x0  \(none\)$", out, re.M), out
    # L2 runs in long mode with L1's paging: EFER.LME, LMA and SVME (the architecture's
    # requirement for VMRUN) are set in what L1 stored.
    efer = re.search(r"^efer\s+= (0x[0-9a-f]+)  \((.*)\)$", out, re.M)
    assert efer and set(efer.group(2).split()) >= {"LME", "LMA", "SVME"}
    assert int(efer.group(1), 16) & (1 << 12)
    assert re.search(r"^cs_selector\s+= 0x8$", out, re.M) and not re.search(r"^cstar", out, re.M)
    assert re.search(r"^guest_asid\s+= 0x1$", out, re.M)
    # The first #VMEXIT is L2's VMMCALL (exit code 0x81 in the APM's table).
    assert re.search(r"^exitcode\s+= 0x81  \(VMMCALL\)$", out, re.M), out
    assert re.search(r"^exitintinfo\s+= 0x0  \(none \(V=0\)\)$", out, re.M)
    assert "no VMCB field 'no_such_field'" in out


@needs_gdb
def test_physical_memory_through_xp_and_phymemmode():
    s = CliStub()
    scratch = 0x900100
    out = run_gdb(s.port, "monitor break-on vmrun", "continue",
                  f"monitor xp/2xg {V_RIP - 8:#x}",
                  "maintenance packet qqemu.PhyMemMode",
                  "maintenance packet Qqemu.PhyMemMode:1",
                  f"x/2xg {V_RIP - 8:#x}",
                  f"set {{long}}{scratch:#x} = 0x1234567890",
                  "maintenance packet Qqemu.PhyMemMode:0",
                  f"monitor xp/1xg {scratch:#x}", f"monitor xp/2dw {scratch:#x}",
                  "monitor xp/1xg 0x7fffffffff", "kill")
    s.finish()
    # vmcb12's RFLAGS then RIP (0x570, 0x578): L2 starts at l2_entry with only the fixed bit set.
    assert f"{V_RIP - 8:016x}: 0x0000000000000002 {SYM['l2_entry']:#018x}" in out, out
    assert 'received: "0"' in out and 'received: "OK"' in out
    assert re.search(rf"{V_RIP - 8:#x}:\s+0x0000000000000002\s+{SYM['l2_entry']:#018x}", out)
    assert f"{scratch:016x}: 0x0000001234567890" in out
    assert f"{scratch:016x}: 878082192 18" in out                 # the same bytes as two dwords
    assert "cannot read physical address 0x7fffffffff" in out


@needs_gdb
def test_control_registers_are_visible():
    s = CliStub()
    out = run_gdb(s.port, "monitor break-on vmrun", "continue", "monitor sysregs",
                  "info registers cr0 cr4 efer", "p/x $cr3", "kill")
    s.finish()
    # In L2 (long mode, paging on): CR0.PE and PG, CR4.PAE, EFER.LMA, as the architecture
    # requires of 64-bit mode.
    cr0 = re.search(r"^cr0\s+(0x[0-9a-f]+)  \((.*)\)$", out, re.M)
    assert cr0 and {"PE", "PG"} <= set(cr0.group(2).split())
    assert int(cr0.group(1), 16) == values(out, "cr0")[0]
    assert re.search(r"^cr4\s+0x[0-9a-f]+  \(.*\bPAE\b.*\)$", out, re.M)
    assert re.search(r"^efer\s+0x[0-9a-f]+  \(.*\bLMA\b.*\)$", out, re.M)
    assert "world  L2" in out
    cr3 = int(re.search(r"^cr3\s+(0x[0-9a-f]+)$", out, re.M).group(1), 16)
    assert printed(out) == [cr3]


@needs_gdb
def test_reverse_continue_stops_at_break_on_world_switches():
    s = CliStub()
    out = run_gdb(s.port, "monitor record on", "monitor break-on vmrun", "continue",
                  "info registers rip", "continue", "info registers rip", "reverse-continue",
                  "info registers rip", "monitor world", "reverse-continue", "info registers rip",
                  "kill")
    s.finish()
    rips = values(out, "rip")
    # Forward: right after the first VMRUN (L2's first instruction), then after the second
    # (L1 stepped vmcb12's RIP over the 3-byte VMMCALL).
    assert rips[:2] == [SYM["l2_entry"], SYM["l2_vmmcall"] + 3], out
    # Back: to the first VMRUN's switch, not to the start of the recording ...
    assert rips[2] == SYM["l2_entry"]
    assert "svmemu: reverse: stopped after VMRUN: L1 -> L2" in out
    assert "L2 running: vmcb12 at 0x800000" in out
    # ... and only then, with no switch before it, to the start.
    assert "No more reverse-execution history" in out
    assert rips[3] not in (SYM["l2_entry"], SYM["l2_vmmcall"] + 3)


@needs_gdb
def test_monitor_trace_switches_tracing_on_and_off(tmp_path):
    log = tmp_path / "trace.txt"
    s = CliStub()
    out = run_gdb(s.port, "monitor break-on vmrun", "continue", "monitor break-on off",
                  f"monitor trace insn L2 {log}", "monitor trace", f"break *{SYM['l2_ud2']:#x}",
                  "continue", "monitor trace off", "delete", "continue")
    status, _, _ = s.finish()
    assert "tracing insn in L2 to " in out and "tracing: insn" in out and "tracing off" in out
    lines = log.read_text().splitlines()
    # From the first VMRUN's stop to the ud2 breakpoint: L2's instructions before the ud2 (its
    # VMMCALL and CPUID exits in between run L1 code, which the L2 focus leaves out).
    addrs = [int(re.search(r"(0x[0-9a-f]+):", l).group(1), 16) for l in lines]
    assert addrs[0] == SYM["l2_entry"] and SYM["l2_vmmcall"] in addrs
    assert all(l.startswith("insn  [L2") for l in lines)
    assert SYM["l2_ud2"] not in addrs                      # stopped before it; then off
    assert status == 1
