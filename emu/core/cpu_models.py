"""CPU models: what `--cpu MODEL[,+feature,-feature,...]` selects, in QEMU's spelling.

A model is a CPUID table. The rule is that CPUID advertises only what svmemu implements, so
every model is a subset of `max`: `EPYC`, whose table was read off unicorn 2.1.4's EPYC (the
translator implements each of its bits) and trimmed to this machine (no AVX: Unicorn raises
#UD on VEX instructions; XSAVE state for x87 and SSE only), plus the later features svmemu
implements. Like every QEMU model, each
sets CPUID 1 ECX[31] (hypervisor): guests then skip the bare-metal errata work that touches
model-specific MSRs no emulator has (Xen's Zen workarounds, for one); `-hypervisor` clears it.
Models:

  EPYC    AMD EPYC (family 17h model 1, as QEMU's EPYC): the default.
  max     the most svmemu implements: EPYC with vNMI, GMET, UMIP and CLWB (Zen 2 has the
          last two), protection keys PKU (Zen 3), and two features no AMD part has, as
          QEMU's max has them: PKS (supervisor protection keys, IA32_PKRS) and PCOMMIT (a
          no-op here). PKRU is not an XSAVE component: CPUID 0xD lists x87 and SSE only.
  qemu64  QEMU's default CPU (family 15 model 107, AuthenticAMD, SSE3, CX16, LAHF, SVM, no
          XSAVE): what old hypervisors that check for family 0xF want.
  Opteron_G1  QEMU's first-generation Opteron (family 15 model 6 stepping 1: SSE3, long
          mode, SYSCALL, NX; no CX16, no LAHF in long mode, no SVM unless `+svm`).

`+name` adds a feature svmemu implements (the `max` set, plus `perfctr-core` and the speculation
controls `ibpb`, `ibrs`, `amd-stibp`, `amd-ssbd`, whose MSRs exist in emu/core/msrs_amd.py, and
the SVM features of SVM_IMPLEMENTED, which the SVM extension reports in CPUID 8000_000A);
`-name` hides one (`name=on`/`name=off` are accepted too). `vendor=AuthenticAMD` is accepted
(every model is AMD's); another vendor is refused. A hidden feature is gone from CPUID
and from everything CPUID gates: CR4 bits (control_regs.py), MSRs (msrs_amd.py), and, for `svm`,
the whole SVM extension. Its instructions may still execute if a guest uses them regardless,
as on QEMU's TCG. An unknown model or feature, or one svmemu does not implement, is an
OptionError (exit status 2).
"""
from __future__ import annotations

from emu.errors import OptionError

Regs = tuple[int, int, int, int]
Table = dict[tuple[int, int], Regs]
EAX, EBX, ECX, EDX = range(4)



def brand(text: str) -> Table:
    """CPUID 8000_0002-8000_0004: the processor name string, 48 bytes NUL-padded, as QEMU
    fills them from a model's model-id (so Linux prints the same "CPU0: ..." line)."""
    raw = text.encode("ascii")[:47].ljust(48, b"\0")
    words = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 48, 4)]
    return {(0x80000002 + n, 0): tuple(words[4 * n:4 * n + 4]) for n in range(3)}  # type: ignore[misc]


_EPYC: Table = {
    (0x0, 0): (0x0000000D, 0x68747541, 0x444D4163, 0x69746E65),      # AuthenticAMD
    (0x1, 0): (0x00800F12, 0x00000800, 0xCED8220B, 0x078BFBFD),      # with the hypervisor bit
    (0x7, 0): (0x00000000, 0x00980189, 0x00000000, 0x00000000),
    (0xD, 0): (0x00000003, 0x00000240, 0x00000240, 0x00000000),      # x87 and SSE state only
    (0xD, 1): (0x00000005, 0x00000000, 0x00000000, 0x00000000),
    (0x80000000, 0): (0x80000008, 0x68747541, 0x444D4163, 0x69746E65),
    (0x80000001, 0): (0x00800F12, 0x00000000, 0x00000071, 0x2DD3FBFD),  # SVM: the extension
    **brand("AMD EPYC Processor"),
    (0x80000005, 0): (0x01FF01FF, 0x01FF01FF, 0x20080140, 0x40040140),
    (0x80000006, 0): (0x00000000, 0x42004200, 0x02006140, 0x00000000),
    (0x80000007, 0): (0, 0, 0, 0),
    (0x80000008, 0): (0x00003028, 0x00000000, 0x00000000, 0x00000000),  # 48-bit VA, 40-bit PA
}

