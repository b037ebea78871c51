"""Bad checkpoints and bad policies fail with messages that name the culprit."""

import json

import numpy as np
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale.nn.safetensors_io import SafetensorsFile, save_file

CFG = bn.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2)


@pytest.fixture()
def ckpt(tmp_path):
    model = bn.Llama(CFG, "fp32", rngs=nnx.Rngs(0))
    bn.to_hf(model, str(tmp_path))
    return tmp_path


def _edit_config(path, **kw):
    d = json.loads((path / "config.json").read_text())
    d.update(kw)
    (path / "config.json").write_text(json.dumps(d))


def _rewrite(path, fn):
    f = SafetensorsFile(str(path / "model.safetensors"))
    tensors = {n: np.array(f.get(n)) for n in f.keys()}
    del f
    save_file(fn(tensors), str(path / "model.safetensors"))


def test_unsupported_architecture(ckpt):
    _edit_config(ckpt, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ValueError, match=r"unsupported architecture \['GPT2LMHeadModel'\].*"
                                         r"LlamaForCausalLM"):
        bn.from_hf(str(ckpt))


def test_unsupported_activation_and_rope(ckpt):
    _edit_config(ckpt, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        bn.from_hf(str(ckpt))
    _edit_config(ckpt, hidden_act="silu", rope_parameters={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        bn.from_hf(str(ckpt))


def test_shape_disagrees_with_config(ckpt):
    _edit_config(ckpt, intermediate_size=96)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has "
                                         r"shape \(64, 32\) but config\.json implies \(96, 32\)"):
        bn.from_hf(str(ckpt))


def test_missing_tensor(ckpt):
    _rewrite(ckpt, lambda t: {k: v for k, v in t.items()
                              if k != "model.layers.1.self_attn.v_proj.weight"})
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['model\.layers\.1\.self_attn\."
                                         r"v_proj\.weight'\]"):
        bn.from_hf(str(ckpt))


def test_unexpected_tensor(ckpt):
    _rewrite(ckpt, lambda t: {**t, "model.layers.2.mlp.up_proj.weight": np.zeros((2, 2), "f4")})
    with pytest.raises(ValueError,
                       match=r"unexpected tensor\(s\) \['model\.layers\.2\.mlp\.up_proj"):
        bn.from_hf(str(ckpt))


def test_not_a_directory_and_no_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        bn.from_hf(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_hf_config()))
    with pytest.raises(ValueError, match="no .safetensors files"):
        bn.from_hf(str(tmp_path))


def test_unknown_policy_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown precision policy 'fp4'.*'bf16'.*'mxfp4'"):
        bn.Llama(CFG, "fp4", rngs=nnx.Rngs(0))


def test_rule_matching_no_module_is_reported():
    typo = bn.Policy("typo", (bn.Rule(r"layers\.\d+\.mlp\.gate", weight="int8@channel"),
                              bn.Rule(r".*_proj", weight="int8@channel")))
    with pytest.raises(ValueError, match=r"rule pattern\(s\) \['layers\\\\\.\\\\d\+\\\\\.mlp"
                                         r"\\\\\.gate'\] match no module path"):
        bn.Llama(CFG, typo, rngs=nnx.Rngs(0))
    lenient = bn.Policy("typo", typo.rules, strict=False)
    with pytest.warns(UserWarning, match="match no module path"):
        bn.Llama(CFG, lenient, rngs=nnx.Rngs(0))
    assert [r.pattern for r in typo.unmatched_rules(bn.module_paths(CFG))] == [
        r"layers\.\d+\.mlp\.gate"]


def test_bad_rules():
    with pytest.raises(ValueError, match="not a valid regex"):
        bn.Rule("(")
    with pytest.raises(ValueError, match="unknown format 'fp5'"):
        bn.Rule(".*", weight="fp5")
    with pytest.raises(ValueError, match="wgrad_act"):
        bn.Rule(".*", wgrad_act="both")
    with pytest.raises(ValueError, match="dtype"):
        bn.Rule(".*", compute_dtype="int8")


def test_bad_tokens():
    model = bn.Llama(CFG, "fp32", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokens must be an int array \[batch, length\]"):
        model(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(np.zeros((2, 3), np.int32), attention_mask=np.ones((2, 4), np.int32))
