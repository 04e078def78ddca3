"""The command line: every bad input gives one clear line and a non-zero status, never a
traceback; run limits end runaway guests."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.cli.main import main
from emu.core.machine import STATUS_BAD_INPUT, STATUS_LIMIT, STATUS_SHUTDOWN
from tests.tinyimage import ENTRY, asm32


def aout_image(code32: str, load: int = ENTRY, extra_bss: int = 0) -> bytes:
    """A flat a.out-kludge multiboot image: header, then 32-bit code at load + 32."""
    body = asm32(code32, load + 32)
    end = load + 32 + len(body)
    flags = 1 << 16
    header = struct.pack("<IIIIIIII", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF,
                         load, load, end, end + extra_bss, load + 32)
    return header + body


def run_cli(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_aout_guest_prints_and_exits(tmp_path, capsys):
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image("""
        mov dx, 0x3f8
        mov al, 0x4F
        out dx, al
        mov al, 0x4B
        out dx, al
        mov al, 3
        out 0xf4, al
    """))
    status, out, err = run_cli(capsys, "run", str(img))
    assert (status, out) == ((3 << 1) | 1, "OK")


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x00" * 9000, "no multiboot header"),
    (struct.pack("<III", 0x1BADB002, 1 << 16, (-(0x1BADB002 + (1 << 16))) & 0xFFFFFFFF), "truncated"),
    (struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF) + b"garbage", "not ELF"),
    (b"\x7fELF" + b"\x01" * 4 + struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
     + b"\x01" * 50, "bad"),
])
def test_bad_images_are_one_line_errors(tmp_path, capsys, content, needle):
    img = tmp_path / "bad.bin"
    img.write_bytes(content)
    status, out, err = run_cli(capsys, "run", str(img))
    assert status == STATUS_BAD_INPUT
    assert needle in err and err.count("\n") == 1


def test_image_outside_ram(tmp_path, capsys):
    img = tmp_path / "far.bin"
    img.write_bytes(aout_image("hlt", load=0x7F00000))
    status, out, err = run_cli(capsys, "run", "-m", "16", str(img))
    assert status == STATUS_BAD_INPUT and "outside" in err


def test_missing_file(capsys):
    status, out, err = run_cli(capsys, "run", "/nonexistent/kernel.bin")
    assert status == STATUS_BAD_INPUT and "cannot read" in err


@pytest.mark.parametrize("argv,needle", [
    (["run", "x", "--max-insns", "-5"], "must be positive"),
    (["run", "x", "--timeout", "soon"], "not a number"),
    (["run", "x", "-m", "lots"], "bad memory size"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options(tmp_path, capsys, argv, needle):
    img = tmp_path / "x"
    img.write_bytes(aout_image("hlt"))
    argv = [str(img) if a == "x" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    if e.value.code == 0:
        pytest.fail("accepted a bad option")
    assert needle in err or needle in str(e.value)
    assert "Traceback" not in err


def test_trace_option_error_is_not_a_crash(tmp_path, capsys):
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image("hlt"))
    status, out, err = run_cli(capsys, "run", "--trace", "everything", str(img))
    assert status == STATUS_BAD_INPUT and "unknown trace categories" in err


def test_runaway_guest_limits(tmp_path, capsys):
    img = tmp_path / "spin.bin"
    img.write_bytes(aout_image("spin: jmp spin"))
    status, out, err = run_cli(capsys, "run", "--max-insns", "5000", str(img))
    assert status == STATUS_LIMIT and "instruction limit" in err
    status, out, err = run_cli(capsys, "run", "--timeout", "0.2", str(img))
    assert status == STATUS_LIMIT and "timeout" in err


def test_trace_file_lists_exceptions_and_io(tmp_path, capsys):
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image("mov al, 1\n mov dx, 0x1230\n out dx, al\n lidt [0]\n ud2"))
    trace = tmp_path / "t.txt"
    status, out, err = run_cli(capsys, "run", "--trace", "io,exc", "--trace-file", str(trace),
                               str(img))
    assert status == STATUS_SHUTDOWN
    text = trace.read_text()
    assert "out port 0x1230" in text and "no device" in text


def test_output_pipe_closed_early_ends_quietly():
    """`svmemu run guest | head -c 1`: no 'internal error' when the reader goes away."""
    import subprocess
    import sys
    proc = subprocess.run(f"{sys.executable} -m emu.cli run guests/svm_world_switch.S | head -c 1",
                          shell=True, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.stdout == "o"
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_exit_status_guest_passes_the_guest_value_through(tmp_path, capsys):
    img = tmp_path / "k.bin"
    img.write_bytes(aout_image("""
        mov al, 3
        out 0xf4, al
    """))
    assert run_cli(capsys, "run", str(img))[0] == (3 << 1) | 1
    assert run_cli(capsys, "run", "--exit-status", "guest", str(img))[0] == 3


def test_exit_status_guest_chains_in_the_shell():
    """A passing guest (the prelude writes 0) is a shell success, so `&&` runs the next step."""
    import subprocess
    import sys
    proc = subprocess.run(f"{sys.executable} -m emu.cli run guests/hello.S --exit-status guest"
                          f" > /dev/null && echo chained", shell=True, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "chained", proc.stderr


def test_failed_vmrun_is_explained_on_stderr_by_default(capsys):
    """guests/svm_checks.S breaks each consistency rule on purpose; each rule is told once, with
    its APM section, and -q keeps stderr silent."""
    status, _, err = run_cli(capsys, "run", "guests/svm_checks.S")
    assert status == 1                      # the guest passed: it saw VMEXIT_INVALID each time
    told = [l for l in err.splitlines() if "failed its consistency checks" in l]
    assert any("EFER.SVME is zero" in l and "§15.5.1" in l for l in told), err
    assert len(told) == len(set(l.split("): ", 1)[1] for l in told)) > 5
    status, _, err = run_cli(capsys, "run", "-q", "guests/svm_checks.S")
    assert status == 1 and err == ""


@pytest.mark.parametrize("words", [
    ["run", "k.bin", "-m", "64M", "--append", "-x y", "-smp", "2", "--trace", "io", "-q"],
    ["resume", "s.snap", "--max-insns", "5"],
    ["memtype", "s.snap", "0x1000", "--world", "L1"],
    ["fuzz", "k.bin", "--input-at", "0x2000", "--run-input", "in"],
    ["build", "g.S", "-o", "g.bin", "--elf"],
])
def test_a_command_parses_alike_with_only_its_own_options(words):
    """The parser a start builds (only the named subcommand's options) reads a command line as
    the whole parser does."""
    from emu.cli.main import _command_of, _join_values, build_parser
    words = _join_values(words)
    assert _command_of(words) == words[0]
    assert vars(build_parser(words[0]).parse_args(words)) == vars(build_parser().parse_args(words))


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "resume", "memtype", "fuzz", "build"))


def test_the_command_ends_with_its_files_and_output_complete(tmp_path):
    """`python -m emu.cli` ends the process without tearing the machine down: the guest's
    output, the trace file and the snapshot must all be whole, and the status the run's."""
    import subprocess
    import sys
    from emu.core import snapshot
    root = Path(__file__).resolve().parents[1]
    trace, snap = tmp_path / "t.txt", tmp_path / "s.snap"
    guest = str(root / "guests/hello.S")
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", guest, "--trace", "io",
                        "--trace-file", str(trace)], capture_output=True, cwd=root)
    assert r.returncode == 1 and r.stdout.rstrip().endswith(b"# pass 1 fail 0"), r
    assert b"svmemu: exit" in r.stderr
    assert trace.read_text().rstrip().endswith("value 0x0 (debug-exit)")
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", guest, "--snapshot-at", "200",
                        "--snapshot", str(snap), "-q"], capture_output=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert snapshot.read(str(snap)).ram_size == 128 << 20


def test_the_process_start_leaves_the_collector_on_for_the_run():
    """emu/cli/command.py imports with the cyclic collector off; the command itself runs with
    it on again, and the start-up's objects frozen out of its passes."""
    import subprocess
    import sys
    code = ("import gc, emu.cli.main as m\n"
            "m.entry = lambda: print(gc.isenabled(), gc.get_freeze_count() > 10000)\n"
            "from emu.cli.command import start\n"
            "start()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["True", "True"], r.stderr
