"""pyproject.toml: the accelerator extras install the JAX the library and its kernels are pinned
to and tested with, and every optional dependency is pinned."""

from __future__ import annotations

import pathlib
import re

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pinned(reqs, name):
    got = [r for r in reqs if re.match(rf"{re.escape(name)}(\[[^]]*\])?\s*==", r)]
    assert len(got) == 1, (name, reqs)
    return got[0].split("==")[1].strip()


def test_accelerator_extras_pin_the_core_jax(project):
    jax_version = pinned(project["dependencies"], "jax")
    assert pinned(project["dependencies"], "jaxlib") == jax_version
    extras = project["optional-dependencies"]
    want = {"cuda": "jax[cuda13]", "cuda12": "jax[cuda12]", "tpu": "jax[tpu]"}
    for extra, req in want.items():
        assert extras[extra] == [f"{req}=={jax_version}"], (extra, extras[extra])
    assert "gpu" not in extras  # the old jax-triton extra: Pallas' Triton lowering is in jax


def test_every_optional_dependency_is_pinned(project):
    for extra, reqs in project["optional-dependencies"].items():
        for r in reqs:
            assert "==" in r, f"[{extra}] {r} is not pinned"
