"""Coverage outputs: drcov v2 read back by an independent reader written here (not our writer's
code), with L1 and L2 code in different modules; Tenet lines for a known instruction sequence."""
from __future__ import annotations

import re
import struct
from pathlib import Path

from emu.cli.main import main
from emu.loader.asm import assemble
from tests.tinyimage import BODY, long_mode_image, to_elf32

GUESTS = Path(__file__).resolve().parent.parent / "guests"


def read_drcov(data: bytes) -> tuple[dict[int, tuple[str, int, int]], list[tuple[int, int, int]]]:
    """An independent drcov v2 reader, following DynamoRIO's published layout: modules by id as
    (path, base, end) and blocks as (module id, start offset, size)."""
    pos = 0

    def line() -> str:
        nonlocal pos
        end = data.index(b"\n", pos)
        text = data[pos:end].decode()
        pos = end + 1
        return text

    assert line() == "DRCOV VERSION: 2"
    assert line().startswith("DRCOV FLAVOR:")
    m = re.fullmatch(r"Module Table: version 2, count (\d+)", line())
    assert m
    count = int(m.group(1))
    columns = [c.strip() for c in line().removeprefix("Columns:").split(",")]
    assert columns[:3] == ["id", "base", "end"] and columns[-1] == "path"
    modules = {}
    for _ in range(count):
        cells = [c.strip() for c in line().split(",", len(columns) - 1)]
        row = dict(zip(columns, cells))
        modules[int(row["id"])] = (row["path"], int(row["base"], 16), int(row["end"], 16))
    m = re.fullmatch(r"BB Table: (\d+) bbs", line())
    assert m
    n = int(m.group(1))
    assert len(data) - pos == 8 * n, "the BB table is not exactly N 8-byte entries"
    blocks = []
    for i in range(n):
        start, size, mod = struct.unpack_from("<IHH", data, pos + 8 * i)
        blocks.append((mod, start, size))
    return modules, blocks


def _covered(modules, blocks, suffix: str) -> set[int]:
    """Absolute start addresses of the blocks in the one module whose path ends in `suffix`."""
    ids = [i for i, (path, _, _) in modules.items() if path.endswith(suffix)]
    assert len(ids) == 1, f"expected one module for {suffix}, got {modules}"
    base = modules[ids[0]][1]
    return {base + start for mod, start, _ in blocks if mod == ids[0]}


def _contains(covered: set[int], blocks, modules, suffix: str, addr: int) -> bool:
    ids = [i for i, (path, _, _) in modules.items() if path.endswith(suffix)]
    base = modules[ids[0]][1]
    return any(mod == ids[0] and base + s <= addr < base + s + size for mod, s, size in blocks)


def test_drcov_puts_l1_and_l2_code_in_different_modules(tmp_path, capsys):
    src = GUESTS / "svm_world_switch.S"
    out = tmp_path / "cov.drcov"
    status = main(["run", str(src), "--coverage", f"drcov:{out}", "-q"])
    capsys.readouterr()
    assert status == 1                       # the guest passed (isa-debug-exit 0)
    modules, blocks = read_drcov(out.read_bytes())
    names = sorted(p for p, _, _ in modules.values())
    assert names == ["svm_world_switch.S@L1", "svm_world_switch.S@L2.asid1"]
    for path, base, end in modules.values():
        assert base < end
    for mod, start, size in blocks:
        _, base, end = modules[mod]
        assert size > 0 and base + start + size <= end
    sym = assemble(str(src)).symbols
    l2 = _covered(modules, blocks, "@L2.asid1")
    l1 = _covered(modules, blocks, "@L1")
    # L2's code ran only in L2; L1's main only in L1; no L0 trampoline code anywhere.
    assert sym["l2_entry"] in l2 and sym["l2_entry"] not in l1
    assert _contains(l2, blocks, modules, "@L2.asid1", sym["l2_ud2"])
    assert _contains(l1, blocks, modules, "@L1", sym["main"])
    assert not _contains(l2, blocks, modules, "@L2.asid1", sym["main"])
    assert all(a < 1 << 32 for a in l1 | l2)


def test_no_coverage_without_the_option(tmp_path, capsys):
    status = main(["run", str(GUESTS / "hello.S"), "-q"])
    capsys.readouterr()
    assert status == 1
    assert not list(tmp_path.iterdir())


