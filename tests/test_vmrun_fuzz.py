"""VMRUN fed random VMCBs: every one ends in VMEXIT_INVALID, a #VMEXIT back to L1, or a clean
machine stop (shutdown, halt, "unsupported:", instruction limit), never a Python exception.

One machine serves every example: L1 loops `vmrun; out 0x80` and a test device on port 0x80
stops the run after each #VMEXIT, so an example costs one world switch, not a boot. Examples
that end the machine restore a snapshot taken at the loop. VMCBs are a valid baseline with
hypothesis-chosen fields overwritten, plus fully random control areas, so most examples get
past the consistency checks and actually run L2.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings, strategies as st

from emu.core import snapshot
from emu.core.devices.base import PortDevice
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import FIELDS, VMEXIT_INVALID, VMCB_SIZE, Vmcb, read_cache
from tests.nested_image import VMCB12, nested_image, vmcb12

EXAMPLES = int(os.environ.get("SVMEMU_FUZZ_EXAMPLES", "10000"))
SIGNAL_PORT = 0x80
L1 = f"""
again:
    mov rax, rdi
    vmrun
    out {SIGNAL_PORT}, al
    jmp again
"""
# L2 (if it runs at all): a few instructions that exit under common intercepts, then a loop.
L2 = "cpuid\n vmmcall\n hlt\n ud2\n spin: jmp spin"
# A vmcb12 can arm a DR7 instruction breakpoint on L2's own #DB handler, and then every delivery
# raises the next #DB before an instruction retires, forever, as on hardware; the instruction
# limit counts deliveries too (Machine._count_delivery), so every input ends at a deterministic
# point without wall-clock time.
ALLOWED_STOPS = {"shutdown", "halt", "unsupported", "max-insns"}
STEPS = 2_000
SCALAR_FIELDS = [(name, off, kind) for name, off, kind in FIELDS if kind in ("B", "H", "I", "Q")]


class Signal(PortDevice):
    name = "fuzz-signal"

    def __init__(self) -> None:
        self.machine: Machine | None = None

    def ports(self):
        return (SIGNAL_PORT,)

    def write(self, port: int, size: int, value: int) -> None:
        assert self.machine is not None
        self.machine.stop("signal", 0, "L1 saw a #VMEXIT")


class Rig:
    def __init__(self) -> None:
        self.signal = Signal()
        self.ext = SvmExtension()
        self.m = Machine(16 << 20, stdout=None, extensions=[self.ext])
        self.signal.machine = self.m
        self.m.add_device(self.signal)
        self.m.load_multiboot(nested_image(L1, L2, vmcb12()), "fuzz")
        first = self.m.run(max_insns=100_000)
        assert first.reason == "signal", first
        self.base = snapshot.take(self.m)
        self.outcomes: dict[str, int] = {}

    def one(self, image: bytes) -> str:
        m = self.m
        m.ram[VMCB12:VMCB12 + VMCB_SIZE] = image
        res = m.run(max_insns=STEPS)
        if res.reason == "signal":
            code = Vmcb(m.mem.view, VMCB12).exitcode
            outcome = "invalid" if code == VMEXIT_INVALID else f"exit {code:#x}"
        else:
            assert res.reason in ALLOWED_STOPS, res
            outcome = res.reason
            snapshot.restore(m, self.base)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome


_RIG: Rig | None = None


def rig() -> Rig:
    global _RIG
    if _RIG is None:
        _RIG = Rig()
    return _RIG


def _value(kind: str) -> st.SearchStrategy[int]:
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64}[kind]
    return st.one_of(st.integers(0, (1 << bits) - 1), st.sampled_from([0, 1, (1 << bits) - 1]))


mutation = st.sampled_from(SCALAR_FIELDS).flatmap(
    lambda f: st.tuples(st.just(f), _value(f[2])))
vmcb_images = st.one_of(
    st.lists(mutation, min_size=0, max_size=6).map(lambda muts: _mutated(muts)),
    st.binary(min_size=VMCB_SIZE, max_size=VMCB_SIZE),
)


def _mutated(muts) -> bytes:
    buf = bytearray(vmcb12(misc1=1 << 31))          # baseline also intercepts SHUTDOWN
    vm = Vmcb(buf)
    for (name, off, kind), value in muts:
        target = vm.save if off >= 0x400 else vm
        setattr(target, name, value)
    return bytes(buf)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(vmcb_images)
def test_random_vmcbs_end_cleanly(image):
    outcome = rig().one(image)
    assert outcome


def test_fuzz_reached_l2():
    """The corpus is not all VMEXIT_INVALID: the baseline-mutation half runs real guests."""
    r = rig()
    for image in (_mutated([]), _mutated([((n, o, k), 0) for n, o, k in SCALAR_FIELDS
                                           if n == "intercept_exceptions"])):
        r.one(image)
    assert any(k.startswith("exit") for k in r.outcomes), r.outcomes
    c = read_cache(r.m.mem.view, VMCB12)
    assert c.exitcode != VMEXIT_INVALID
