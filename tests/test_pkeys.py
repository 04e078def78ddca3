"""Protection keys (AMD APM vol. 2, 5.6.6), supervisor protection keys and UMIP, at guest level.

PKU: with CR4.PKE, a data access to a user page is checked against PKRU's access-disable and
write-disable bits of the page's key (PTE bits 62:59); a denied access is #PF with the PK bit
(5) of the error code. PKS applies IA32_PKRS the same way to supervisor pages under CR4.PKS.
UMIP: with CR4.UMIP, SGDT, SIDT, SLDT, SMSW and STR at CPL > 0 are #GP(0). Each CR4 bit is
writable only where the model's CPUID advertises its feature (`max` has all three).

The guests (tests/tinyimage.py) give the 2 MiB page at KEYED key 1 and run from there.
Handler 0 takes #PF (r8 = error code, r9 = CR2), handler 1 #GP (r8 = error code, r9 = RIP),
handler 2 #UD (r9 = RIP); each sets r10 to its vector. A guest that completes leaves
r15 = 0x600D; a CPL 3 program gets there through INT 0x80 (handler 3).
"""
from __future__ import annotations


import pytest
from unicorn.x86_const import (UC_X86_REG_R8, UC_X86_REG_R9, UC_X86_REG_R10, UC_X86_REG_R11,
                               UC_X86_REG_R12, UC_X86_REG_R15)

from emu.arch import paging
from emu.arch.bits import (CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PKE, CR4_PKS, CR4_UMIP,
                           EFER_LMA, PTE_PKEY_SHIFT, PTE_US)
from emu.arch.msrs import MSR_PKRS
from emu.core import snapshot
from emu.core.cpu_models import parse_cpu
from emu.core.machine import Machine
from emu.engine.hw_switch import OFF_PKRU
from tests import harness
from tests.tinyimage import SEL_UCODE64, SEL_UDATA, gate64, handler, long_mode_image

PF, GP, UD = 14, 13, 6
PF_P, PF_W, PF_U, PF_PK = 1, 2, 4, 0x20
KEY = 1
AD, WD = 1 << 2 * KEY, 2 << 2 * KEY          # the key's access-disable, write-disable bits
KEYED = 0x400000                             # the third 2 MiB page
PDE = 0x22000 + 8 * (KEYED >> 21)            # its page-directory entry
USER_STACK = 0x78000
EXIT = "mov al, 0\n out 0xf4, al\n"
HANDLERS = [
    f"mov r8, [rsp]\n mov r9, cr2\n mov r10, {PF}\n {EXIT}",
    f"mov r8, [rsp]\n mov r9, [rsp+8]\n mov r10, {GP}\n {EXIT}",
    f"mov r9, [rsp]\n mov r10, {UD}\n {EXIT}",
    f"mov r15, 0x600D\n {EXIT}",
]
DONE = f"mov r15, 0x600D\n {EXIT}"
WRPKRU = ".byte 0x0f, 0x01, 0xef"
RDPKRU = ".byte 0x0f, 0x01, 0xee"


def set_cr4(bits: int) -> str:
    return f"mov rax, cr4\n or rax, {bits:#x}\n mov cr4, rax\n"


def clear_cr4(bit: int) -> str:
    return f"mov rax, cr4\n btr rax, {bit.bit_length() - 1}\n mov cr4, rax\n"


def wrpkru(value: int) -> str:
    return f"mov eax, {value:#x}\n xor ecx, ecx\n xor edx, edx\n {WRPKRU}\n"


def wrpkrs(value: int) -> str:
    return f"mov ecx, {MSR_PKRS:#x}\n mov eax, {value:#x}\n xor edx, edx\n wrmsr\n"


def keyed_page(supervisor: bool = False) -> str:
    """Give KEYED key 1 (and, for PKS, make it a supervisor page)."""
    clear = f"btr rax, {PTE_US.bit_length() - 1}\n" if supervisor else ""
    return f"""
        mov rax, [{PDE:#x}]
        {clear}
        mov rbx, {KEY << PTE_PKEY_SHIFT:#x}
        or rax, rbx
        mov [{PDE:#x}], rax
        invlpg [{KEYED:#x}]
    """


def to_user(user: str) -> str:
    return f"""
        push {SEL_UDATA}
        push {USER_STACK:#x}
        push 0x2
        push {SEL_UCODE64}
        mov rax, user
        push rax
        iretq
    user:
        {user}
        int 0x80
    """


