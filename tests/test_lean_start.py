"""What a plain `svmemu run` loads: the stock binding without the modules its library search
would import (emu/engine/unicorn_build/binding_import.py), and none of the modules only other
commands and options need. Each case runs in a fresh interpreter, since this one has long
imported everything."""
from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# mov dx, 0x3f8; mov al, 'K'; out dx, al; mov al, 3; out 0xf4, al (isa-debug-exit: status 7)
_CODE32 = bytes.fromhex("66baf803" "b04b" "ee" "b003" "e6f4")
_LOAD = 0x100000


def _aout_image() -> bytes:
    """A flat a.out-kludge multiboot image whose code starts right after the header."""
    flags = 1 << 16
    end = _LOAD + 32 + len(_CODE32)
    header = struct.pack("<IIIIIIII", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF,
                         _LOAD, _LOAD, end, end, _LOAD + 32)
    return header + _CODE32


def _child(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_plain_run_imports_no_dataclasses_inspect_or_resources(tmp_path: Path) -> None:
    image = tmp_path / "k.bin"
    image.write_bytes(_aout_image())
    output, status, modules = _child(f"""
        import sys
        from emu.cli.main import main
        status = main(["run", {str(image)!r}, "-q"])
        sys.stdout.flush()
        print()
        print(status)
        print(" ".join(sorted(sys.modules)))
    """)
    assert (output, int(status)) == ("K", (3 << 1) | 1)
    loaded = set(modules.split())
    assert "unicorn" in loaded and "svm_ext.extension" in loaded
    assert not loaded & {"dataclasses", "inspect", "importlib.resources", "zipfile", "tempfile",
                         "shutil"}


def test_the_binding_loads_the_chosen_library_and_later_imports_are_real() -> None:
    lines = _child("""
        import sys
        from emu.engine.unicorn_build import loader
        from emu.engine import binding
        print(loader.select().kind, loader.current().kind)
        print("inspect" in sys.modules, "importlib.resources" in sys.modules)
        import inspect, importlib.resources, unicorn
        print(inspect.getsource(loader.select).startswith("def select"))
        print(importlib.resources.files("unicorn").joinpath("__init__.py").is_file())
        print(unicorn.__spec__.loader is unicorn.__loader__, type(unicorn.__loader__).__name__)
    """)
    chosen, running = lines[0].split()
    assert chosen == running                  # the binding loaded the library select() chose
    assert lines[1:] == ["False False", "True", "True", "True SourceFileLoader"]


def test_a_binding_wanting_more_of_a_stand_in_gets_the_real_modules() -> None:
    lines = _child("""
        import sys, types
        from emu.engine.unicorn_build import binding_import, loader
        binding_import._standins = lambda: {"inspect": types.ModuleType("inspect"),
                                            "importlib.resources":
                                                types.ModuleType("importlib.resources")}
        loader.select()
        from emu.engine import binding
        print(binding.library_path() is not None, "inspect" in sys.modules)
        import inspect
        print(hasattr(inspect, "getsource"))
    """)
    assert lines == ["True True", "True"]
