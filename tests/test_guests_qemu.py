"""Every guest, assembled by our assembler, boots on real QEMU and passes its own checks, except
the ones QEMU TCG is known to get wrong; those must still print "not ok" on QEMU, so a QEMU that
changes is noticed.  Independent of svmemu's machine: this validates the guests and the image."""
from __future__ import annotations

import struct

import pytest

from emu.loader.asm import assemble_source
from emu.loader.multiboot import build_mbi, memory_map, qemu_cmdline
from emu.loader.asm import GUESTS_DIR

pytestmark = pytest.mark.qemu

# name of the check -> why QEMU 7.2 TCG fails it (the architecture says otherwise: AMD APM vol. 2).
QEMU_KNOWN_WRONG: dict[str, dict[str, str]] = {
    "apic": {
        "CR8 write with bits 63:4 set raises #GP": "TCG's MOV CR8 passes the value to the APIC "
                                                   "without the reserved-bit check",
    },
    "svm_world_switch": {
        "ASID 0 fails VMRUN with VMEXIT_INVALID":
            "TCG stores VMEXIT_INVALID as 32-bit -1 (0xFFFFFFFF) in the 64-bit EXITCODE",
    },
    "msr": {
        "WRMSR PAT type 2 in PA0 raises #GP": "TCG's WRMSR(PAT) accepts reserved types",
        "WRMSR PAT type 3 in PA7 raises #GP": "TCG's WRMSR(PAT) accepts reserved types",
        "WRMSR PAT type 8 in PA3 raises #GP": "TCG's WRMSR(PAT) accepts reserved types",
        "PAT unchanged by the type 2 write": "TCG stores the reserved PAT value",
        "PAT unchanged by the type 3 write": "TCG stores the reserved PAT value",
        "PAT unchanged by the type 8 write": "TCG stores the reserved PAT value",
        "RDMSR 0xC0011234 (unimplemented) raises #GP": "TCG reads unknown MSRs as 0",
        "RDMSR 0x12345 (unimplemented) raises #GP": "TCG reads unknown MSRs as 0",
        "WRMSR 0x12345 (unimplemented) raises #GP": "TCG ignores writes to unknown MSRs",
    },
    "svm_pat": {
        "L2's RDMSR(PAT) reads vmcb12.g_pat": "TCG has one PAT: L2 reads L1's, g_pat is not loaded",
        "#VMEXIT stores L2's PAT in vmcb12.g_pat": "TCG's #VMEXIT never writes g_pat",
        "L1's PAT is unchanged across VMRUN and #VMEXIT": "TCG has one PAT: L2's write is L1's",
        "re-entry loads g_pat as #VMEXIT stored it": "TCG does not load g_pat at VMRUN",
        "re-entry loads the g_pat L1 edited": "TCG does not load g_pat at VMRUN",
        "g_pat with type 2 in PA0 fails VMRUN with VMEXIT_INVALID":
            "TCG's VMRUN does not check g_pat",
        "g_pat with type 8 in PA7 fails VMRUN with VMEXIT_INVALID":
            "TCG's VMRUN does not check g_pat",
        "L2 never ran with a reserved g_pat": "TCG's VMRUN does not check g_pat, so L2 runs",
        "reserved WRMSR(PAT) in L2 exits with EXCP13 when L1 intercepts #GP":
            "TCG's WRMSR(PAT) accepts reserved types: no #GP to intercept",
        "the EXCP13 exit's guest RIP is the WRMSR": "no #GP: the exit is L2's later VMMCALL",
        "L1's PAT is unchanged by L2's reserved WRMSR": "TCG stores the reserved value in the one PAT",
        "reserved WRMSR(PAT) in L2 without the intercept reaches L2's #GP handler":
            "TCG's WRMSR(PAT) accepts reserved types",
        "L2's #GP has error code 0": "TCG raises no #GP",
        "L2's PAT is still g_pat after its #GP": "TCG stored the reserved value (and had no gPAT)",
        "L1's PAT is unchanged after L2 handled its #GP":
            "TCG stores the reserved value in the one PAT",
        "after the intercepted WRMSR L2 still reads g_pat": "TCG has one PAT: L2 reads L1's",
    },
    "svm_ioio": {
        "OUT in 64-bit code: EXITINFO1 address size A64":
            "TCG leaves IOIO EXITINFO1's address-size bits (A16/A32/A64, bits 9:7) clear",
    },
    "svm_checks": {
        "EXITCODE is -1 in all 64 bits":
            "TCG stores VMEXIT_INVALID as 32-bit -1 (0xFFFFFFFF) in the 64-bit EXITCODE",
    },
    "svm_intercepts": {
        "BP exception from int3: EXITCODE":
            "TCG checks INT3 against the INTn intercept, not the #BP exception intercept (raise_interrupt2 with is_int)",
        "BP exception from int3: guest RIP is the instruction":
            "no #BP exit on TCG: the exit is the VMMCALL that L2's #BP handler resumed at",
        "INVD: EXITCODE":
            "TCG 7.2 checks INVD against the WBINVD intercept bit, so INVD runs (fixed upstream in 2023)",
        "INVD: guest RIP is the instruction":
            "no INVD exit on TCG: the exit is the VMMCALL after it",
    },
    "svm_vmload_vmsave": {
        "VMSAVE in L2 without the intercept runs in L2":
            "TCG's VMSAVE in a guest without nested paging always exits (virtual_vm_load_save_enabled), even when L1 neither intercepts it nor enables virtual VMSAVE",
        "L2's VMSAVE stored L2's FS.base":
            "TCG took a #VMEXIT instead of running L2's VMSAVE",
        "L2's VMSAVE stored the LSTAR L2 left":
            "TCG took a #VMEXIT instead of running L2's VMSAVE",
    },
    "platform": {
        "the PCI hole reads all-ones": "QEMU 7.2 reads unassigned memory as 0 (a PC's bus "
                                       "floats high: all-ones)",
        "a write there is dropped": "QEMU 7.2 reads unassigned memory as 0",
        "past the end of RAM reads all-ones": "QEMU 7.2 reads unassigned memory as 0",
    },
    "svm_event_inject": {
        "#NP exit: EXITINFO1 = IDT index | IDT | EXT":
            "TCG's 64-bit IDT path pushes vector*16+2 (the index scaled by the 16-byte gate) and never sets EXT for an external event",
    },
}