def run(body: str, cpu: str = "max") -> Machine:
    idt = {PF: gate64(handler(0)), GP: gate64(handler(1)), UD: gate64(handler(2)),
           0x80: gate64(handler(3), dpl=3)}
    b = harness.boot(long_mode_image(body, idt, HANDLERS), nested=False, cpu=cpu)
    assert b.result.reason == "exit", b.result
    return b.machine


def reg(m: Machine, r: int) -> int:
    return m.uc.reg_read(r)


def completed(m: Machine) -> bool:
    return reg(m, UC_X86_REG_R15) == 0x600D


def page_fault(m: Machine) -> int | None:
    """The #PF error code, if the guest took one at KEYED."""
    if reg(m, UC_X86_REG_R10) != PF:
        return None
    assert reg(m, UC_X86_REG_R9) == KEYED
    return reg(m, UC_X86_REG_R8)


# ---- PKU ---------------------------------------------------------------------------------------

def test_wrpkru_rdpkru_round_trip_and_ospke():
    m = run(f"""
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov r11, rcx
        {set_cr4(CR4_PKE)}
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov r12, rcx
        {wrpkru(0x5555_000C)}
        xor eax, eax
        mov edx, 0xFFFF
        xor ecx, ecx
        {RDPKRU}
        shl rdx, 32
        or rax, rdx
        mov r8, rax
        {DONE}
    """)
    assert completed(m)
    ospke, pku = 1 << 4, 1 << 3
    assert reg(m, UC_X86_REG_R11) & (pku | ospke) == pku            # OSPKE follows CR4.PKE
    assert reg(m, UC_X86_REG_R12) & (pku | ospke) == pku | ospke
    assert reg(m, UC_X86_REG_R8) == 0x5555_000C                      # EDX:EAX = 0:PKRU


def test_wrpkru_without_cr4_pke_is_ud():
    m = run(wrpkru(0) + DONE)
    assert not completed(m) and reg(m, UC_X86_REG_R10) == UD


@pytest.mark.parametrize("rights,write,user,error", [
    (AD, False, False, PF_P | PF_PK),                       # supervisor read, access-disable
    (WD, True, True, PF_P | PF_W | PF_U | PF_PK),           # user write, write-disable
    (AD, False, True, PF_P | PF_U | PF_PK),                 # user read, access-disable
    (WD, False, True, None),                                # reads pass write-disable
    (AD << 2, True, True, None),                            # another key's bits
])
def test_pkru_on_a_user_page(rights, write, user, error):
    access = f"mov qword ptr [{KEYED:#x}], 7" if write else f"mov rax, [{KEYED:#x}]"
    body = set_cr4(CR4_PKE) + keyed_page() + wrpkru(rights)
    body += to_user(access) if user else access + "\n" + DONE
    m = run(body)
    assert page_fault(m) == error
    assert completed(m) == (error is None)


def test_pkru_write_disable_binds_cpl0_only_with_cr0_wp():
    """A supervisor write to a user page passes write-disable when CR0.WP is clear."""
    body = set_cr4(CR4_PKE) + keyed_page() + wrpkru(WD) + f"""
        mov rax, cr0
        btr rax, 16
        mov cr0, rax
        mov qword ptr [{KEYED:#x}], 7
        bts rax, 16
        mov cr0, rax
        mov qword ptr [{KEYED:#x}], 8
        {DONE}
    """
    m = run(body)
    assert page_fault(m) == PF_P | PF_W | PF_PK
    assert m.mem.read_u64(KEYED) == 7           # the first store passed, the second faulted


def test_pkru_applies_only_with_cr4_pke():
    """PKRU keeps its value across CR4.PKE; accesses are checked only while PKE is set, and a
    translation cached with PKE clear does not outlive setting it."""
    body = set_cr4(CR4_PKE) + keyed_page() + wrpkru(AD) + clear_cr4(CR4_PKE) + f"""
        mov rax, [{KEYED:#x}]
        mov r11, 0x0A11
        {set_cr4(CR4_PKE)}
        mov rax, [{KEYED:#x}]
        {DONE}
    """
    m = run(body)
    assert reg(m, UC_X86_REG_R11) == 0x0A11                  # the read with PKE clear passed
    assert page_fault(m) == PF_P | PF_PK


