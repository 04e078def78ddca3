"""The tests inside svm.flat and svm_npt.flat, read from their source tables so that each can be run
alone (`-append NAME`: svm.c's test_wanted matches names with spaces written as underscores)."""
from __future__ import annotations

import re
from pathlib import Path

# kernel -> (source file, the table of tests in it)
TABLES = {
    "svm.flat": ("x86/svm_tests.c", "svm_tests"),
    "svm_npt.flat": ("x86/svm_npt.c", "npt_tests"),
}


def _strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", " ", source)


def tests_in_table(source: str, table: str) -> list[str]:
    """Names of the tests in `struct svm_test TABLE[] = { ... };`, as the command line spells them."""
    source = _strip_comments(source)
    m = re.search(r"struct\s+svm_test\s+" + re.escape(table) + r"\s*\[\s*\]\s*=\s*\{", source)
    if not m:
        raise ValueError(f"no table {table} in the source")
    body = source[m.end():]
    end = re.search(r"\n\s*\}\s*;", body)
    body = body[:end.start()] if end else body
    names: list[str] = []
    for m in re.finditer(r'\{\s*"([^"]+)"|\b(?:TEST|NPT_V2_TEST)\(\s*(\w+)\s*\)'
                         r'|\bNPT_V1_TEST\(\s*(\w+)\s*,', body):
        name = next(g for g in m.groups() if g)
        names.append(name.replace(" ", "_"))
    return names


def list_tests(suite_dir: Path, kernel: str) -> list[str]:
    path, table = TABLES[kernel]
    return tests_in_table((suite_dir / path).read_text(errors="replace"), table)