# QEMU's qemu64: family 15 model 107 stepping 1; PPro features + SSE/SSE2, SSE3, CX16;
# long mode, SYSCALL, NX; LAHF/SAHF in long mode; SVM (added by the extension).
_QEMU64: Table = {
    (0x0, 0): (0x0000000D, 0x68747541, 0x444D4163, 0x69746E65),
    (0x1, 0): (0x00060FB1, 0x00000800, 0x80002001, 0x078BFBFD),
    (0x80000000, 0): (0x80000008, 0x68747541, 0x444D4163, 0x69746E65),
    (0x80000001, 0): (0x00060FB1, 0x00000000, 0x00000001, 0x2193FBFD),   # with AMD's aliases
    **brand("QEMU Virtual CPU version 2.5+"),
    (0x80000005, 0): (0x01FF01FF, 0x01FF01FF, 0x40020140, 0x40020140),
    (0x80000006, 0): (0x00000000, 0x42004200, 0x02008140, 0x00000000),
    (0x80000008, 0): (0x00003028, 0x00000000, 0x00000000, 0x00000000),
}

# QEMU's Opteron_G1: family 15 model 6 stepping 1; the PPro features, SSE/SSE2, SSE3 (not VME:
# svmemu has no virtual-8086 interrupt delivery, so no model advertises it);
# long mode, SYSCALL, NX (with AMD's aliases of the leaf-1 EDX bits); no SVM.
_OPTERON_G1: Table = {
    (0x0, 0): (0x00000005, 0x68747541, 0x444D4163, 0x69746E65),
    (0x1, 0): (0x00000F61, 0x00000800, 0x80000001, 0x078BFBFD),
    (0x80000000, 0): (0x80000008, 0x68747541, 0x444D4163, 0x69746E65),
    (0x80000001, 0): (0x00000F61, 0x00000000, 0x00000000, 0x2193FBFD),
    **brand("AMD Opteron 240 (Gen 1 Class Opteron)"),
    (0x80000005, 0): (0x01FF01FF, 0x01FF01FF, 0x40020140, 0x40020140),
    (0x80000006, 0): (0x00000000, 0x42004200, 0x02008140, 0x00000000),
    (0x80000008, 0): (0x00003028, 0x00000000, 0x00000000, 0x00000000),
}

# Features a model lacks that the machine would otherwise add (the SVM extension adds SVM and
# its leaf). QEMU's qemu64 reports no SVM feature bits; svmemu keeps there the ones it always
# had (nested paging, NRIP save, vGIF) and leaves the later ones off unless asked (`+name`).
# EPYC (Zen 1) lacks vNMI, which came with Zen 4, and GMET, a later extension too:
# `EPYC,+vnmi` / `EPYC,+gmet` grant them; `max` has both.
_SVM_AFTER_ZEN1 = ("vnmi", "gmet")
_SVM_LATER = ("lbrv", "tsc-scale", "flushbyasid", "decodeassists", "pause-filter",
              "pfthreshold") + _SVM_AFTER_ZEN1
_MODEL_HIDDEN: dict[str, tuple[str, ...]] = {"Opteron_G1": ("svm",) + _SVM_LATER,
                                             "qemu64": _SVM_LATER, "EPYC": _SVM_AFTER_ZEN1}
VENDOR_AMD = "AuthenticAMD"
DEFAULT_MODEL = "EPYC"

# feature name (QEMU's spelling) -> (leaf, subleaf, register, bit)
FEATURES: dict[str, tuple[int, int, int, int]] = {}


def _bits(leaf: int, sub: int, reg: int, names: dict[str, int]) -> None:
    for name, bit in names.items():
        FEATURES[name] = (leaf, sub, reg, 1 << bit)


_bits(1, 0, EDX, {"fpu": 0, "vme": 1, "de": 2, "pse": 3, "tsc": 4, "msr": 5, "pae": 6, "mce": 7,
                  "cx8": 8, "apic": 9, "sep": 11, "mtrr": 12, "pge": 13, "mca": 14, "cmov": 15,
                  "pat": 16, "pse36": 17, "clflush": 19, "mmx": 23, "fxsr": 24, "sse": 25,
                  "sse2": 26})
_bits(1, 0, ECX, {"pni": 0, "pclmulqdq": 1, "monitor": 3, "ssse3": 9, "fma": 12, "cx16": 13,
                  "pcid": 17, "sse4.1": 19, "sse4.2": 20, "x2apic": 21, "movbe": 22, "popcnt": 23,
                  "tsc-deadline": 24, "aes": 25, "xsave": 26, "avx": 28, "f16c": 29, "rdrand": 30,
                  "hypervisor": 31})
