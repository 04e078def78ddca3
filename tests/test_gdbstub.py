"""The gdb stub (emu/tools/gdb/stub.py): Debian's gdb in batch mode against `svmemu run --gdb`, and a raw
socket client for the packet layer.

Expected values come from the guest's source (symbols and bytes from our assembler, decoded by
capstone), from the architecture (CR0.PG, EFER.LMA, the power-on PAT) and from what the guest
itself prints, never from the stub's own tables."""
from __future__ import annotations

import io
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import capstone
import pytest

from emu.arch import memtype
from emu.tools.gdb.packets import INTERRUPT, Connection, checksum, frame, unescape
from emu.tools.gdb.regs import REGISTERS, target_xml
from emu.tools.gdb.stub import GdbStub
from emu.loader.asm import assemble, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests.tinyimage import long_mode_image

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guests" / "svm_world_switch.S"
GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")

ASM = assemble(str(GUEST))
SYM = ASM.symbols
POWER_ON_PAT = 0x0007040600070406
VMRUN_BYTES = bytes.fromhex("0f01d8")
V_RIP = 0x800000 + 0x578          # vmcb12's save-area RIP in the guest (VMCB at 0x800000)
_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def code(addr: int, n: int) -> bytes:
    return ASM.image[addr - ASM.base:addr - ASM.base + n]


def insn_at(addr: int) -> capstone.CsInsn:
    return next(_CS.disasm(code(addr, 15), addr, 1))


def statement_before(addr: int) -> capstone.CsInsn:
    """The instruction whose statement ends at `addr` (the assembler's line table gives the
    statement boundaries; macros put data between instructions, so a linear sweep would not)."""
    start = next(a for a, size, _ in ASM.lines if size and a + size == addr)
    return insn_at(start)


def vmrun_sites() -> list[int]:
    """Every VMRUN statement in the guest, in address order."""
    return sorted(a for a, size, _ in ASM.lines if size == 3 and code(a, 3) == VMRUN_BYTES)


# ---- running svmemu and gdb ---------------------------------------------------------------------

