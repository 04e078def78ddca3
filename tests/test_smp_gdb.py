"""gdb with several CPUs, driven by Debian's gdb in batch mode against `svmemu run guests/smp.S
-smp 4 --gdb tcp::0 -S`: each CPU is a thread named after its world, stops name the CPU that
stopped, `thread N` selects whose registers and `monitor` gdb sees."""
from __future__ import annotations

import re

from emu.loader.asm import GUESTS_DIR, assemble
from tests.test_gdbstub import CliStub, needs_gdb, run_gdb

SMP_GUEST = GUESTS_DIR / "smp.S"
SYM = assemble(str(SMP_GUEST)).symbols


def SmpStub(*extra: str) -> CliStub:
    """`svmemu run guests/smp.S -smp 4 --gdb tcp::0 -S`."""
    return CliStub("-smp", "4", *extra, guest=SMP_GUEST, timeout=180)


def _threads(out: str) -> list[str]:
    """`info threads` rows: '* 2    Thread 2 "CPU 1 L1" ...' -> the rows, in order."""
    return re.findall(r"^[* ] +\d+ +Thread .*$", out, re.M)


@needs_gdb
def test_each_cpu_is_a_thread_with_its_world_and_registers():
    s = SmpStub()
    out = run_gdb(s.port, "info threads",
                  f"break *{SYM['ap_start64']:#x}", "continue", "info threads", "p/x $rip",
                  "continue", "p/x $rip",
                  "thread 1", "p/x $rip", "monitor cpu 0", "monitor world",
                  "thread 3", "monitor cpu 2", "monitor world", "stepi", "p/x $rip",
                  "delete", "continue")
    code, stdout, _ = s.finish()
    assert code == 1 and "# pass 16 fail 0" in stdout, out
    tables = out.split("Breakpoint 1 at")
    first = _threads(tables[0])
    # Attached before the first instruction: four threads, the APs waiting for SIPI.
    assert len(first) == 4, out
    assert re.search(r'^\* 1 +Thread 1 "CPU 0 L1"', first[0]), first
    assert all("waiting for SIPI" in row for row in first[1:]), first
    # The first AP to reach ap_start64 is CPU 1 (thread 2), selected by its stop.
    assert re.search(r'Thread 2 "CPU 1 L1" hit Breakpoint 1', out), out
    after = _threads(tables[1])
    assert re.search(r'^\* 2 +Thread 2 "CPU 1 L1"', after[1]), after
    # Then CPU 2 (thread 3) reaches it.
    assert re.search(r'Thread 3 "CPU 2 L1" hit Breakpoint 1', out), out
    rips = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)", out, re.M)]
    assert rips[0] == rips[1] == SYM["ap_start64"], rips
    assert rips[2] != SYM["ap_start64"]                # the boot CPU is elsewhere
    assert rips[3] > SYM["ap_start64"]                 # CPU 2 stepped one instruction
    # monitor world on CPU 0 (GIF=1, before its VMRUNs) and on CPU 2 (never VMRUNs)
    assert "monitor commands act on CPU 0 L1" in out and "monitor commands act on CPU 2 L1" in out
    assert out.count("L1 running: GIF=1 (0 VMRUN, 0 #VMEXIT)") == 2, out


@needs_gdb
def test_thread_names_show_l2_and_break_on_names_the_cpu():
    s = SmpStub()
    out = run_gdb(s.port, f"break *{SYM['l2_entry']:#x}", "continue", "info threads",
                  "monitor world", "delete", "monitor break-on vmexit", "continue",
                  "info threads", "monitor world", "monitor break-on off", "continue")
    code, stdout, _ = s.finish()
    assert code == 1 and "# pass 16 fail 0" in stdout, out
    # The breakpoint in L2 code stops CPU 0 (the first to enter its L2): its thread is named
    # after its world, and the monitor (following the stop) describes its L2.
    assert re.search(r'Thread 1 "CPU 0 L2" hit Breakpoint 1', out), out
    assert re.search(r"^L2 running: vmcb12 at 0x[0-9a-f]+, ASID", out, re.M), out
    # break-on vmexit: the next #VMEXIT is CPU 1's (CPU 0 sits in L2 at the stop until its
    # turn), named in the note and in the stop.
    assert re.search(r"svmemu: CPU 1 stopped after #VMEXIT VMMCALL .*: L2 -> L1", out), out
    rows = _threads(out)
    assert any(r.startswith("* 1 ") and '"CPU 0 L2"' in r for r in rows), rows
    assert any(r.startswith("* 2 ") and '"CPU 1 L1"' in r for r in rows), rows
    assert re.search(r"^L1 running: GIF=0, last vmcb12 at 0x[0-9a-f]+ \(1 VMRUN, 1 #VMEXIT\)",
                     out, re.M), out