_bits(7, 0, EBX, {"fsgsbase": 0, "bmi1": 3, "avx2": 5, "smep": 7, "bmi2": 8, "erms": 9,
                  "invpcid": 10, "rdseed": 18, "adx": 19, "smap": 20, "pcommit": 22,
                  "clflushopt": 23, "clwb": 24, "sha-ni": 29})
_bits(7, 0, ECX, {"umip": 2, "pku": 3, "la57": 16, "pks": 31})
_bits(0xD, 1, EAX, {"xsaveopt": 0, "xsavec": 1, "xgetbv1": 2, "xsaves": 3})
_bits(0x80000001, 0, EDX, {"syscall": 11, "nx": 20, "mmxext": 22, "fxsr-opt": 25, "pdpe1gb": 26,
                           "rdtscp": 27, "lm": 29})
_bits(0x80000001, 0, ECX, {"lahf-lm": 0, "cmp-legacy": 1, "svm": 2, "extapic": 3,
                           "cr8legacy": 4, "abm": 5, "sse4a": 6, "misalignsse": 7,
                           "3dnowprefetch": 8, "osvw": 9, "skinit": 12, "topoext": 22, "perfctr-core": 23})
_bits(0x80000008, 0, EBX, {"ibpb": 12, "ibrs": 14, "amd-stibp": 15, "amd-ssbd": 24})
_bits(0x8000000A, 0, EDX, {"npt": 0, "lbrv": 1, "svm-lock": 2, "nrip-save": 3, "tsc-scale": 4,
                           "vmcb-clean": 5, "flushbyasid": 6, "decodeassists": 7,
                           "pause-filter": 10, "pfthreshold": 12, "avic": 13,
                           "v-vmsave-vmload": 15, "vgif": 16, "gmet": 17, "vnmi": 25})
# What `max` adds to EPYC's CPUID 7.0 (APM vol. 3, appendix E.3.6; PKS and PCOMMIT as Intel
# numbers them). OSPKE is no feature of its own: it mirrors CR4.PKE (emu/core/control_regs.py).
CPUID_7_0_EBX_PCOMMIT = FEATURES["pcommit"][3]
CPUID_7_0_EBX_CLWB = FEATURES["clwb"][3]
CPUID_7_0_ECX_PKU = FEATURES["pku"][3]
CPUID_7_0_ECX_PKS = FEATURES["pks"][3]
CPUID_7_0_ECX_OSPKE = 1 << 4
_MAX: Table = dict(_EPYC)
_MAX[(0x7, 0)] = (_EPYC[(0x7, 0)][EAX],
                  _EPYC[(0x7, 0)][EBX] | CPUID_7_0_EBX_CLWB | CPUID_7_0_EBX_PCOMMIT,
                  FEATURES["umip"][3] | CPUID_7_0_ECX_PKU | CPUID_7_0_ECX_PKS, 0)

MODELS: dict[str, Table] = {"EPYC": _EPYC, "max": _MAX, "qemu64": _QEMU64,
                            "Opteron_G1": _OPTERON_G1}
_ALIASES = {"sse3": "pni", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "lahf_lm": "lahf-lm",
            "nrip_save": "nrip-save", "tsc_scale": "tsc-scale", "perfctr_core": "perfctr-core",
            "cr8-legacy": "cr8legacy", "sha_ni": "sha-ni", "fxsr_opt": "fxsr-opt"}
# Implemented beyond EPYC's own bits: their MSRs are in msrs_amd.py, and they change nothing
# else an emulator can show.
_OPT_IN = ("perfctr-core", "ibpb", "ibrs", "amd-stibp", "amd-ssbd", "tsc-deadline", "x2apic")
# SVM features svm_ext implements: the SVM extension's CPUID leaf reports them, less those
# the model hides. `+name` grants one a model lacks.
_SVM_LEAF = 0x8000000A
SVM_IMPLEMENTED = ("npt", "lbrv", "nrip-save", "tsc-scale", "flushbyasid", "decodeassists",
                   "pause-filter", "pfthreshold", "vgif", "gmet", "vnmi")


def _present(table: Table, name: str) -> bool:
    leaf, sub, reg, bit = FEATURES[name]
    return bool(table.get((leaf, sub), (0, 0, 0, 0))[reg] & bit)


def implemented(name: str) -> bool:
    """Can `+name` be granted: does svmemu implement the feature?"""
    if name == "svm":
        return True
    leaf = FEATURES[name][0]
    if leaf == _SVM_LEAF:
        return name in SVM_IMPLEMENTED   # the SVM extension reports them
    return _present(_MAX, name) or name in _OPT_IN


