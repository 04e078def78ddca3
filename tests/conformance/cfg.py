"""x86/unittests.cfg: which entries exist, what they pass to QEMU, and which of them apply to one
AMD CPU emulated without KVM.  The harness's own format: `[name]` sections of `key = value`."""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field

# The harness's default per-entry timeout (scripts/runtime.bash: 90s).
DEFAULT_TIMEOUT_S = 90.0

# -cpu models that exist only as Intel parts or only under KVM.
INTEL_ONLY_MODELS = ("IvyBridge", "Skylake", "Haswell", "Broadwell", "Cascadelake", "Icelake",
                     "SapphireRapids", "Nehalem", "Westmere", "SandyBridge", "Conroe", "Penryn")


@dataclass(frozen=True)
class Entry:
    name: str
    file: str
    test_args: str = ""
    qemu_params: str = ""
    smp: int = 1
    arch: str = ""
    accel: str = ""
    check: str = ""
    timeout: float = DEFAULT_TIMEOUT_S
    groups: tuple[str, ...] = field(default_factory=tuple)

    def qemu_option(self, flag: str) -> str | None:
        """The value QEMU gets for `flag` (e.g. -cpu, -m) from qemu_params, if any."""
        words = shlex.split(self.qemu_params)
        for i, w in enumerate(words[:-1]):
            if w == flag:
                return words[i + 1]
        return None

    @property
    def cpu(self) -> str | None:
        return self.qemu_option("-cpu")

    @property
    def memory(self) -> str | None:
        return self.qemu_option("-m")

    @property
    def append(self) -> str:
        return expand_test_args(self.test_args)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def expand_test_args(test_args: str) -> str:
    """The harness runs test_args through the shell; the only substitution the cfg uses is
    `date +%s` in backquotes (kvmclock_test), so that one is done here and nothing else."""
    return test_args.replace("`date +%s`", str(int(time.time())))


def parse_cfg(text: str) -> list[Entry]:
    """Every section of unittests.cfg, in file order."""
    entries: list[Entry] = []
    name: str | None = None
    fields: dict[str, str] = {}

    def flush() -> None:
        if name is not None and "file" in fields:
            entries.append(Entry(
                name=name, file=fields["file"], test_args=fields.get("test_args", ""),
                qemu_params=fields.get("qemu_params", ""), smp=int(fields.get("smp", "1")),
                arch=fields.get("arch", ""), accel=fields.get("accel", ""),
                check=fields.get("check", ""),
                timeout=_timeout(fields.get("timeout")),
                groups=tuple(fields.get("groups", "").split())))

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            flush()
            name, fields = m.group(1).strip(), {}
            continue
        if "=" in line and name is not None:
            key, value = line.split("=", 1)
            fields[key.strip()] = _unquote(value)
    flush()
    return entries


def _timeout(value: str | None) -> float:
    if not value:
        return DEFAULT_TIMEOUT_S
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", value.strip())
    if not m:
        return DEFAULT_TIMEOUT_S
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def exclusion(entry: Entry) -> str | None:
    """Why an entry does not apply to an AMD x86_64 machine emulated without KVM (None: it
    applies).  The reasons are what docs/conformance.md lists under "not run"."""
    if entry.arch and entry.arch != "x86_64":
        return f"arch = {entry.arch}: a 32-bit kernel, not built for x86_64"
    if entry.accel and entry.accel != "tcg":
        return f"accel = {entry.accel}: needs a hardware hypervisor"
    if entry.check:
        return f"check = {entry.check}: a host KVM module setting"
    params = entry.qemu_params
    if "-enable-kvm" in params.split():
        return "-enable-kvm: needs KVM"
    cpu = entry.cpu or ""
    model, _, flags = cpu.partition(",")
    flag_list = flags.split(",") if flags else []
    if model == "host":
        return "-cpu host: the host CPU model exists only under KVM"
    if "+vmx" in flag_list or entry.file == "vmx.flat":
        return "Intel VMX (+vmx): an AMD CPU has SVM instead"
    if model.startswith(INTEL_ONLY_MODELS):
        return f"-cpu {model}: an Intel CPU model"
    if "intel-iommu" in params:
        return "Intel IOMMU (VT-d) device: not part of an AMD machine"
    return None