class CliStub:
    """`svmemu run GUEST --gdb tcp::0 -S`, its port read from the line it prints."""

    def __init__(self, *extra: str, guest: "str | Path" = GUEST, timeout: float = 120) -> None:
        self.timeout = timeout
        self.p = subprocess.Popen([sys.executable, "-m", "emu.cli", "run", str(guest),
                                   "--gdb", "tcp::0", "-S", *extra], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stderr.readline()
        m = re.search(r"listening on [\d.]+:(\d+)", line)
        assert m, f"no listening line: {line!r}"
        self.port = int(m.group(1))

    def finish(self) -> tuple[int, str, str]:
        out, err = self.p.communicate(timeout=self.timeout)
        return self.p.returncode, out, err


def run_gdb(port: int, *commands: str) -> str:
    args = [GDB, "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return p.stdout + p.stderr


def values(out: str, name: str) -> list[int]:
    """Every value gdb printed for register `name` (`info registers` lines)."""
    return [int(v, 16) for v in re.findall(rf"^{name}\s+(0x[0-9a-f]+)", out, re.M)]


def printed(out: str) -> list[int]:
    """Every `$N = 0x...` value, in order."""
    return [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)", out, re.M)]


# ---- an in-process stub for images built in Python ----------------------------------------------

class ThreadStub:
    """A machine served by GdbStub on a thread (the test drives it from outside)."""

    def __init__(self, machine: Machine, wait: bool = True) -> None:
        self.stub = GdbStub(machine, "127.0.0.1", 0, wait=wait, log=io.StringIO())
        self.port = self.stub.port
        self.result = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.result = self.stub.serve()

    def join(self):
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.result


class Client:
    """A raw RSP client; console output (O packets) is collected in `console`."""

    def __init__(self, port: int) -> None:
        self.conn = Connection(socket.create_connection(("127.0.0.1", port)))
        self.console = ""

    def ask(self, payload: str) -> str:
        self.conn.send(payload)
        return self.reply()

    def reply(self) -> str:
        while True:
            pkt = self.conn.get()
            assert pkt is not None, "the stub closed the connection"
            if pkt.startswith("O") and pkt != "OK" and all(c in "0123456789abcdef" for c in pkt[1:]):
                self.console += bytes.fromhex(pkt[1:]).decode()
                continue
            return pkt

    def reg(self, name: str) -> int:
        num = [r.name for r in REGISTERS].index(name)
        return int.from_bytes(bytes.fromhex(self.ask(f"p{num:x}")), "little")

    def monitor(self, line: str) -> str:
        return bytes.fromhex(self.ask("qRcmd," + line.encode().hex())).decode()


IMAGE = parse_image(assemble_source(str(GUEST)), str(GUEST), 128 << 20)


def guest_machine() -> Machine:
    m = Machine(128 << 20, stdout=io.BytesIO(), extensions=[SvmExtension()])
    m.load_multiboot(IMAGE, str(GUEST))
    return m


# ---- packet layer -------------------------------------------------------------------------------

def test_frame_escapes_and_checksums():
    payload = "a$b#c}d*e"
    raw = frame(payload)
    body, given = raw[1:raw.index(b"#", len(raw) - 3)], raw[-2:]
    assert b"$" not in body and b"#" not in body and b"*" not in body
    assert unescape(body).decode() == payload
    assert int(given, 16) == checksum(body) == sum(body) % 256


def test_connection_acks_good_packets_rejects_bad_ones_and_sees_ctrl_c():
    a, b = socket.socketpair()
    conn = Connection(a)
    b.sendall(b"$m10,4#00")                   # wrong checksum
    b.sendall(frame("m10,4") + b"\x03")
    assert conn.get() == "m10,4"
    assert conn.get() == INTERRUPT
    assert b.recv(16) == b"-+"
    conn.send("OK")
    assert b.recv(16) == b"$OK#9a"
    b.sendall(b"-")                           # gdb asks for a retransmission
    b.sendall(frame("?"))
    assert conn.get() == "?"
    assert b.recv(16) == b"$OK#9a+"
    b.close()
    assert conn.get() is None


def test_target_description_is_valid_xml_in_register_order():
    root = ET.fromstring(target_xml().split("\n", 2)[2])
    assert root.findtext("architecture") == "i386:x86-64"
    regs = [(f.get("name"), r.get("name"), int(r.get("regnum")), int(r.get("bitsize")))
            for f in root.findall("feature") for r in f.findall("reg")]
    assert [r[2] for r in regs] == list(range(len(regs)))
    names = [r[1] for r in regs]
    assert names[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"]
    assert names[18:24] == ["cs", "ss", "ds", "es", "fs", "gs"]
    for n in ("cr0", "cr2", "cr3", "cr4", "efer", "pat", "fs_base", "gs_base", "xmm15"):
        assert n in names
    assert {f for f, *_ in regs} >= {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"}


# ---- raw protocol against a machine --------------------------------------------------------------

def test_raw_session_registers_memory_breakpoint_step_and_monitor():
    m = guest_machine()
    served = ThreadStub(m)
    c = Client(served.port)
    assert "qXfer:features:read+" in c.ask("qSupported:swbreak+;xmlRegisters=i386")
    assert c.ask("?").startswith("T05")
    assert c.reg("rip") == IMAGE.entry           # the guest's first instruction, not L0's trampoline
    assert bytes.fromhex(c.ask(f"m{SYM['main']:x},10")) == code(SYM["main"], 16)
    assert c.ask(f"Z0,{SYM['l2_entry']:x},1") == "OK"
    reply = c.ask("c")
    assert reply.startswith("T05") and "swbreak:" in reply and "world:L2;" in reply
    assert c.reg("rip") == SYM["l2_entry"]
    assert "now in L2" in c.console
    assert c.ask("s").startswith("T05")
    assert c.reg("rip") == SYM["l2_vmmcall"]
    assert c.reg("rbx") == 0x4242           # what L2's first instruction wrote
    world = c.monitor("world")
    assert world.startswith("L2 running: vmcb12 at 0x800000, ASID 1, nested paging off")
    assert c.ask(f"z0,{SYM['l2_entry']:x},1") == "OK"
    c.conn.send("k")
    assert served.join().reason == "killed"


def test_ctrl_c_stops_a_guest_that_never_stops():
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image("spin:\n jmp spin\n"), "spin")
    served = ThreadStub(m)
    c = Client(served.port)
    c.ask("QStartNoAckMode")
    c.conn.ack = False
    c.conn.send("c")
    time.sleep(0.5)                          # let the guest get from its entry into the loop
    c.conn.sock.sendall(b"\x03")
    assert c.reply().startswith("T02")       # SIGINT, as gdb expects for Ctrl-C
    rip = c.reg("rip")
    assert code_is_jmp_self(c, rip)
    c.conn.send("k")
    assert served.join().reason == "killed"


def test_gdb_attaching_to_a_running_guest_stops_it():
    """-s without -S: the guest runs until gdb connects, then stops (QEMU's habit)."""
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image("spin:\n jmp spin\n"), "spin")
    served = ThreadStub(m, wait=False)
    time.sleep(0.5)                          # the guest runs on its own first, into its loop
    c = Client(served.port)
    assert c.ask("?").startswith("T05")
    assert code_is_jmp_self(c, c.reg("rip"))
    c.conn.send("D")
    assert c.reply() == "OK"
    c.conn.close()
    again = Client(served.port)              # the guest ran on; a second gdb stops it again
    assert again.ask("?").startswith("T05")
    assert code_is_jmp_self(again, again.reg("rip"))
    again.conn.send("k")
    assert served.join().reason == "killed"


def code_is_jmp_self(c: Client, rip: int) -> bool:
    return bytes.fromhex(c.ask(f"m{rip:x},2")) == b"\xeb\xfe"


# ---- gdb ----------------------------------------------------------------------------------------

@needs_gdb
def test_gdb_break_step_and_registers():
    s = CliStub()
    main = SYM["main"]
    out = run_gdb(s.port, f"break *{main:#x}", "continue", "info registers rip", "stepi",
                  "info registers rip cs", "p/x $cr0", "p/x $efer", "p/x $pat", "kill")
    s.finish()
    assert f"Breakpoint 1, {main:#018x}" in out
    assert values(out, "rip") == [main, main + insn_at(main).size]
    cs = values(out, "cs")[0]
    assert cs & 3 == 0 and cs != 0           # a ring-0 selector
    cr0, efer, pat = printed(out)
    assert cr0 & 1 and cr0 >> 31 & 1         # PE and PG: main runs in long mode
    assert efer & 0x500 == 0x500             # LME and LMA
    assert pat == POWER_ON_PAT


@needs_gdb
def test_gdb_memory_read_and_write_reach_the_guest():
    """x/ reads the code at l2_entry; a write changes the immediate of L2's `mov rbx, 0x4242`, and
    the guest's own check then reports the value gdb wrote."""
    s = CliStub()
    l2 = SYM["l2_entry"]
    ins = insn_at(l2)
    assert ins.mnemonic == "mov" and ins.op_str == "rbx, 0x4242"
    imm = l2 + ins.size - 4
    out = run_gdb(s.port, f"break *{l2:#x}", "continue", f"x/{ins.size}xb {l2:#x}",
                  f"set {{int}}{imm:#x} = 0x777", f"x/1xw {imm:#x}", "delete", "continue")
    status, stdout, _ = s.finish()
    dumped = re.findall(r"0x([0-9a-f]{2})\b(?!:)", out.split(f"{l2:#x}:", 1)[1].split("\n")[0])
    assert bytes(int(x, 16) for x in dumped) == ins.bytes
    assert f"{imm:#x}:\t0x00000777" in out
    assert re.search(r"not ok \d+ - RBX written by L2 is visible in L1: got 0x0*777 want 0x0*4242",
                     stdout)
    assert "exited with code 03" in out and status == 3


@needs_gdb
def test_gdb_stops_on_vmrun_and_vmexit_with_monitor_commands():
    s = CliStub()
    out = run_gdb(s.port, "monitor world", "monitor vmcb", "monitor break-on vmrun vmexit",
                  "continue", "info registers rip", "monitor world", "monitor vmcb",
                  "continue", "info registers rip", "x/3xb $rip-3", "monitor world",
                  "monitor npt-walk 0x1000", "monitor memtype 0x800000", "kill")
    s.finish()
    assert "L1 running: GIF=1 (0 VMRUN, 0 #VMEXIT)" in out
    assert "no nested guest has been entered yet" in out
    assert "stopping on: vmexit, vmrun" in out
    assert "svmemu: stopped after VMRUN: L1 -> L2" in out
    rips = values(out, "rip")
    assert rips[0] == SYM["l2_entry"]
    assert "L2 running: vmcb12 at 0x800000, ASID 1, nested paging off" in out
    assert re.search(rf"^rip\s+= {SYM['l2_entry']:#x}$", out, re.M)       # monitor vmcb
    assert re.search(r"^guest_asid\s+= 0x1$", out, re.M)
    assert ("svmemu: stopped after #VMEXIT VMMCALL (exitinfo1 0x0, exitinfo2 0x0, guest rip "
            f"{SYM['l2_vmmcall']:#x}): L2 -> L1") in out
    assert rips[1] in [a + 3 for a in vmrun_sites()]                   # right after L1's VMRUN
    assert "0x0f\t0x01\t0xd8" in out
    assert "L1 running: GIF=0, last vmcb12 at 0x800000 (1 VMRUN, 1 #VMEXIT)" in out
    assert "the nested guest runs without nested paging (NP_ENABLE=0)" in out
    assert "L1 va 0x800000" in out and "effective:" in out


@needs_gdb
def test_gdb_stepi_across_vmrun_lands_in_l2():
    s = CliStub()
    site = vmrun_sites()[1]            # [0] is the VMRUN that must raise #UD (EFER.SVME=0)
    out = run_gdb(s.port, f"break *{site:#x}", "continue", "stepi", "info registers rip",
                  "monitor world", "kill")
    s.finish()
    assert values(out, "rip") == [SYM["l2_entry"]]
    assert "svmemu: now in L2" in out
    assert "L2 running" in out


@needs_gdb
def test_gdb_watchpoint_stops_after_the_writing_instruction():
    s = CliStub()
    out = run_gdb(s.port, f"watch *(long *){V_RIP:#x}", "continue", "info registers rip", "kill")
    s.finish()
    assert re.search(rf"Hardware watchpoint 1: \*\(long \*\){V_RIP:#x}\s+Old value = 0\s+"
                     rf"New value = {SYM['l2_entry']}", out), out
    rip = values(out, "rip")[0]
    # The instruction just before the stop is the store into vmcb12's RIP field.
    prev = statement_before(rip)
    assert prev.mnemonic == "mov" and prev.op_str == "qword ptr [rdi + 0x578], rax"


@needs_gdb
def test_gdb_detach_lets_the_guest_finish():
    s = CliStub()
    out = run_gdb(s.port, f"break *{SYM['l2_ud2']:#x}", "continue", "detach")
    status, stdout, _ = s.finish()
    assert "Breakpoint 1" in out
    assert "not ok" not in stdout and re.search(r"# pass \d+ fail 0", stdout)
    assert status == 1                       # all checks passed: isa-debug-exit 0 -> 1


# ---- nested paging: npt-walk and memtype --------------------------------------------------------

@needs_gdb
def test_gdb_npt_walk_and_memtype_under_nested_paging():
    from tests.nested_image import EXIT_PASS, nested_image, vmcb12
    from tests.test_memquery import (GH, HPAT, L1_SETUP, PM, VA, with_tables)
    gtype = memtype.WC
    gpat = 0x0600060606060606 | (gtype << 48)
    l1 = L1_SETUP + "mov rax, rdi\n vmrun\n" + EXIT_PASS
    img = with_tables(nested_image(l1, "mov rbx, 1\n vmmcall\n",
                                   vmcb12(cr3=0x30000, g_pat=gpat, nested_ctl=1, n_cr3=0x20000)))
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "npt")
    served = ThreadStub(m)
    out = run_gdb(served.port, "monitor break-on vmrun", "continue", "monitor world",
                  f"monitor npt-walk {VA + 0x10:#x}", f"monitor memtype {VA + 0x10:#x}",
                  "p/x $pat", "p/x $cr3", "kill")
    served.join()
    assert "nested paging on, nCR3 0x20000" in out
    assert f"-> spa {VA + 0x10:#x} (2048 KiB page" in out
    walk = dict(re.findall(r"^\s+(PML4E|PDPE|PDE)\s+at spa (0x[0-9a-f]+) = ", out, re.M))
    assert walk == {"PML4E": "0x20000", "PDPE": "0x21000", "PDE": hex(0x22000 + 8 * (VA >> 21))}
    pde = int(re.search(r"PDE\s+at spa 0x[0-9a-f]+ = (0x[0-9a-f]+)", out).group(1), 16)
    assert pde & ~0x60 == VA | 0x8F          # L1's PDE: P RW US PS PWT (A/D as L1 left them)
    expected = PM[(GH[(gtype, memtype.WT)], memtype.WB)]
    assert f"effective:    {memtype.memtype_name(expected)}" in out
    assert f"hPAT[1] of {HPAT:#018x}" in out and "gPAT[6]" in out
    assert printed(out) == [gpat, 0x30000]      # L2's PAT register is gPAT; L2's own CR3


# ---- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["-S"], "-S waits for gdb: give -s or --gdb too"),
    (["--gdb", "tcp::0", "--max-insns", "5"], "cannot be combined"),
    (["--gdb", "udp::5"], "expected tcp::PORT or tcp:HOST:PORT"),
    (["--gdb", "tcp::x"], "is not a number"),
])
def test_bad_gdb_options_are_one_line_errors(args, message):
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(GUEST), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and message in p.stderr


