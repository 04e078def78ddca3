"""Snapshots and the PAT models: a snapshot taken while L2 runs with nested paging keeps
hPAT, gPAT and the VALID_GPAT flag whatever the model's storage; it restores under any model and
continues as the architecture says; a format-1 snapshot (no gPAT) restores by the rule in
svm_ext/pat.py (PatModel.load_state, docs/pat-models.md); a damaged PAT section or a truncated
file gives one clear error.

The guest is guests/svm_pat.S; its first L2 run reads PAT (gPAT = GPAT), writes NEWPAT, reads
again and exits. A world observer stops the machine right at that VMRUN, so snapshots land at
known instructions inside L2."""
from __future__ import annotations

import pytest
from unicorn.unicorn_const import UC_HOOK_CODE

from emu.core import snapshot
from emu.errors import SnapshotError
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from emu.core.msr import MSR_PAT
from svm_ext.extension import SvmExtension
from tests.conftest import parse_tap
from tests.test_guests_qemu import QEMU_KNOWN_WRONG

SOURCE = str(GUESTS_DIR / "svm_pat.S")
RAM = 16 << 20
HPAT = 0x0007010600070406
GPAT = 0x0606060606060606
NEWPAT = 0x0005040100070406
CHECKS = 34
QEMU_FAILS = frozenset(QEMU_KNOWN_WRONG["svm_pat"])
L2_READS_GPAT = "L2's RDMSR(PAT) reads vmcb12.g_pat"
# Instructions L2 has run when the snapshot is taken: 1 = before its RDMSR(PAT), 11 = after its
# WRMSR(PAT) of NEWPAT (rdpat is 4 instructions, the store 1, wrpat 5, plus the WRMSR itself).
BEFORE_READ, AFTER_WRITE = 1, 11
GPAT_AT = {BEFORE_READ: GPAT, AFTER_WRITE: NEWPAT}

_IMAGE: list = []


def machine(model: str) -> tuple[Machine, SvmExtension]:
    if not _IMAGE:
        _IMAGE.append(assemble_source(SOURCE))
    ext = SvmExtension(pat_model=model)
    m = Machine(RAM, stdout=None, extensions=[ext])
    m.load_multiboot(parse_image(_IMAGE[0], SOURCE, RAM), f"{SOURCE} ")
    return m, ext


def in_first_l2(model: str, insns: int) -> tuple[Machine, SvmExtension]:
    """A machine `insns` instructions into L2's first run (nested paging on)."""
    m, ext = machine(model)

    def stop_at_l2(old: str, new: str) -> None:
        if new == "L2":
            m.stop("in-l2", 0, "entered L2")
    m.world_observers.append(stop_at_l2)
    assert m.run(timeout=30).reason == "in-l2"
    m.world_observers.remove(stop_at_l2)
    assert m.run(max_insns=insns).reason == "max-insns"
    assert m.level() == "L2" and ext.pat.gpat_valid == (model != "shared")
    return m, ext


def finish(m: Machine) -> tuple[set[str], str]:
    res = m.run(timeout=30)
    out = bytes(m.serial.output).decode()
    checks = parse_tap(out)
    assert res.reason == "exit" and len(checks) == CHECKS, out
    return {n for n, line in checks.items() if not line.ok}, out


def through_file(snap: snapshot.Snapshot, version: int | None = None) -> snapshot.Snapshot:
    return snapshot.decode(snapshot.encode(snap, format_version=version), "l2.snap")


@pytest.fixture(scope="module")
def straight_output() -> str:
    m, _ = machine("architectural")
    failed, out = finish(m)
    assert not failed
    return out


# ---- what the snapshot holds ----------------------------------------------------------------------

