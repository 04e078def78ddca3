"""The fuzz harness without AFL: `svmemu fuzz --run-input`, the fast reset between inputs, VMCB
inputs and crash rules, on the bundled target with its planted bug (guests/svm_fuzz_target.S)."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.cli.main import build_parser, main
from emu.cli.fuzz import STATUS_CRASH, build_harness
from emu.loader.asm import assemble

TARGET = str(Path(__file__).resolve().parent.parent / "guests" / "svm_fuzz_target.S")
CRASH = b"\x10SVM!"                # the planted bug: index 16, command "SVM!"
BENIGN = b"\x03PING"
IN_BOUNDS = b"\x0fSVM!"            # the magic path, index in bounds
MEM_OPTS = ["--input-at", "fuzz_input:16", "--start-at", "l2_entry", "--crash-on", "triple-fault"]


def run_input(tmp_path, capsys, data: bytes, *opts: str):
    f = tmp_path / "input.bin"
    f.write_bytes(data)
    status = main(["fuzz", TARGET, *opts, "--run-input", str(f)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def test_crashing_input_is_a_crash(tmp_path, capsys):
    status, err = run_input(tmp_path, capsys, CRASH, *MEM_OPTS)
    assert status == STATUS_CRASH
    assert "crash: triple fault" in err


@pytest.mark.parametrize("data", [BENIGN, IN_BOUNDS, b"", b"SVM"])
def test_other_inputs_do_not_crash(tmp_path, capsys, data):
    status, err = run_input(tmp_path, capsys, data, *MEM_OPTS)
    assert status == 0, err
    assert "no crash" in err


def _harness(*opts: str):
    args = build_parser().parse_args(["fuzz", TARGET, *opts, "--run-input", "unused"])
    return build_harness(args)


def test_reset_between_inputs_undoes_each_run():
    h = _harness(*MEM_OPTS)
    sym = assemble(TARGET).symbols
    m = h.machine
    idtr = bytes(m.ram[sym["host_idtr"]:sym["host_idtr"] + 10])
    assert idtr != bytes(10)
    verdicts = [h.run_input(d) for d in (BENIGN, CRASH, BENIGN, CRASH, IN_BOUNDS)]
    assert [v.crashed for v in verdicts] == [False, True, False, True, False]
    # Each benign run passed every check: the crash before it left nothing behind.
    for v in (verdicts[0], verdicts[2]):
        assert v.result.reason == "exit" and v.result.status == 1
    assert verdicts[4].result.status == 3          # "PING answered" fails: the answer was 1
    h.reset_point.reset()
    assert bytes(m.ram[sym["host_idtr"]:sym["host_idtr"] + 10]) == idtr
    assert m.mem.read_u64(sym["hc_count"]) == 0    # as at the reset point (L2 not yet called)
    assert h.reset_point.resets == 4 + 1
    assert h.reset_point.tb_flushes == 0           # the target never rewrites its code


def test_reset_flushes_translations_of_rewritten_code():
    """A run that patches code it then executes must not leave those translations behind."""
    h = _harness(*MEM_OPTS)
    sym = assemble(TARGET).symbols
    m = h.machine
    at = sym["shared_load"]
    original = bytes(m.ram[at:at + 4])
    h.run_input(BENIGN)
    m.ram[at:at + 4] = b"\x0f\x0b\x0f\x0b"          # ud2: as if the run had rewritten it
    h.reset_point.reset()
    assert bytes(m.ram[at:at + 4]) == original
    assert h.reset_point.tb_flushes == 1
    assert not h.run_input(BENIGN).crashed


def test_vmcb_input_fuzzes_the_next_vmrun(tmp_path, capsys):
    opts = ["--input-vmcb", "guest_asid", "--crash-on", "vmexit=-1"]
    status, err = run_input(tmp_path, capsys, struct.pack("<I", 0), *opts)
    assert status == STATUS_CRASH and "VMEXIT_INVALID" in err or "0xffffffffffffffff" in err
    status, err = run_input(tmp_path, capsys, struct.pack("<I", 7), *opts)
    assert status == 0, err
    # A short input leaves the rest of the field as L1 wrote it (ASID 1).
    status, err = run_input(tmp_path, capsys, b"", *opts)
    assert status == 0, err


def test_vmexit_rule_sees_exits_to_l1(tmp_path, capsys):
    status, err = run_input(tmp_path, capsys, BENIGN, "--input-at", "fuzz_input:16",
                            "--start-at", "l2_entry", "--crash-on", "vmexit=0x81")
    assert status == STATUS_CRASH and "VMMCALL" in err


def test_serial_and_status_rules(tmp_path, capsys):
    status, err = run_input(tmp_path, capsys, IN_BOUNDS, *MEM_OPTS[:4],
                            "--crash-on", "serial=not ok")
    assert status == STATUS_CRASH and "serial output matched" in err
    status, _ = run_input(tmp_path, capsys, IN_BOUNDS, *MEM_OPTS[:4], "--crash-on", "status=3")
    assert status == STATUS_CRASH
    status, _ = run_input(tmp_path, capsys, BENIGN, *MEM_OPTS[:4], "--crash-on", "status=3")
    assert status == 0


@pytest.mark.parametrize("opts, text", [
    (["--input-at", "no_such_symbol"], "neither a number nor a symbol"),
    (["--input-at", "fuzz_input", "--crash-on", "bogus"], "unknown --crash-on rule"),
    (["--input-vmcb", "no_field"], "no VMCB field"),
    (["--input-at", "fuzz_input", "--start-at", "0x10"], "never reached the start point"),
])
def test_bad_fuzz_options_are_one_line(tmp_path, capsys, opts, text):
    f = tmp_path / "i"
    f.write_bytes(b"x")
    status = main(["fuzz", TARGET, *opts, "--run-input", str(f), "--input-timeout", "2"])
    err = capsys.readouterr().err
    assert status == 2 and text in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_end_at_stops_each_input_before_the_guest_reports():
    h = _harness(*MEM_OPTS, "--end-at", "fuzz_done", "--crash-on", "serial=ok")
    benign = h.run_input(BENIGN)
    assert not benign.crashed and benign.result.reason == "end"
    assert benign.result.rip == assemble(TARGET).symbols["fuzz_done"]
    crash = h.run_input(CRASH)
    assert crash.crashed and "triple fault" in crash.why
    assert not h.run_input(IN_BOUNDS).crashed