def test_register_writes_go_through_the_msr_checks():
    """gdb cannot set a PAT the guest's own WRMSR would refuse (reserved type 2)."""
    m = guest_machine()
    served = ThreadStub(m)
    c = Client(served.port)
    num = [r.name for r in REGISTERS].index("pat")
    assert c.ask(f"P{num:x}=" + struct.pack("<Q", 0x0007040600070402).hex()).startswith("E")
    assert c.reg("pat") == POWER_ON_PAT
    assert c.ask(f"P{num:x}=" + struct.pack("<Q", 0x0007040600070401).hex()) == "OK"
    assert c.reg("pat") == 0x0007040600070401
    c.conn.send("k")
    served.join()


# ---- reverse execution --------------------------------------------------------------------------

@needs_gdb
def test_gdb_reverse_stepi_across_a_vmexit_lands_back_in_l2():
    s = CliStub()
    out = run_gdb(s.port, "monitor record on", "monitor break-on vmexit", "continue",
                  "info registers rip", "reverse-stepi", "info registers rip rbx", "monitor world",
                  "stepi", "info registers rip", "monitor world", "monitor break-on off",
                  f"break *{SYM['l2_entry']:#x}", "reverse-continue", "info registers rip",
                  "delete", "reverse-continue", "info registers rip", "continue")
    status, stdout, _ = s.finish()
    after_exit = [a + 3 for a in vmrun_sites()]
    rips = values(out, "rip")
    assert rips[0] in after_exit                          # stopped in L1 after the #VMEXIT
    assert rips[1] == SYM["l2_vmmcall"]                   # one instruction back: L2's VMMCALL
    assert values(out, "rbx") == [0x4242]
    assert "L2 running: vmcb12 at 0x800000" in out
    assert rips[2] == rips[0]                             # and forward again through the exit
    assert "L1 running" in out.split("L2 running", 1)[1]
    assert rips[3] == SYM["l2_entry"]                     # reverse-continue to a breakpoint
    assert "No more reverse-execution history" in out
    assert rips[4] == IMAGE.entry                         # ... and to the start of the recording
    # Replayed instructions printed nothing twice; the guest then finished as usual.
    names = re.findall(r"^(?:not )?ok \d+ - (.*)$", stdout, re.M)
    assert len(names) == len(set(names)) == 11 and "fail 0" in stdout and status == 1


