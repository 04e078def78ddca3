"""RAM beyond the PCI hole: `-m` up to 64 GiB laid out as QEMU's pc machine lays it out, with
host memory committed only where the guest writes.  guests/bigmem.S checks the memory map
against the RAM size and writes and reads back the first, a middle and the last qword of RAM
above 4 GiB; it runs on svmemu and on QEMU 7.2 with the same result.  Resident memory is a
behaviour here (a 16 GiB guest must not cost 16 GiB), so it is asserted, read from the kernel's
accounting of the child process; no time is asserted."""
from __future__ import annotations

import subprocess
import sys

import pytest

from emu.core.firmware.layout import GiB, MiB, e820_map, ram_layout
from emu.loader.asm import GUESTS_DIR, assemble_source
from tests.conftest import QEMU, QEMU_MACHINE, parse_tap

GUEST = str(GUESTS_DIR / "bigmem.S")
RSS_LIMIT_KIB = 512 << 10          # far below any guest size tested here


# The child reports its own peak (VmHWM, which exec resets): a forked child's rusage would
# count the parent's pages it shared before exec, and pytest's process is large.
_CHILD = ("import sys; from emu.cli.main import main; rc = main(sys.argv[1:]); "
          "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]; "
          "print('svmemu-peak-rss-kib', hwm, file=sys.stderr); sys.exit(rc)")


def svmemu(*args: str) -> tuple[int, str, str, int]:
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    err = p.stderr.decode()
    rss = -1
    lines = []
    for line in err.splitlines(keepends=True):
        if line.startswith("svmemu-peak-rss-kib "):
            rss = int(line.split()[1])
        else:
            lines.append(line)
    return p.returncode, p.stdout.decode(), "".join(lines), rss


@pytest.mark.parametrize("mem", ["4G", "16G"])
def test_ram_above_4g_reads_back_with_little_resident_memory(mem):
    status, out, err, rss = svmemu("run", GUEST, "-m", mem)
    checks = parse_tap(out)
    assert status == 1 and len(checks) == 5 and all(c.ok for c in checks.values()), out + err
    assert 0 < rss < RSS_LIMIT_KIB, f"peak RSS {rss} KiB for a {mem} guest"


@pytest.mark.parametrize("mem", ["4G", "16G"])
def test_ram_above_4g_matches_qemu(mem, tmp_path):
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH; QEMU comparisons skipped")
    img = tmp_path / "bigmem.bin"
    img.write_bytes(assemble_source(GUEST))
    machine = list(QEMU_MACHINE)
    machine[machine.index("-m") + 1] = mem
    q = subprocess.run([QEMU, *machine, "-kernel", str(img)], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    _, out, _, _ = svmemu("run", GUEST, "-m", mem)
    qout = q.stdout.decode()
    assert q.returncode == 1, qout
    assert [ln for ln in out.splitlines() if ln.startswith("# wrote")] == \
           [ln for ln in qout.splitlines() if ln.startswith("# wrote")]
    assert "# pass 5 fail 0" in qout


def test_fast_reset_of_a_16g_guest_stays_small():
    """A reset point over 16 GiB: only the pages the guest wrote are copied into the reset
    image, and a reset drops what the run dirtied."""
    code = f"""
from emu.core.fastreset import ResetPoint
from emu.core.machine import Machine
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
m = Machine(16 << 30, stdout=None)
m.load_multiboot(parse_image(assemble_source({GUEST!r}), "g", m.ram_size), "g ")
assert m.run(max_insns=2000).reason == "max-insns"
point = ResetPoint(m)
oks = 0
for _ in range(2):
    res = m.run(timeout=60)
    assert res.reason == "exit" and res.status == 1, res
    oks += bytes(m.serial.output).count(b"ok ")
    point.reset()
print("ok", oks, open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    word, oks, rss = p.stdout.decode().split()
    assert int(oks) == 10                          # both runs passed their five checks
    assert int(rss) < RSS_LIMIT_KIB


def test_snapshot_of_a_4g_guest_resumes(tmp_path):
    snap = tmp_path / "big.snap"
    status, out, err, _ = svmemu("run", GUEST, "-m", "4G", "--snapshot-at", "20000",
                                 "--snapshot", str(snap))
    assert status == 0, err
    assert snap.stat().st_size < 1 * MiB
    status, out2, err, rss = svmemu("resume", str(snap))
    assert status == 1 and "# pass 5 fail 0" in out + out2, out + out2 + err
    assert rss < RSS_LIMIT_KIB


@pytest.mark.parametrize("mem,text", [("65G", "outside 2M..64G"), ("1M", "outside 2M..64G"),
                                      ("0", "outside 2M..64G"), ("abc", "bad memory size"),
                                      ("3000", "RAM size")])
def test_bad_memory_sizes_are_one_line(mem, text):
    status, out, err, _ = svmemu("run", str(GUESTS_DIR / "hello.S"), "-m", mem, "-q")
    if mem == "3000":
        assert status == 1                          # 3000 MiB is fine: all below 4 GiB
        return
    assert status == 2 and err.count("\n") == 1 and text in err, err


@pytest.mark.parametrize("size", [128 * MiB, 3200 * MiB, 3584 * MiB, 4 * GiB, 64 * GiB])
def test_layout_is_qemus(size):
    lay = ram_layout(size)
    assert lay.below_4g + lay.above_4g == size
    assert lay.below_4g == (size if size < 3584 * MiB else 3 * GiB)
    usable = sum(n for b, n, t in e820_map(size) if t == 1)
    assert usable == size - 0x400 - 0x60000 - 0x20000   # EBDA, 0xA0000-0xFFFFF, firmware top