TAP_GUESTS = ["hello", "longmode", "msr", "exceptions", "mbinfo", "svm_world_switch", "fw_cfg",
              "svm_pat",
              "svm_checks", "svm_fuzz_target", "svm_ioio",
              "svm_intercepts",
              "svm_vmload_vmsave",
              "svm_event_inject",
              "apic", "svm_interrupts", "pic_ioapic", "platform", "firmware", "bigmem", "serial",
              "rtc", "smp", "hpet", "s3", "bios"]
EXPECTED_COUNTS = {"hello": 1, "longmode": 15, "msr": 17, "exceptions": 22, "mbinfo": 8,
                   "svm_world_switch": 11, "fw_cfg": 6, "svm_pat": 34,
                   "svm_checks": 55, "svm_fuzz_target": 4, "svm_ioio": 40,
                   "svm_intercepts": 153,
                   "svm_vmload_vmsave": 44,
                   "svm_event_inject": 36,
                   "apic": 30, "svm_interrupts": 35, "pic_ioapic": 45, "platform": 65,
                   "firmware": 48, "bigmem": 1, "serial": 14, "rtc": 7, "smp": 16,
                   "hpet": 16, "s3": 22, "bios": 34}
# QEMU options a guest needs beyond tests/conftest.py's machine (kvm-unit-tests adds the same).
QEMU_EXTRA = {"pic_ioapic": ["-device", "pc-testdev"], "platform": ["-device", "pc-testdev"],
              "smp": ["-smp", "4"]}