@pytest.mark.parametrize("insns", [BEFORE_READ, AFTER_WRITE])
@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_l2_snapshot_holds_hpat_gpat_and_valid_flag(model, insns):
    m, ext = in_first_l2(model, insns)
    snap = snapshot.take(m)
    want = {"hpat": HPAT, "gpat": GPAT_AT[insns], "gpat_valid": True}
    assert snap.extensions["svm"]["pat"] == want
    assert through_file(snap).extensions["svm"]["pat"] == want
    # The storage differs per model (this is the one place a snapshot shows the model) ...
    assert snap.msrs[MSR_PAT] == (HPAT if model == "architectural" else GPAT_AT[insns])
    # ... and the guest-visible value does not: L2's RDMSR(PAT) answers gPAT in both.
    assert m.msrs.rdmsr(MSR_PAT) == GPAT_AT[insns]


def test_l1_snapshot_has_no_live_gpat():
    m, ext = machine("swap")
    m.run(max_insns=3000)
    assert m.level() == "L1"
    sec = snapshot.take(m).extensions["svm"]["pat"]
    assert sec["gpat_valid"] is False and sec["hpat"] == m.msrs.rdmsr(MSR_PAT)


# ---- restoring under every model -----------------------------------------------------------------

@pytest.mark.parametrize("insns", [BEFORE_READ, AFTER_WRITE])
@pytest.mark.parametrize("src,dst", [("architectural", "swap"), ("swap", "architectural"),
                                     ("swap", "swap"), ("architectural", "architectural")])
def test_l2_snapshot_continues_identically_under_the_other_model(src, dst, insns,
                                                                  straight_output):
    m, _ = in_first_l2(src, insns)
    snap = through_file(snapshot.take(m))
    resumed, ext = machine(dst)
    snapshot.restore(resumed, snap)
    assert ext.pat.state() == {"hpat": HPAT, "gpat": GPAT_AT[insns], "gpat_valid": True}
    failed, out = finish(resumed)
    assert not failed and out == straight_output


@pytest.mark.parametrize("insns", [BEFORE_READ, AFTER_WRITE])
@pytest.mark.parametrize("src", ["architectural", "swap"])
def test_l2_snapshot_restored_under_shared_keeps_what_l2_sees(src, insns):
    """Under `shared` the one PAT takes gPAT (what the running L2 sees); from the #VMEXIT on, the
    run is a shared-model run, so it fails QEMU's checks except L2's first read."""
    m, _ = in_first_l2(src, insns)
    resumed, ext = machine("shared")
    snapshot.restore(resumed, through_file(snapshot.take(m)))
    assert resumed.msrs.rdmsr(MSR_PAT) == GPAT_AT[insns] and not ext.pat.gpat_valid
    failed, _ = finish(resumed)
    assert failed == QEMU_FAILS - {L2_READS_GPAT}


# ---- format 1: no gPAT in the snapshot ------------------------------------------------------------

def _as_format_1(snap: snapshot.Snapshot) -> snapshot.Snapshot:
    """What a format-1 file holds: the PAT section has the one register, no gPAT, no flag."""
    data = snapshot.encode(snap, format_version=1)
    old = snapshot.decode(data)
    old.extensions["svm"]["pat"] = {"hpat": snap.msrs[MSR_PAT]}
    old = through_file(old)
    assert old.format_version == 1 and "gpat" not in old.extensions["svm"]["pat"]
    return old


@pytest.mark.parametrize("dst", ["architectural", "swap"])
def test_format_1_snapshot_in_l2_gives_both_pats_the_one_value(dst):
    """Rule: in L2 with nested paging the register was what L2 saw, so it becomes gPAT (live),
    and hPAT takes the same value. Here the shared-model register held HPAT (L2 had not read
    yet), so L2 now reads HPAT instead of g_pat; everything after is architectural."""
    m, _ = in_first_l2("shared", BEFORE_READ)
    assert m.msrs.values[MSR_PAT] == HPAT
    resumed, ext = machine(dst)
    snapshot.restore(resumed, _as_format_1(snapshot.take(m)))
    assert ext.pat.state() == {"hpat": HPAT, "gpat": HPAT, "gpat_valid": True}
    failed, out = finish(resumed)
    assert failed == {L2_READS_GPAT}, out