class CpuModel:
    """A resolved `--cpu` value: the base table with features added, and the features hidden
    (applied after every other CPUID contribution: the APIC's, the SVM extension's)."""

    __slots__ = ("name", "table", "hidden")

    def __init__(self, name: str = DEFAULT_MODEL, table: Table | None = None,
                 hidden: dict[tuple[int, int, int], int] | None = None) -> None:
        self.name = name
        self.table: Table = table if table is not None else dict(_EPYC)
        # (leaf, sub, reg) -> bits
        self.hidden = hidden if hidden is not None else model_hidden(DEFAULT_MODEL)

    @property
    def svm(self) -> bool:
        leaf, sub, reg, bit = FEATURES["svm"]
        return not self.hidden.get((leaf, sub, reg), 0) & bit

    def hide(self, regs: Regs, leaf: int, subleaf: int) -> Regs:
        if not self.hidden:
            return regs
        out = list(regs)
        for reg in range(4):
            out[reg] &= ~self.hidden.get((leaf, subleaf, reg), 0)
        return tuple(out)  # type: ignore[return-value]


def model_hidden(name: str) -> dict[tuple[int, int, int], int]:
    """The features model `name` lacks that the machine would otherwise add."""
    hidden: dict[tuple[int, int, int], int] = {}
    for feat in _MODEL_HIDDEN.get(name, ()):
        leaf, sub, reg, bit = FEATURES[feat]
        hidden[(leaf, sub, reg)] = hidden.get((leaf, sub, reg), 0) | bit
    return hidden


def parse_cpu(spec: str) -> CpuModel:
    """`MODEL[,+feat,-feat,feat=on,feat=off...]` -> CpuModel, or OptionError."""
    parts = [p.strip() for p in spec.split(",")]
    name = parts[0]
    models = {k.lower(): k for k in MODELS}
    if name.lower() not in models:
        raise OptionError(f"unknown CPU model {name!r} (models: {', '.join(MODELS)})")
    name = models[name.lower()]
    model = CpuModel(name, {k: tuple(v) for k, v in MODELS[name].items()},  # type: ignore[misc]
                     model_hidden(name))
    for part in parts[1:]:
        if not part:
            continue
        if part.startswith("vendor="):
            if part[len("vendor="):] != VENDOR_AMD:
                raise OptionError(f"CPU feature {part!r} is not implemented by svmemu (its CPUs "
                                  f"are {VENDOR_AMD}'s)")
            continue
        if part[0] in "+-":
            feat, on = part[1:], part[0] == "+"
        elif part.endswith(("=on", "=off")):
            feat, _, value = part.rpartition("=")
            on = value == "on"
        else:
            raise OptionError(f"bad CPU feature {part!r}: write +name, -name, name=on or "
                              "name=off")
        feat = _ALIASES.get(feat, feat)
        if feat not in FEATURES:
            raise OptionError(f"unknown CPU feature {feat!r}")
        leaf, sub, reg, bit = FEATURES[feat]
        if on:
            if not implemented(feat):
                raise OptionError(f"CPU feature {feat!r} is not implemented by svmemu")
            model.hidden[(leaf, sub, reg)] = model.hidden.get((leaf, sub, reg), 0) & ~bit
            if feat != "svm" and leaf != _SVM_LEAF:
                _grant(model.table, leaf, sub, reg, bit)
        else:
            model.hidden[(leaf, sub, reg)] = model.hidden.get((leaf, sub, reg), 0) | bit
    for (leaf, sub, reg), bits in model.hidden.items():
        if (leaf, sub) in model.table:
            regs = list(model.table[(leaf, sub)])
            regs[reg] &= ~bits
            model.table[(leaf, sub)] = tuple(regs)  # type: ignore[assignment]
    return model


def _grant(table: Table, leaf: int, sub: int, reg: int, bit: int) -> None:
    regs = list(table.get((leaf, sub), (0, 0, 0, 0)))
    regs[reg] |= bit
    table[(leaf, sub)] = tuple(regs)  # type: ignore[assignment]
    if leaf == 1 and reg == ECX and bit == FEATURES["xsave"][3]:
        for key in ((0xD, 0), (0xD, 1)):       # XSAVE brings its leaf, as EPYC has it
            table.setdefault(key, _EPYC[key])
    if leaf == 7 and (7, 0) not in table:
        table[(7, 0)] = (0, 0, 0, 0)
    top = table.get((0, 0))
    if top is not None and leaf < 0x80000000 and top[0] < leaf:
        table[(0, 0)] = (leaf,) + top[1:]      # type: ignore[assignment]