def test_bad_coverage_spec_is_one_line(capsys):
    status = main(["run", str(GUESTS / "hello.S"), "--coverage", "lcov:x"])
    err = capsys.readouterr().err
    assert status == 2 and "unknown coverage format" in err and "Traceback" not in err


SEQUENCE = """
    mov rax, 0x1234
    mov rbx, 0x600000
    mov [rbx], rax
    mov rcx, [rbx]
    add rcx, 1
    mov al, 0
    out 0xf4, al
"""


def _parse_tenet(line: str) -> tuple[dict[str, int], list[tuple[str, int, str]]]:
    regs, mem = {}, []
    for item in line.split(","):
        key, val = item.split("=")
        if key in ("mr", "mw"):
            addr, data = val.split(":")
            mem.append((key, int(addr, 16), data))
        else:
            regs[key] = int(val, 16)
    return regs, mem


def test_tenet_lines_for_a_known_sequence(tmp_path, capsys):
    img = tmp_path / "k.elf"
    img.write_bytes(to_elf32(long_mode_image(SEQUENCE)))
    trace = tmp_path / "t.tenet"
    status = main(["run", str(img), "--tenet", str(trace), "-q"])
    capsys.readouterr()
    assert status == 1
    lines = trace.read_text().splitlines()
    first = _parse_tenet(lines[0])[0]
    assert set(first) == {"rax", "rbx", "rcx", "rdx", "rbp", "rsp", "rsi", "rdi", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip"}
    parsed = [_parse_tenet(l) for l in lines]
    start = next(i for i, (r, _) in enumerate(parsed) if r.get("rip") == BODY)
    body = parsed[start:start + 7]
    rips = [r["rip"] for r, _ in body]
    assert rips == [BODY, BODY + 7, BODY + 14, BODY + 17, BODY + 20, BODY + 24, BODY + 26]
    # Each line shows the registers the previous instruction changed, then its own accesses.
    assert body[1][0] == {"rax": 0x1234, "rip": BODY + 7} and body[1][1] == []
    assert body[2][0] == {"rbx": 0x600000, "rip": BODY + 14}
    assert body[2][1] == [("mw", 0x600000, "3412000000000000")]
    assert body[3][1] == [("mr", 0x600000, "3412000000000000")]
    assert body[4][0] == {"rcx": 0x1234, "rip": BODY + 20}
    assert body[5][0] == {"rcx": 0x1235, "rip": BODY + 24}
    assert body[6][0] == {"rax": 0x1200, "rip": BODY + 26}


def test_code_run_by_l1_and_l2_at_one_address_is_in_both_modules(tmp_path, capsys):
    """svm_fuzz_target's `shared_load` is called by L2 and by L1: same address, two modules."""
    src = GUESTS / "svm_fuzz_target.S"
    out = tmp_path / "cov.drcov"
    status = main(["run", str(src), "--coverage", f"drcov:{out}", "-q"])
    capsys.readouterr()
    assert status == 1
    modules, blocks = read_drcov(out.read_bytes())
    sym = assemble(str(src)).symbols
    l1 = _covered(modules, blocks, "@L1")
    l2 = _covered(modules, blocks, "@L2.asid1")
    assert sym["shared_load"] in l1 and sym["shared_load"] in l2
    assert sym["l2_entry"] in l2 and sym["l2_entry"] not in l1
    assert _contains(l1, blocks, modules, "@L1", sym["handle_vmmcall"])
    assert not _contains(l2, blocks, modules, "@L2.asid1", sym["handle_vmmcall"])


def test_tenet_writes_one_file_per_address_space(tmp_path, capsys):
    src = GUESTS / "svm_world_switch.S"
    trace = tmp_path / "t.tenet"
    status = main(["run", str(src), "--tenet", str(trace), "-q"])
    capsys.readouterr()
    assert status == 1
    sym = assemble(str(src)).symbols
    l1 = [_parse_tenet(l)[0] for l in trace.read_text().splitlines()]
    l2 = [_parse_tenet(l)[0] for l in (tmp_path / "t.tenet.L2.asid1").read_text().splitlines()]
    assert l2[0]["rip"] == sym["l2_entry"] and len(l2[0]) == 17      # a full first line
    assert l2[1] == {"rbx": 0x4242, "rip": sym["l2_vmmcall"]}
    l2_code = {sym["l2_entry"], sym["l2_vmmcall"], sym["l2_ud2"]}
    assert not l2_code & {r["rip"] for r in l1}
    assert sym["main"] in {r["rip"] for r in l1}
