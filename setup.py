"""Only for the C replay engine (emu/replay.c); everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("emu._replay", sources=["emu/replay.c"], optional=True)])