def test_format_1_snapshot_in_l1_is_hpat():
    m, _ = machine("architectural")
    m.run(max_insns=3000)
    assert m.level() == "L1"
    pat_now = m.msrs.rdmsr(MSR_PAT)
    resumed, ext = machine("swap")
    snapshot.restore(resumed, _as_format_1(snapshot.take(m)))
    assert ext.pat.state() == {"hpat": pat_now, "gpat": pat_now, "gpat_valid": False}
    failed, _ = finish(resumed)
    assert not failed


# ---- damage --------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    ({"gpat": "0x606"}, "gpat is '0x606', not a 64-bit value"),
    ({"gpat": 1 << 64}, "not a 64-bit value"),
    ({"hpat": -1}, "hpat is -1"),
    ({"gpat_valid": 1}, "not true or false"),
    ({"hpat": None}, "not a 64-bit value"),
])
def test_damaged_pat_section_is_one_clear_error(change, message):
    m, _ = in_first_l2("swap", BEFORE_READ)
    snap = snapshot.take(m)
    snap.extensions["svm"]["pat"].update(change)
    bad = through_file(snap)
    with pytest.raises(SnapshotError) as e:
        snapshot.restore(machine("architectural")[0], bad)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_live_gpat_outside_l2_is_an_error():
    m, _ = machine("architectural")
    m.run(max_insns=3000)
    snap = snapshot.take(m)
    snap.extensions["svm"]["pat"]["gpat_valid"] = True
    with pytest.raises(SnapshotError, match="live gPAT but the snapshot is not in L2"):
        snapshot.restore(machine("swap")[0], through_file(snap))


def test_missing_pat_section_is_one_clear_error():
    m, _ = in_first_l2("architectural", BEFORE_READ)
    snap = snapshot.take(m)
    del snap.extensions["svm"]["pat"]
    with pytest.raises(SnapshotError, match="svm section is malformed"):
        snapshot.restore(machine("swap")[0], through_file(snap))


# ---- the CLI -------------------------------------------------------------------------------------

def _first_l2_instruction_count() -> int:
    """How many instructions `--snapshot-at` must count to stop BEFORE_READ into L2's first run."""
    m, _ = machine("architectural")
    count = [0]
    m.uc.hook_add(UC_HOOK_CODE, lambda *a: count.__setitem__(0, count[0] + 1))

    def stop_at_l2(old: str, new: str) -> None:
        if new == "L2":
            m.stop("in-l2", 0, "entered L2")
    m.world_observers.append(stop_at_l2)
    assert m.run(timeout=30).reason == "in-l2"
    return count[0] + BEFORE_READ


def test_cli_snapshot_in_l2_resumes_under_another_model(tmp_path, capsys, straight_output):
    from emu.cli.main import main
    n = _first_l2_instruction_count()
    m, _ = machine("swap")
    assert m.run(max_insns=n).reason == "max-insns" and m.level() == "L2"
    path = str(tmp_path / "l2.snap")
    status = main(["run", SOURCE, "-m", "16", "--pat-model", "swap", "--snapshot-at", str(n),
                   "--snapshot", path])
    first, err = capsys.readouterr()
    assert status == 0 and "snapshot" in err
    assert snapshot.read(path).extensions["svm"]["pat"] == {"hpat": HPAT, "gpat": GPAT,
                                                             "gpat_valid": True}
    status = main(["resume", path, "--pat-model", "architectural"])
    rest, _ = capsys.readouterr()
    assert status == 1                  # isa-debug-exit 0: every check passed (as on QEMU)
    assert first + rest == straight_output

    data = open(path, "rb").read()
    for cut in (len(data) // 3, len(data) - 1):
        bad = tmp_path / f"cut{cut}.snap"
        bad.write_bytes(data[:cut])
        status = main(["resume", str(bad), "--pat-model", "swap"])
        out, err = capsys.readouterr()
        assert status == 2 and out == ""
        assert err.startswith("svmemu: error: ") and err.count("\n") == 1
        assert "truncated" in err or "corrupt" in err