def test_pkru_survives_a_snapshot():
    """PKRU is part of the CPU state a snapshot holds: a machine restored after WRPKRU faults
    where the original would."""
    spin = 4000
    body = set_cr4(CR4_PKE) + keyed_page() + wrpkru(AD) + f"""
        mov ecx, {spin}
    spin:
        dec ecx
        jnz spin
        mov rax, [{KEYED:#x}]
        {DONE}
    """
    image = long_mode_image(body, {PF: gate64(handler(0)), GP: gate64(handler(1)),
                                   UD: gate64(handler(2))}, HANDLERS)
    m = Machine(harness.RAM, stdout=None, cpu=parse_cpu("max"))
    m.load_multiboot(image, "pkru")
    assert m.run(max_insns=spin).reason == "max-insns"
    assert m.ctx.save().u32(OFF_PKRU) == AD                 # in the spin, after WRPKRU
    resumed = Machine(harness.RAM, stdout=None, cpu=parse_cpu("max"))
    snapshot.restore(resumed, snapshot.decode(snapshot.encode(snapshot.take(m))))
    assert resumed.ctx.save().u32(OFF_PKRU) == AD
    assert resumed.run(timeout=20).reason == "exit"
    assert page_fault(resumed) == PF_P | PF_PK and not completed(resumed)


@pytest.mark.parametrize("cr4,rights,error", [
    (CR4_PKE, WD, PF_P | PF_W | PF_PK),       # the frame's implicit supervisor writes, WP=1
    (CR4_PKE, 0, None),
    (0, AD, None),                            # PKRU is only in force with CR4.PKE
])
def test_exception_frame_pushed_onto_a_keyed_page(cr4, rights, error):
    """The frame of an exception svmemu delivers goes through the same key checks: #UD at
    CPL 0 with RSP in the keyed user page faults on the push, and the #PF (on IST1) reports
    it with the PK bit."""
    top = KEYED + 0x1000
    setup = set_cr4(CR4_PKE) + keyed_page() + wrpkru(rights)
    if not cr4:
        setup += clear_cr4(CR4_PKE)
    body = setup + f"mov rsp, {top:#x}\n ud2\n"
    idt = {PF: gate64(handler(0), ist=1), GP: gate64(handler(1)), UD: gate64(handler(2))}
    b = harness.boot(long_mode_image(body, idt, HANDLERS), nested=False, cpu="max")
    assert b.result.reason == "exit", b.result
    m = b.machine
    if error is None:
        assert reg(m, UC_X86_REG_R10) == UD                     # #UD delivered, frame pushed
        assert m.mem.read_u64(top - 40) == reg(m, UC_X86_REG_R9)
    else:
        assert reg(m, UC_X86_REG_R10) == PF and reg(m, UC_X86_REG_R8) == error
        assert top - 40 <= reg(m, UC_X86_REG_R9) < top


def test_reference_walk_applies_keys_to_data_not_fetches():
    """emu/arch/paging.py, the walk svmemu's own accesses use: one 4-level path to a user page
    with key 1."""
    tables = {0x1000: 0x2000 | 7, 0x2000: 0x3000 | 7, 0x3000: 0x4000 | 7,
              0x4000: 0x5000 | 0x67 | KEY << PTE_PKEY_SHIFT}
    regs = paging.PagingRegs(cr0=CR0_PG | CR0_WP | CR0_PE, cr3=0x1000, cr4=CR4_PAE | CR4_PKE,
                             efer=EFER_LMA, pkru=AD)

    def walk(regs: paging.PagingRegs, access: paging.Access) -> int:
        return paging.walk(lambda a: tables.get(a & ~7, 0), regs, 0, access).pa
    with pytest.raises(paging.PageFault) as fault:
        walk(regs, paging.READ)
    assert fault.value.error_code == PF_P | PF_PK
    assert walk(regs, paging.FETCH) == 0x5000
    assert walk(regs.replace(cr4=CR4_PAE), paging.READ) == 0x5000          # PKE clear
    assert walk(regs.replace(pkru=AD << 2), paging.WRITE) == 0x5000        # another key's bits


# ---- PKS ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rights,write,error", [
    (AD, False, PF_P | PF_PK),
    (WD, True, PF_P | PF_W | PF_PK),
    (WD, False, None),
    (0, True, None),
])
def test_pkrs_on_a_supervisor_page(rights, write, error):
    access = f"mov qword ptr [{KEYED:#x}], 7" if write else f"mov rax, [{KEYED:#x}]"
    body = set_cr4(CR4_PKS) + keyed_page(supervisor=True) + wrpkrs(rights) + f"""
        {access}
        mov ecx, {MSR_PKRS:#x}
        rdmsr
        mov r12, rax
        {DONE}
    """
    m = run(body)
    assert page_fault(m) == error
    if error is None:
        assert completed(m) and reg(m, UC_X86_REG_R12) == rights


