"""Multiboot loading as QEMU 7.2 does it: a.out kludge and ELF images, the information block,
and one clear ImageError for every bad image, whatever the bytes."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import ImageError, OptionError
from emu.loader.multiboot import (MBI_ADDR, MBI_FLAGS, BootImage, build_mbi, memory_map,
                                  parse_image, qemu_cmdline)

RAM = 128 << 20
MAGIC = 0x1BADB002
AOUT = 1 << 16


def mb_header(flags: int, *fields: int) -> bytes:
    return struct.pack("<III", MAGIC, flags, (-(MAGIC + flags)) & 0xFFFFFFFF) + struct.pack(
        f"<{len(fields)}I", *fields)


def aout(code: bytes = b"\xf4", load: int = 0x100000, pad: int = 0, bss: int = 0,
         load_end: int | None = None, bss_end: int | None = None, flags: int = AOUT) -> bytes:
    """Flat image: `pad` bytes, the header, then code; loaded from the start of the file."""
    header_addr = load + pad
    end = load + pad + 32 + len(code)
    hdr = mb_header(flags, header_addr, load, end if load_end is None else load_end,
                    (end + bss if bss else 0) if bss_end is None else bss_end, header_addr + 32)
    return b"\x90" * pad + hdr + code


def elf(cls64: bool = False, machine: int = 3, segments: list[tuple] | None = None,
        entry: int = 0x100000, extra: bytes = b"") -> bytes:
    """A minimal ELF: header, program headers, then each segment's file bytes.
    segments: (p_type, paddr, vaddr, data, memsz, flags)."""
    if segments is None:
        body = mb_header(0) + b"\xf4"
        segments = [(1, 0x100000, 0x100000, body, len(body) + 0x40, 5)]
    eh, ph = (64, 56) if cls64 else (52, 32)
    off = eh + ph * len(segments)
    phdrs, blobs = b"", b""
    for p_type, paddr, vaddr, data, memsz, flags in segments:
        if cls64:
            phdrs += struct.pack("<IIQQQQQQ", p_type, flags, off, vaddr, paddr, len(data), memsz, 16)
        else:
            phdrs += struct.pack("<IIIIIIII", p_type, off, vaddr, paddr, len(data), memsz, flags, 16)
        blobs += data
        off += len(data)
    ident = b"\x7fELF" + bytes([2 if cls64 else 1, 1, 1]) + bytes(9)
    if cls64:
        hdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, eh, 0, 0, eh, ph,
                                  len(segments), 64, 0, 0)
    else:
        hdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, eh, 0, 0, eh, ph,
                                  len(segments), 40, 0, 0)
    return hdr + phdrs + blobs + extra


# ---------------------------------------------------------------------------------- a.out kludge

def test_aout_basic():
    img = aout(b"\xfa\xf4", bss=0x100)
    boot = parse_image(img, "k", RAM)
    assert isinstance(boot, BootImage)
    assert boot.entry == 0x100020
    assert boot.segments == [(0x100000, img)]
    assert boot.bss == [(0x100000 + len(img), 0x100)]


def test_aout_header_not_at_file_start():
    img = aout(b"\xf4", pad=64)
    boot = parse_image(img, "k", RAM)
    assert boot.segments[0][0] == 0x100000 and boot.segments[0][1] == img
    assert boot.entry == 0x100000 + 64 + 32


def test_aout_load_from_inside_the_file():
    """header_addr - load_addr smaller than the header offset: the load starts mid-file."""
    prefix = b"\xcc" * 16
    body = mb_header(AOUT, 0x200000, 0x200000, 0, 0, 0x200020) + b"\xf4"
    boot = parse_image(prefix + body, "k", RAM)
    assert boot.segments == [(0x200000, body)]


def test_aout_load_end_zero_means_whole_file_and_bss_zero_means_none():
    img = aout(b"\xf4" * 10, load_end=0, bss_end=0) + b"tail"
    boot = parse_image(img, "k", RAM)
    assert boot.segments == [(0x100000, img)]


def test_aout_load_end_shorter_than_file():
    img = aout(b"\xf4", load_end=0x100000 + 33, bss_end=0x100000 + 0x1000) + b"ignored"
    boot = parse_image(img, "k", RAM)
    assert boot.segments == [(0x100000, img[:33])]
    assert boot.bss == [(0x100000 + 33, 0x1000 - 33)]


def test_video_flag_is_ignored_like_qemu():
    boot = parse_image(aout(flags=AOUT | 4 | 2 | 1), "k", RAM)
    assert boot.entry == 0x100020


def test_header_search_limit_is_qemus():
    """QEMU looks at offsets below 8192 - 48 only."""
    body = mb_header(AOUT, 0x100000 + 8140, 0x100000, 0, 0, 0x100000)
    assert parse_image(b"\x90" * 8140 + body, "k", RAM).entry == 0x100000
    with pytest.raises(ImageError, match="no multiboot header"):
        parse_image(b"\x90" * 8144 + body, "k", RAM)


# ---------------------------------------------------------------------------------- ELF

@pytest.mark.parametrize("cls64", [False, True])
def test_elf_segments_at_paddr_with_bss(cls64):
    code = mb_header(0) + b"\xf4"
    segs = [(1, 0x100000, 0xC0100000, code, len(code) + 0x30, 5),
            (1, 0x200000, 0xC0200000, b"data", 0x1000, 6),
            (4, 0, 0, b"note", 4, 4),                         # PT_NOTE: not loaded
            (1, 0x300000, 0x300000, b"", 0, 6)]               # memsz 0: skipped, as QEMU
    boot = parse_image(elf(cls64, segments=segs, entry=0x10000C), "k", RAM)
    assert boot.entry == 0x10000C
    assert boot.segments == [(0x100000, code), (0x200000, b"data")]
    assert boot.bss == [(0x100000 + len(code), 0x30), (0x200004, 0x1000 - 4)]


def test_elf_virtual_entry_moves_to_physical_like_qemu():
    code = mb_header(0) + b"\xf4"
    segs = [(1, 0x100000, 0xC0100000, code, len(code), 5)]
    assert parse_image(elf(segments=segs, entry=0xC010000C), "k", RAM).entry == 0x10000C
    # not executable: the entry stays virtual, which is outside RAM
    segs = [(1, 0x100000, 0xC0100000, code, len(code), 6)]
    with pytest.raises(ImageError, match="entry point"):
        parse_image(elf(segments=segs, entry=0xC010000C), "k", RAM)


def test_elf64_x86_64_loads_although_qemu_refuses_it():
    img = parse_image(elf(True, machine=62), "k", RAM)
    assert img.segments and 0x100000 <= img.entry < 0x100000 + len(img.segments[0][1])


@pytest.mark.parametrize("cls64", [False, True])
def test_elf_errors(cls64):
    with pytest.raises(ImageError, match="bad ELF machine"):
        parse_image(elf(cls64, machine=40), "k", RAM)
    hdr_only = elf(cls64, segments=[(4, 0, 0, mb_header(0), 12, 4)])
    with pytest.raises(ImageError, match="no loadable segment"):
        parse_image(hdr_only, "k", RAM)
    code = mb_header(0) + b"\xf4"
    with pytest.raises(ImageError, match="file size exceeds"):
        parse_image(elf(cls64, segments=[(1, 0x100000, 0x100000, code, 4, 5)]), "k", RAM)
    full = elf(cls64)
    with pytest.raises(ImageError, match="beyond the end|truncated"):
        parse_image(full[:-1], "k", RAM)


def test_elf64_entry_above_4g():
    code = mb_header(0) + b"\xf4"
    with pytest.raises(ImageError, match="beyond 4 GiB"):
        parse_image(elf(True, segments=[(1, 0x100000, 0x100000, code, 13, 5)],
                        entry=0x100100000), "k", RAM)


def test_elf_overlapping_segments():
    code = mb_header(0) + b"\xf4"
    segs = [(1, 0x100000, 0x100000, code, 0x100, 5), (1, 0x100080, 0x100080, b"x", 1, 6)]
    with pytest.raises(ImageError, match="overlap"):
        parse_image(elf(segments=segs), "k", RAM)


# ---------------------------------------------------------------------------------- bad images

@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"\x00" * 9000, "no multiboot header"),
    (b"garbage!" * 3, "no multiboot header"),
    (struct.pack("<III", MAGIC, 0, 5), "checksum is wrong"),
    (mb_header(AOUT), "truncated"),
    (mb_header(0) + b"garbage", "not ELF"),
    (b"\x7fELF\x01\x01\x01\x01" + mb_header(0) + b"\x01" * 50, "bad"),
    (aout(load_end=0xF0000), "load_end_addr"),
    (aout(bss_end=0x100010), "bss_end_addr"),
    (mb_header(AOUT, 0x100000, 0x100010, 0, 0, 0x100020), "below load_addr"),
    (mb_header(AOUT, 0x100040, 0x100000, 0, 0, 0x100020), "before the start of the file"),
    (aout(load_end=0x100000 + 0x1000), "truncated"),
    (aout(load=0x7F00000, bss=0x200000), "outside"),
    (aout(load=0x800), "first 4 KiB"),
    (aout(load=0xA0000), "EBDA/VGA/BIOS"),
    (aout(load=0xFFFFFF00, bss_end=0xFFFFFFF0), "4 GiB|outside"),
    (mb_header(AOUT, 0x100000, 0x100000, 0, 0, 0x9000000) + b"\xf4", "entry point"),
    (bytes(0x202) + b"HdrS" + mb_header(AOUT, 0x100206, 0x100000, 0, 0, 0x100000), "Linux"),
])
def test_bad_images(data, needle):
    with pytest.raises(ImageError, match=needle) as e:
        parse_image(data, "bad.bin", RAM)
    assert "\n" not in str(e.value) and str(e.value).startswith("bad.bin: ")


def test_ram_too_small():
    with pytest.raises(OptionError):
        parse_image(aout(), "k", 1 << 20)


# ---------------------------------------------------------------------------------- MBI

def test_mbi_fields():
    mbi = build_mbi(RAM, "k.bin hello", MBI_ADDR)
    (flags, mem_lower, mem_upper, boot_dev, cmd, mods_count, mods_addr) = struct.unpack_from(
        "<7I", mbi)
    assert flags == MBI_FLAGS == 0x24F
    assert (mem_lower, mem_upper, boot_dev) == (639, (RAM - (1 << 20) - 0x20000) >> 10, 0x8000FFFF)
    assert mods_count == 0 and mods_addr == cmd
    mmap_len, mmap_addr = struct.unpack_from("<II", mbi, 44)
    name_addr = struct.unpack_from("<I", mbi, 64)[0]

    def at(addr: int) -> bytes:
        return mbi[addr - MBI_ADDR:]

    assert at(cmd).split(b"\0")[0] == b"k.bin hello"
    assert at(name_addr).split(b"\0")[0] == b"svmemu"
    entries = [struct.unpack_from("<IQQI", at(mmap_addr), off) for off in range(0, mmap_len, 24)]
    assert [e[0] for e in entries] == [20] * len(entries)
    assert [e[1:] for e in entries] == memory_map(RAM)
    assert len(mbi) <= 0xA000 - MBI_ADDR


def test_memory_map_is_qemus_for_128m():
    assert memory_map(RAM) == [
        (0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
        (0x100000, 0x7EE0000, 1), (0x7FE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2),
        (0xFD00000000, 0x300000000, 2)]


def test_memory_map_above_4g_split_like_qemu():
    mm = memory_map(5000 << 20)
    assert (0x100000, 0xC0000000 - 0x120000, 1) in mm and (1 << 32, (5000 << 20) - 0xC0000000, 1) in mm


def test_cmdline_like_qemu():
    assert qemu_cmdline("guests/x.bin") == "guests/x.bin "
    assert qemu_cmdline("x.bin", "a  b") == "x.bin a  b"


def test_cmdline_too_long():
    with pytest.raises(OptionError, match="command line"):
        build_mbi(RAM, "x" * 5000, MBI_ADDR)


# ---------------------------------------------------------------------------------- fuzz

def _valid_images() -> list[bytes]:
    code = mb_header(0) + b"\xf4"
    return [aout(b"\xf4" * 8, bss=64), elf(False), elf(True),
            elf(False, segments=[(1, 0x100000, 0xC0100000, code, 64, 5),
                                 (1, 0x200000, 0x200000, b"d" * 9, 32, 6)])]


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


def _parse_or_image_error(data: bytes) -> None:
    try:
        boot = parse_image(data, "fuzz.bin", RAM)
    except ImageError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert 0 <= boot.entry < RAM
    for addr, blob in boot.segments:
        assert 0x1000 <= addr and addr + len(blob) <= RAM


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _parse_or_image_error(data)
    _parse_or_image_error(b"\x7fELF" + data)
    _parse_or_image_error(mb_header(AOUT) + data)
    _parse_or_image_error(mb_header(0) + data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.one_of(st.none(), st.integers(0, 300)))
def test_fuzz_mutated_images(which, edits, cut):
    _parse_or_image_error(_mutate(_valid_images()[which], edits, cut))


def test_kernel_over_the_information_area_wins():
    """QEMU's option ROM writes the information block before the kernel, so a kernel loaded over
    0x9500 (kvm-unit-tests' realmode.flat spans 0x8000-0xa86c) runs with its own bytes there."""
    from tests.harness import boot
    # 0x100 bytes of NOPs from 0x9400, then the header at MBI_ADDR and "mov eax, 0x5a; hlt".
    data = aout(code=b"\xb8\x5a\x00\x00\x00\xf4", load=MBI_ADDR - 0x100, pad=0x100)
    image = parse_image(data, "low.bin", RAM)
    b = boot(image, nested=False, timeout=10)
    assert bytes(b.machine.ram[MBI_ADDR:MBI_ADDR + 4]) == struct.pack("<I", MAGIC)
    from unicorn.x86_const import UC_X86_REG_EAX
    assert b.machine.uc.reg_read(UC_X86_REG_EAX) == 0x5A
