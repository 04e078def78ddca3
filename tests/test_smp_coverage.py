"""Coverage and Tenet traces of several CPUs: every CPU's code is recorded, each under its own
CPU. guests/smp.S sends its pings to CPU 1, its pongs to the boot CPU and its NMI to CPU 2, and
runs L2 guests on CPUs 0 and 1 only: the per-CPU modules and files must show exactly that."""
from __future__ import annotations

import re
from pathlib import Path

from emu.cli.main import main
from emu.loader.asm import GUESTS_DIR, assemble
from tests.test_coverage import read_drcov

SMP_GUEST = GUESTS_DIR / "smp.S"
SYM = assemble(str(SMP_GUEST)).symbols


def _blocks_by_module(path: Path) -> dict[str, set[int]]:
    modules, blocks = read_drcov(path.read_bytes())
    out: dict[str, set[int]] = {}
    for mod, start, _size in blocks:
        name, base, _ = modules[mod]
        out.setdefault(name, set()).add(base + start)
    return out


def test_drcov_tags_each_cpu(tmp_path):
    cov = tmp_path / "smp.drcov"
    status = main(["run", str(SMP_GUEST), "-smp", "4", "--coverage", f"drcov:{cov}", "-q"])
    assert status == 1                      # the guest passed (isa-debug-exit 0)
    mods = _blocks_by_module(cov)
    spaces = {name.split("@", 1)[1] for name in mods}
    assert {"cpu0.L1", "cpu1.L1", "cpu2.L1", "cpu3.L1"} <= spaces, spaces
    l2 = sorted(s for s in spaces if ".L2" in s)
    assert [s.split(".")[0] for s in l2] == ["cpu0", "cpu1"], spaces   # L2s on CPUs 0 and 1 only
    assert all(SYM["l2_entry"] in mods[f"smp.S@{s}"] for s in l2)

    def where(symbol: str) -> list[str]:
        return sorted(name.split("@", 1)[1] for name, starts in mods.items()
                      if SYM[symbol] in starts)
    assert where("ping_handler") == ["cpu1.L1"]
    assert where("pong_handler") == ["cpu0.L1"]
    assert where("nmi_handler") == ["cpu2.L1"]
    assert where("ap_start64") == ["cpu1.L1", "cpu2.L1", "cpu3.L1"]


def test_tenet_writes_one_file_per_cpu(tmp_path):
    """The first 40,000 instructions (a Python call each): the boot CPU has started the APs,
    which each run the start-up trampoline at 0x7000 in real mode."""
    tenet = tmp_path / "smp.tenet"
    status = main(["run", str(SMP_GUEST), "-smp", "4", "--tenet", str(tenet), "-q",
                   "--max-insns", "40000"])
    assert status == 8
    files = {p.name.removeprefix("smp.tenet").lstrip("."): p for p in tmp_path.glob("smp.tenet*")}
    assert set(files) == {"", "cpu1.L1", "cpu2.L1", "cpu3.L1"}, files

    def rips(name: str) -> list[int]:
        return [int(m, 16) for m in re.findall(r"rip=(0x[0-9a-f]+)", files[name].read_text())]
    assert SYM["main"] in rips("") and SYM["ap_tramp"] not in rips("")
    for ap in ("cpu1.L1", "cpu2.L1", "cpu3.L1"):
        lines = files[ap].read_text().splitlines()
        # Register deltas are per file: each AP's first line has all its registers.
        assert lines[0].startswith("rax=") and "r15=" in lines[0]
        assert rips(ap)[0] == 0x7000 and SYM["main"] not in rips(ap)
