"""The module naming convention and the layering, read from the import statements.

* A package's API is its ``__init__`` plus its public (no underscore) modules; ``_name.py``
  modules and ``_name`` functions are private: only their own package (and that package's
  tests, ``tests/<package>/``) may import them.
* The library never imports the studies (``bitscale.studies`` builds on the library, not the
  reverse), and ``bitscale.numerics`` imports no other bitscale package.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("src/bitscale/**/*.py"), *ROOT.glob("pallas_kernels/**/*.py"),
                  *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("tests/**/*.py")])


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import in ``path``; ``from a import b`` gives
    ``a.b`` (b may be a module or a name)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def owner(path: pathlib.Path) -> str:
    """The package a file belongs to, as a dotted name (``bitscale.nn``, ``pallas_kernels``,
    ``tests.nn`` for tests/nn, ``benchmarks``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[1:] if rel.parts[0] == "src" else rel.parts
    return ".".join(parts[:2]) if parts[0] in ("bitscale", "tests") else parts[0]


def private_package(name: str) -> str | None:
    """``bitscale.nn`` for ``bitscale.nn._llama.Llama``: the package whose private module the
    dotted name reaches, or None (dunder modules such as ``__main__`` are not private)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            return ".".join(parts[:i]) if parts[0] in ("bitscale", "pallas_kernels") else None
    return None


def test_the_scan_sees_the_tree():
    assert len(SOURCES) > 100
    assert owner(ROOT / "src" / "bitscale" / "nn" / "_llama.py") == "bitscale.nn"
    assert owner(ROOT / "tests" / "nn" / "test_model.py") == "tests.nn"
    assert private_package("bitscale.nn._llama.Llama") == "bitscale.nn"
    assert private_package("bitscale.train.__main__") is None
    assert private_package("bitscale.train._loop") == "bitscale.train"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_of_another_packages_private_module(path):
    mine = owner(path)
    allowed = {mine, mine.replace("tests.", "bitscale.", 1)}
    if mine == "tests.pallas_kernels":
        allowed.add("pallas_kernels")
    bad = [(line, name) for line, name in imported_modules(path)
           if (pkg := private_package(name)) is not None
           and not any(a == pkg or a.startswith(pkg + ".") for a in allowed)]
    assert not bad, f"{path.relative_to(ROOT)} imports private modules of other packages: {bad}"


@pytest.mark.parametrize("path", [p for p in SOURCES if owner(p).startswith("bitscale.")
                                  and owner(p) != "bitscale.studies"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path):
    names = [n for _, n in imported_modules(path)]
    assert not [n for n in names if n.startswith("bitscale.studies")], path
    if owner(path) == "bitscale.numerics":
        others = [n for n in names if n.startswith("bitscale.")
                  and not n.startswith("bitscale.numerics")]
        assert not others, (path, others)
