"""The C parts: the replay engine, L1's SVM instructions and the fuzzers' edge-coverage hook
(emu/engine/replay.c, svm_insn.c, apic_fast.c and edge_coverage.c: one optional extension) and svmemu's own
Unicorn engine (emu/engine/unicorn_build: unicorn 2.1.4's source + our patches, built into a per-user
cache). Both are optional: without a compiler svmemu runs on the Python path and the stock
unicorn wheel. Everything else is in pyproject.toml."""
import importlib
import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ENGINE_DIR = Path(__file__).resolve().parent / "emu" / "engine" / "unicorn_build"


def _engine_build_module():
    """build.py without importing emu (whose __init__ would choose an engine): its folder is
    loaded as a stand-alone package."""
    spec = importlib.util.spec_from_file_location(
        "_svmemu_unicorn_build", ENGINE_DIR / "__init__.py",
        submodule_search_locations=[str(ENGINE_DIR)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module(spec.name + ".build")


class BuildExtAndEngine(build_ext):
    def run(self):
        super().run()
        _engine_build_module().build_engine(optional=True, jobs=2)


setup(ext_modules=[Extension("emu.engine.creplay",
                             sources=["emu/engine/replay.c", "emu/engine/svm_insn.c",
                                      "emu/engine/edge_coverage.c", "emu/engine/deliver.c",
                                      "emu/engine/apic_fast.c", "emu/engine/l2_msr.c"],
                             depends=["emu/engine/svm_insn.h", "emu/engine/deliver.h",
                                      "emu/engine/apic_fast.h", "emu/engine/l2_msr.h"], optional=True)],
      cmdclass={"build_ext": BuildExtAndEngine})