def test_pkrs_spares_user_pages_and_pkru_supervisor_pages():
    """Each register governs its own kind of page: PKRS with access-disable leaves a user
    page readable, PKRU with access-disable a supervisor page."""
    user = set_cr4(CR4_PKS) + keyed_page() + wrpkrs(AD) + f"mov rax, [{KEYED:#x}]\n" + DONE
    assert completed(run(user))
    sup = set_cr4(CR4_PKE) + keyed_page(supervisor=True) + wrpkru(AD) + \
        f"mov rax, [{KEYED:#x}]\n" + DONE
    assert completed(run(sup))


def test_pkrs_reserved_bits_gp():
    m = run(f"mov ecx, {MSR_PKRS:#x}\n xor eax, eax\n mov edx, 1\n wrmsr\n" + DONE)
    assert reg(m, UC_X86_REG_R10) == GP and reg(m, UC_X86_REG_R8) == 0


def test_pkrs_survives_a_snapshot():
    m = run(wrpkrs(WD) + DONE)
    resumed = Machine(harness.RAM, stdout=None, cpu=parse_cpu("max"))
    snapshot.restore(resumed, snapshot.decode(snapshot.encode(snapshot.take(m))))
    assert resumed.msrs.rdmsr(MSR_PKRS) == WD


# ---- UMIP --------------------------------------------------------------------------------------

UMIP_INSNS = {
    "sgdt": "sgdt [0x70000]",
    "sidt": "sidt [0x70000]",
    "sldt": "sldt ax",
    "smsw": "smsw ax",
    "str": "str ax",
}


@pytest.mark.parametrize("name", sorted(UMIP_INSNS))
def test_umip_gp_at_cpl3(name):
    m = run(set_cr4(CR4_UMIP) + to_user(UMIP_INSNS[name]))
    assert not completed(m)
    assert reg(m, UC_X86_REG_R10) == GP and reg(m, UC_X86_REG_R8) == 0


@pytest.mark.parametrize("name", sorted(UMIP_INSNS))
def test_umip_spares_cpl0_and_cpl3_without_it(name):
    assert completed(run(set_cr4(CR4_UMIP) + UMIP_INSNS[name] + "\n" + DONE))
    assert completed(run(to_user(UMIP_INSNS[name])))


# ---- CPUID gates the CR4 bits and the MSR ------------------------------------------------------

@pytest.mark.parametrize("feature,bit", [("pku", CR4_PKE), ("pks", CR4_PKS), ("umip", CR4_UMIP)])
def test_cr4_bit_gp_without_its_feature(feature, bit):
    assert completed(run(set_cr4(bit) + DONE))
    m = run(set_cr4(bit) + DONE, cpu=f"max,-{feature}")
    assert reg(m, UC_X86_REG_R10) == GP and not completed(m)


def test_epyc_lacks_the_later_features():
    for bit in (CR4_PKE, CR4_PKS, CR4_UMIP):
        assert reg(run(set_cr4(bit) + DONE, cpu="EPYC"), UC_X86_REG_R10) == GP
    m = run(f"mov ecx, {MSR_PKRS:#x}\n rdmsr\n" + DONE, cpu="max,-pks")
    assert reg(m, UC_X86_REG_R10) == GP


def test_qemu64_takes_umip():
    m = run(set_cr4(CR4_UMIP) + to_user("smsw ax"), cpu="qemu64,+umip")
    assert reg(m, UC_X86_REG_R10) == GP


# ---- CLWB, PCOMMIT -----------------------------------------------------------------------------

def test_clwb_and_pcommit_follow_cpuid():
    code = ".byte 0x66, 0x0f, 0xae, 0x33\n .byte 0x66, 0x0f, 0xae, 0xf8\n"   # CLWB [rbx]; PCOMMIT
    body = f"mov rbx, 0x70000\n {code}" + DONE
    assert completed(run(body))
    m = run(body, cpu="max,-clwb")
    assert reg(m, UC_X86_REG_R10) == UD and not completed(m)
    m = run("mov rbx, 0x70000\n .byte 0x66, 0x0f, 0xae, 0xf8\n" + DONE, cpu="max,-pcommit")
    assert reg(m, UC_X86_REG_R10) == UD


def test_stock_engine_does_not_advertise_umip_or_pks(monkeypatch: pytest.MonkeyPatch):
    """Their checks are engine patches (0020, 0021): without them CPUID leaves both out, and
    CR4 refuses their bits."""
    from emu.core import cpuid as cpuid_module
    from emu.core.control_regs import cr4_allowed
    monkeypatch.setattr(cpuid_module.engine_loader, "has_fix", lambda name: False)
    c = cpuid_module.Cpuid(parse_cpu("max"))
    assert c.query(7, 0)[2] == 1 << 3                      # PKU only
    assert not cr4_allowed(c) & (CR4_UMIP | CR4_PKS) and cr4_allowed(c) & CR4_PKE