# QEMU's RTC follows the host's clock: rtc.S waits about two real seconds there.
QEMU_TIMEOUT = {"rtc": 20, "s3": 10}
# Checks whose outcome on QEMU depends on how the host schedules its vCPU threads: with
# multi-threaded TCG the boot CPU once ran its old translation of code CPU 1 had just rewritten
# (a CI run). svmemu's interleaving is deterministic, so tests/test_guests.py still requires
# them there; here they are left out of the comparison.
# Checks whose outcome on QEMU depends on the host's scheduling (QEMU's timers are host timers:
# on a loaded machine an expired PIT count may not be raised within SeaBIOS's short yield, and
# a PIT count can wrap between two latches when the host deschedules QEMU between them).
QEMU_RACY = {"smp": {"code rewritten by CPU 1 runs as rewritten on the boot CPU"},
             "bios": {"INT 1Ah 00h lets a pending timer tick in first"},
             "pic_ioapic": {"the latched count runs down"}}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("guests")
    out = {}
    for name in TAP_GUESTS + ["triplefault"]:
        path = d / f"{name}.bin"
        path.write_bytes(assemble_source(str(GUESTS_DIR / f"{name}.S")))
        out[name] = str(path)
    return out


@pytest.mark.parametrize("guest", TAP_GUESTS)
def test_guest_on_qemu(guest, images, qemu, tap):
    run = qemu(images[guest], timeout=QEMU_TIMEOUT.get(guest, 5), extra=QEMU_EXTRA.get(guest))
    assert not run.timed_out, run.output
    assert "Bail out!" not in run.output
    checks = tap(run.output)
    assert len(checks) == EXPECTED_COUNTS[guest], run.output
    known = QEMU_KNOWN_WRONG.get(guest, {})
    assert set(known) <= set(checks), "a known-wrong check was renamed"
    racy = QEMU_RACY.get(guest, set())
    assert racy <= set(checks), "a racy check was renamed"
    for name, line in checks.items():
        if name in racy:
            continue
        if name in known:
            assert not line.ok, f"QEMU now passes {name!r} ({known[name]}): update the list"
        else:
            assert line.ok, f"{name}: {line.detail}"
    failed = sum(not c.ok for c in checks.values())
    assert f"# pass {len(checks) - failed} fail {failed}" in run.output
    assert f"1..{len(checks)}" in run.output
    assert run.status == (1 if failed == 0 else 3)


def test_hello_prints_greeting(images, qemu):
    run = qemu(images["hello"], timeout=5)
    assert run.output.startswith("Hello from an svmemu guest!\n")


def test_triplefault_shuts_down(images, qemu):
    run = qemu(images["triplefault"], timeout=5)
    assert not run.timed_out
    assert run.output == "triplefault: loading an empty IDT, then ud2\n"
    assert run.status == 0          # -no-reboot: QEMU exits on the reset a triple fault causes


def _comments(output: str, key: str) -> list[str]:
    return [line[len(key) + 3:] for line in output.splitlines() if line.startswith(f"# {key} ")]


@pytest.mark.parametrize("append", [None, "", "console=ttyS0  x=1"])
def test_mbi_matches_qemu(images, qemu, append, tmp_path):
    """What QEMU passes in the MBI equals what build_mbi builds for the same RAM and command
    line (the kernel file name as typed on the QEMU command line, then ' ', then -append)."""
    img = tmp_path / "mbinfo.bin"
    img.write_bytes(open(images["mbinfo"], "rb").read())
    run = qemu(img, append=append, kernel_arg="mbinfo.bin", cwd=tmp_path, timeout=5)
    cmdline = qemu_cmdline("mbinfo.bin", append or "")
    assert _comments(run.output, "cmdline") == [f"'{cmdline}'"]
    ours = build_mbi(128 << 20, cmdline, 0x9500)
    flags, mem_lower, mem_upper, boot_device = struct.unpack_from("<4I", ours)
    assert _comments(run.output, "flags") == [f"{flags:#018x}"]
    assert _comments(run.output, "mem_lower") == [f"{mem_lower:#018x}"]
    assert _comments(run.output, "mem_upper") == [f"{mem_upper:#018x}"]
    assert _comments(run.output, "boot_device") == [f"{boot_device:#018x}"]
    assert _comments(run.output, "mbi") == [f"{0x9500:#018x}"]
    mmap_len = struct.unpack_from("<I", ours, 44)[0]
    assert _comments(run.output, "mmap_length") == [f"{mmap_len:#018x}"]
    want = [f"base {b:#018x} len {n:#018x} type {t}" for b, n, t in memory_map(128 << 20)]
    assert _comments(run.output, "mmap") == want
    assert _comments(run.output, "boot_loader_name") == ["'qemu'"]   # ours says 'svmemu'
