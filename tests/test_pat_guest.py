"""guests/svm_pat.S under each PAT model: its own TAP verdicts, the same verdicts as QEMU TCG for
`shared`, and the PAT registers and vmcb12.g_pat seen from outside at every world switch.

The guest's constants (HPAT, GPAT, ...) are repeated here on purpose: the test checks that the
values the guest put in the registers are the ones the architecture says each model holds."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pytest

from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from emu.core.msr import MSR_PAT
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import VMEXIT_EXCP0, VMEXIT_INVALID, VMEXIT_MSR, VMEXIT_VMMCALL, Vmcb
from tests.conftest import QEMU, parse_tap, run_qemu
from tests.test_guests_qemu import QEMU_KNOWN_WRONG

SOURCE = str(GUESTS_DIR / "svm_pat.S")
VMCB = 0x800000
HPAT = 0x0007010600070406
GPAT = 0x0606060606060606
NEWPAT = 0x0005040100070406
EDITPAT = 0x0404040404040404
BADPAT0 = 0x0007040600070402
PAT_RESET = 0x0007040600070406
CHECKS = 34
QEMU_FAILS = frozenset(QEMU_KNOWN_WRONG["svm_pat"])


@dataclass(frozen=True)
class Switch:
    """The PAT state right after one world switch, as the model and the VMCB hold it."""
    to: str                 # "L1" or "L2"
    hpat: int               # ext.pat.hpat(): L1's PAT wherever the model keeps it
    gpat: int               # ext.pat.gpat_value()
    gpat_valid: bool
    storage: int            # the one PAT storage location (machine.msrs.values[PAT])
    g_pat: int              # vmcb12.g_pat in guest memory
    exitcode: int


@dataclass
class Run:
    m: Machine
    ext: SvmExtension
    reason: str
    status: int
    output: str
    switches: list[Switch]

    def failed(self) -> set[str]:
        return {name for name, line in parse_tap(self.output).items() if not line.ok}


@lru_cache(maxsize=1)
def image_bytes() -> bytes:
    return assemble_source(SOURCE)


@lru_cache(maxsize=None)
def run(model: str) -> Run:
    ext = SvmExtension(pat_model=model)
    m = Machine(128 << 20, stdout=None, extensions=[ext])
    m.load_multiboot(parse_image(image_bytes(), SOURCE, m.ram_size), f"{SOURCE} ")
    switches: list[Switch] = []
    vm = Vmcb(m.mem.view, VMCB)

    def observe(old: str, new: str) -> None:
        p = ext.pat
        switches.append(Switch(new, p.hpat(), p.gpat_value(), p.gpat_valid,
                               m.msrs.values[MSR_PAT], vm.save.g_pat, vm.exitcode))
    m.world_observers.append(observe)
    res = m.run(timeout=60)
    return Run(m, ext, res.reason, res.status, bytes(m.serial.output).decode(), switches)


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_every_check_passes(model):
    r = run(model)
    checks = parse_tap(r.output)
    assert len(checks) == CHECKS, r.output
    assert r.failed() == set(), r.output
    assert r.reason == "exit" and r.status == 1
    assert f"# pass {CHECKS} fail 0" in r.output


def test_shared_fails_exactly_what_qemu_is_known_to_fail():
    r = run("shared")
    checks = parse_tap(r.output)
    assert len(checks) == CHECKS and "Bail out!" not in r.output
    assert r.failed() == QEMU_FAILS, r.output
    assert r.reason == "exit" and r.status == 3      # isa-debug-exit value 1: some checks failed


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not on PATH")
def test_shared_fails_the_same_checks_as_qemu(tmp_path):
    path = tmp_path / "svm_pat.bin"
    path.write_bytes(image_bytes())
    q = run_qemu(path, timeout=10)
    assert not q.timed_out and "Bail out!" not in q.output, q.output
    qemu_checks = parse_tap(q.output)
    ours = parse_tap(run("shared").output)
    assert list(qemu_checks) == list(ours)            # same checks, same order
    qemu_failed = {name for name, line in qemu_checks.items() if not line.ok}
    assert qemu_failed == run("shared").failed()
    # and the values each failing check saw agree too (both are one shared PAT, no g_pat)
    for name in qemu_failed:
        assert qemu_checks[name].detail == ours[name].detail, name
    assert q.status == run("shared").status


# ---- the registers behind the verdicts ------------------------------------------------------------

def test_first_round_trip_under_architectural():
    s = run("architectural").switches
    entry, exit_ = s[0], s[1]
    assert entry.to == "L2" and entry.gpat_valid
    assert (entry.hpat, entry.gpat, entry.storage) == (HPAT, GPAT, HPAT)   # two registers
    assert exit_.to == "L1" and not exit_.gpat_valid
    assert exit_.g_pat == NEWPAT and exit_.exitcode == VMEXIT_VMMCALL
    assert exit_.hpat == exit_.storage == HPAT


def test_first_round_trip_under_swap():
    s = run("swap").switches
    entry, exit_ = s[0], s[1]
    assert entry.to == "L2" and entry.gpat_valid
    assert entry.storage == GPAT                       # the one storage holds gPAT ...
    assert (entry.hpat, entry.gpat) == (HPAT, GPAT)    # ... and L1's value is parked
    assert run("swap").ext.pat.parked_hpat == HPAT
    assert exit_.to == "L1" and not exit_.gpat_valid
    assert exit_.g_pat == NEWPAT and exit_.hpat == exit_.storage == HPAT


def test_first_round_trip_under_shared():
    s = run("shared").switches
    entry, exit_ = s[0], s[1]
    assert not entry.gpat_valid and entry.storage == HPAT   # g_pat not loaded
    assert exit_.g_pat == GPAT                               # ... nor stored
    assert exit_.storage == NEWPAT                           # L2's write is L1's PAT


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_models_agree_on_every_architectural_value(model):
    """At every switch both models report the same hPAT, gPAT, VALID_GPAT and g_pat, so the
    snapshot section (PatModel.state) never tells the models apart, in L1 or in L2."""
    mine = run(model).switches
    other = run("swap" if model == "architectural" else "architectural").switches
    assert len(mine) == len(other)
    for a, b in zip(mine, other):
        assert (a.to, a.hpat, a.gpat, a.gpat_valid, a.g_pat, a.exitcode) == \
            (b.to, b.hpat, b.gpat, b.gpat_valid, b.g_pat, b.exitcode)


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_switch_sequence_and_final_state(model):
    r = run(model)
    to = [s.to for s in r.switches]
    # 11 VMRUNs: two fail their checks (reserved g_pat) without a world switch.
    assert to == ["L2", "L1"] * 9
    codes = [s.exitcode for s in r.switches if s.to == "L1"]
    assert codes == ([VMEXIT_VMMCALL] * 3 + [VMEXIT_EXCP0 + 13, VMEXIT_VMMCALL, VMEXIT_MSR]
                     + [VMEXIT_VMMCALL] * 3)
    assert r.ext.state.stats == {"vmrun": 9, "vmexit": 11}
    assert "G_PAT" in (r.ext.last_invalid_reason or "")
    # nested paging was on for the first seven entries only
    assert [s.gpat_valid for s in r.switches if s.to == "L2"] == [True] * 7 + [False] * 2
    assert [s.gpat for s in r.switches if s.to == "L2"][:7] == \
        [GPAT, NEWPAT, EDITPAT, GPAT, GPAT, GPAT, GPAT]
    vm = Vmcb(r.m.mem.view, VMCB)
    assert vm.save.g_pat == BADPAT0 and vm.exitcode == VMEXIT_VMMCALL   # NPT off: not checked
    assert r.ext.pat.hpat() == r.m.msrs.rdmsr(MSR_PAT) == PAT_RESET
    assert not r.ext.pat.gpat_valid and not r.ext.state.in_l2


def test_shared_switch_sequence():
    r = run("shared")
    assert [s.to for s in r.switches] == ["L2", "L1"] * 11   # reserved g_pat runs L2 too
    assert r.ext.state.stats == {"vmrun": 11, "vmexit": 11}
    assert r.ext.last_invalid_reason is None
    assert not any(s.gpat_valid for s in r.switches)
    assert VMEXIT_INVALID not in [s.exitcode for s in r.switches]
