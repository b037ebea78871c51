"""Config files by path: recipes built on demo.py, one execution per file, clear errors."""

import pathlib

import pytest

from bitscale.config_file import load_config, load_module, sibling

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe,policy", [("fp32", "fp32"), ("bf16", "bf16"), ("fp8", "fp8"),
                                           ("mxfp4", "mxfp4"), ("int4_g128", "int4@g128")])
def test_recipe_files_are_demo_with_their_policy(recipe, policy):
    got = load_config(CONFIGS / f"{recipe}.py").to_dict()
    want = load_config(CONFIGS / "demo.py", policy).to_dict()
    assert got == want and got["policy"] == policy


def test_module_is_executed_once():
    a = load_module(CONFIGS / "tiny.py")
    b = load_module(str(CONFIGS / "." / "tiny.py"))
    assert a is b
    assert load_config(CONFIGS / "tiny.py") is not load_config(CONFIGS / "tiny.py")  # fresh dicts
    assert sibling(str(CONFIGS / "tiny.py"), "demo.py") == str(CONFIGS / "demo.py")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py does not exist"):
        load_module(tmp_path / "nope.py")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        load_config(tmp_path / "empty.py")