def test_reverse_steps_restore_registers_and_memory_across_checkpoints(monkeypatch):
    """Checkpoints every 997 instructions, so going back restores one and replays; every state
    seen going forward is seen again going back, and memory follows (vmcb12's EXITCODE)."""
    from emu.tools.gdb import reverse
    monkeypatch.setattr(reverse, "CHECKPOINT_EVERY", 997)
    m = guest_machine()
    served = ThreadStub(m)
    c = Client(served.port)
    assert c.monitor("record on").startswith("recording: at instruction 0 of 0")
    c.monitor("break-on vmexit")
    assert c.ask("c").startswith("T05")
    forward = [c.ask("g")]
    for _ in range(3):
        c.ask("s")
        forward.append(c.ask("g"))
    status = c.monitor("record status")
    at = int(re.search(r"at instruction (\d+)", status).group(1))
    assert int(re.search(r"(\d+) checkpoints", status).group(1)) == at // 997 + 1
    exitcode = f"m{0x800070:x},8"
    assert bytes.fromhex(c.ask(exitcode)) == struct.pack("<Q", 0x81)     # VMMCALL's exit code
    for regs in reversed(forward[:-1]):
        assert c.ask("bs").startswith("T05")
        assert c.ask("g") == regs
    assert c.ask("bs").startswith("T05")                 # before the VMMCALL: L2, no exit yet
    assert c.reg("rip") == SYM["l2_vmmcall"] and "world:L2" in c.ask("?")
    assert bytes.fromhex(c.ask(exitcode)) == bytes(8)    # L1 zeroed vmcb12 before the VMRUN
    assert c.ask("s").startswith("T05")
    assert c.ask("g") == forward[0]
    assert bytes.fromhex(c.ask(exitcode)) == struct.pack("<Q", 0x81)
    c.conn.send("k")
    served.join()


def test_reverse_needs_a_recording():
    m = guest_machine()
    served = ThreadStub(m)
    c = Client(served.port)
    assert "ReverseStep+" in c.ask("qSupported")
    assert c.ask("bs") == "E01"
    assert "needs 'monitor record on' first" in c.console
    c.conn.send("k")
    served.join()
