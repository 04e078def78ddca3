"""Only for the C replay engine (emu/engine/replay.c); everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("emu.engine.creplay", sources=["emu/engine/replay.c"], optional=True)])
