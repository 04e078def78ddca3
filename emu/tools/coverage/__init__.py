"""Coverage and execution-trace outputs, one file per format behind `CoverageOutput`.

Each output asks for exactly the Unicorn hooks its format needs (`hooks`), so a run without
`--coverage` or `--tenet` pays nothing: the hot path stays in C. Code is attributed to the
*address space* running it (`Machine.address_space()`: "L1", "L2.asid1", ...), so L1 and L2 code
at the same virtual address never merge.
"""
from __future__ import annotations

from emu.errors import OptionError
from emu.tools.coverage.base import CoverageOutput, is_l0  # noqa: F401 (the package's face)


def open_output(kind: str, path: str, image_name: str) -> CoverageOutput:
    """`kind` as the CLI spells it: drcov or tenet."""
    if kind == "drcov":
        from emu.tools.coverage.drcov import DrcovOutput
        return DrcovOutput(path, image_name)
    if kind == "tenet":
        from emu.tools.coverage.tenet import TenetOutput
        return TenetOutput(path, image_name)
    raise OptionError(f"unknown coverage format {kind!r} (choose from drcov)")


def parse_spec(spec: str) -> tuple[str, str]:
    """`--coverage FORMAT:FILE` -> (format, file)."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise OptionError(f"--coverage wants FORMAT:FILE (e.g. drcov:out.drcov), not {spec!r}")
    if kind != "drcov":
        raise OptionError(f"unknown coverage format {kind!r} (choose from drcov; "
                          "for a Tenet trace use --tenet FILE)")
    return kind, path
