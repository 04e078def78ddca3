"""The stock binding's first import, without the two modules its library search imports.

At import, unicorn 2.1.4's binding (unicorn_py3/unicorn.py, `__load_uc_lib`) lists the places it
may load libunicorn from, and builds two of them with `importlib.resources.files("unicorn")` and
`inspect.getfile(<its own function>)`, even when $LIBUNICORN_PATH (tried first) names the library.
Importing those two modules pulls in ast, dis, tokenize, tempfile, random and zipfile: about 15 ms
of CPU at every start, more than the rest of the binding's import. Both calls only name the
binding's own folder, which its modules' `__file__` and code objects give directly.

So while the `unicorn` package executes for the first time, sys.modules holds stand-ins for
those two modules, answering exactly those calls; they leave as soon as that import ends, and a
module imported before or after gets the real ones. Should a binding ask a stand-in anything
else, the import runs again with the real modules. The binding's files stay as shipped.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "unicorn"


def _package_files(package: str) -> Path:
    """What importlib.resources.files() gives for a package in a folder: that folder."""
    return Path(sys.modules[package].__file__).parent


def _code_file(obj: object) -> str:
    """What inspect.getfile() gives for a function: its code object's file name."""
    return obj.__code__.co_filename


def _standins() -> dict[str, ModuleType]:
    resources = ModuleType("importlib.resources")
    resources.files = _package_files
    inspect = ModuleType("inspect")
    inspect.getfile = _code_file
    return {"importlib.resources": resources, "inspect": inspect}


class _StandInLoader:
    """Runs the real loader's module with the stand-ins in place, then hands the module back to
    the real loader (so later resource lookups on the package see the stock machinery)."""

    def __init__(self, real: object) -> None:
        self.real = real

    def create_module(self, spec: object) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.real
        placed = {name: m for name, m in _standins().items() if name not in sys.modules}
        sys.modules.update(placed)
        try:
            self.real.exec_module(module)
        except AttributeError:          # the binding wanted more of a stand-in: do it for real
            _remove(placed)
            self.real.exec_module(module)
        finally:
            _remove(placed)


def _remove(placed: dict[str, ModuleType]) -> None:
    for name, m in placed.items():
        if sys.modules.get(name) is m:
            del sys.modules[name]


class _FirstImport:
    """A meta path entry that only serves the binding's first import, then leaves."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != PACKAGE:
            return None
        uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _StandInLoader(spec.loader)
                return spec
        return None


_hook = _FirstImport()


def install() -> None:
    """Makes the next `import unicorn` the lean one (nothing if the binding is already in)."""
    if PACKAGE not in sys.modules and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
