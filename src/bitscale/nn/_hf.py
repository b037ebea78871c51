"""Hugging Face checkpoints: load and write local Llama / Qwen2 / Mistral directories.

A directory holds ``config.json`` and either ``model.safetensors`` or sharded
``model-XXXXX-of-YYYYY.safetensors`` files with ``model.safetensors.index.json``; an optional
``tokenizer.json`` is read with the `tokenizers` library. Nothing is fetched from the hub.

Validation: an unsupported architecture, a tensor whose shape disagrees with config.json, a
missing tensor and an unexpected tensor each raise a ValueError naming the tensor(s).

References:
  transformers `PreTrainedModel.save_pretrained` / `from_pretrained` (sharded index layout);
  Hugging Face safetensors format.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitscale.numerics import QArray
from bitscale.nn._config import ModelConfig
from bitscale.nn._llama import Llama
from bitscale.nn._policy import Policy, resolve_policy
from bitscale.nn.safetensors_io import SafetensorsFile, save_file

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = {"input_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
          "attn": "self_attn", "mlp": "mlp"}


def hf_name(path: tuple) -> tuple[str, bool]:
    """(transformers tensor name, transposed?) of a bitscale parameter path.

    bitscale stores kernels [out, in] like transformers, so nothing is transposed today; the flag
    stays for layouts that differ."""
    p = [str(k) for k in path]
    if p == ["embed", "embedding"]:
        return "model.embed_tokens.weight", False
    if p == ["norm", "scale"]:
        return "model.norm.weight", False
    if p == ["lm_head", "kernel"]:
        return "lm_head.weight", False
    if p == ["lm_head", "bias"]:
        return "lm_head.bias", False
    if p[0] == "layers" and len(p) >= 4:
        i, block = p[1], _LAYER.get(p[2])
        if p[-1] == "scale" and block is not None:
            return f"model.layers.{i}.{block}.weight", False
        if block in ("self_attn", "mlp") and len(p) == 5:
            leaf = {"kernel": "weight", "bias": "bias"}[p[4]]
            return f"model.layers.{i}.{block}.{p[3]}.{leaf}", False
    raise KeyError(f"no Hugging Face name for parameter {'.'.join(p)}")


class _Checkpoint:
    """Name -> file index over the safetensors files of a directory."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            for name, fn in weight_map.items():
                self.where[name] = fn
            for fn in sorted(set(weight_map.values())):
                full = os.path.join(path, fn)
                if not os.path.exists(full):
                    raise ValueError(f"{index} lists {fn}, which is missing from {path}")
                self.files[fn] = SafetensorsFile(full)
            for fn, f in self.files.items():
                for name in f.keys():
                    self.where.setdefault(name, fn)
        else:
            names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
            if not names:
                raise ValueError(f"no .safetensors files in {path} (only safetensors checkpoints "
                                 "are supported; convert pytorch_model.bin with transformers)")
            for fn in names:
                self.files[fn] = SafetensorsFile(os.path.join(path, fn))
                for name in self.files[fn].keys():
                    self.where[name] = fn

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        f = self.files[self.where[name]]
        if name not in f.header:
            raise ValueError(f"tensor {name!r} is listed in the index but missing from "
                             f"{f.path}")
        return f.shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.files[self.where[name]].get(name)


def read_config(path: str) -> dict[str, Any]:
    fn = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (from_hf loads a local Hugging Face "
                                "checkpoint directory; there is no hub access)")
    if not os.path.exists(fn):
        raise FileNotFoundError(f"{path} has no config.json")
    with open(fn) as f:
        return json.load(f)


def from_hf(path: str, policy: "str | Policy" = "fp32", dtype=None, **config_overrides) -> Llama:
    """Loads a local Hugging Face Llama / Qwen2 / Mistral directory as a `Llama`.

    Args:
      path: directory with config.json and safetensors file(s).
      policy: precision policy (name or `Policy`).
      dtype: parameter storage dtype (default: the policy's ``param_dtype``).
      **config_overrides: `ModelConfig` fields to replace (e.g. ``logical_axis_rules``).
    """
    policy = resolve_policy(policy)
    cfg = ModelConfig.from_hf_config(read_config(path), **config_overrides)
    ckpt = _Checkpoint(path)
    pd = jnp.dtype(dtype or policy.param_dtype)
    model = nnx.eval_shape(lambda: Llama(cfg, policy, param_dtype=pd, rngs=nnx.Rngs(0)))
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    available = set(ckpt.names())
    expected = {}
    for p, var in flat:
        name, transposed = hf_name(p)
        shape = tuple(var.get_value().shape)
        expected[name] = (var, transposed, shape[::-1] if transposed else shape)
    missing = [n for n in expected if n not in available]
    if missing:
        raise ValueError(f"checkpoint {path} is missing tensor(s) {missing} that config.json "
                         f"implies ({cfg.arch}, {cfg.num_layers} layers, tie_word_embeddings="
                         f"{cfg.tie_word_embeddings})")
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    extra = [n for n in available if n not in expected and n not in ignorable
             and not _IGNORED.match(n)]
    if extra:
        raise ValueError(f"checkpoint {path} has unexpected tensor(s) {sorted(extra)} for a "
                         f"{cfg.arch} model with {cfg.num_layers} layers")
    bad = [f"tensor {name!r} has shape {ckpt.shape(name)} but config.json implies {want}"
           for name, (_, _, want) in sorted(expected.items()) if ckpt.shape(name) != want]
    if bad:
        raise ValueError(f"checkpoint {path}: " + "; ".join(bad))
    for name, (var, transposed, _) in expected.items():
        a = np.asarray(ckpt.get(name))
        a = a.T if transposed else a
        var.set_value(jnp.asarray(a.astype(np.float32) if a.dtype != pd else a).astype(pd))
    return model


def to_hf(model: Llama, path: str, *, dtype=None, max_shard_bytes: Optional[int] = None,
          tokenizer_file: Optional[str] = None) -> None:
    """Writes ``model`` as a Hugging Face directory that transformers' `from_pretrained` loads.

    Args:
      dtype: dtype of the written tensors (default: each parameter's own dtype).
      max_shard_bytes: split the weights into ``model-XXXXX-of-YYYYY.safetensors`` files of at
        most this many bytes (plus an index), as transformers' ``max_shard_size``.
      tokenizer_file: a tokenizer.json to copy alongside.
    """
    os.makedirs(path, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    dtypes = set()
    for p, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        if isinstance(value, QArray):
            raise ValueError(f"parameter {'.'.join(map(str, p))} is a packed QArray; to_hf "
                             "writes float weights (dequantize first)")
        name, transposed = hf_name(p)
        a = np.asarray(jax.device_get(value))
        if dtype is not None:
            a = a.astype(jnp.dtype(dtype))
        dtypes.add(a.dtype.name)
        tensors[name] = a.T if transposed else a
    out_dtype = "bfloat16" if dtypes == {"bfloat16"} else (
        "float16" if dtypes == {"float16"} else "float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model.cfg.to_hf_config(out_dtype), f, indent=2)
    for fn in os.listdir(path):
        if fn.endswith(".safetensors") or fn == "model.safetensors.index.json":
            os.remove(os.path.join(path, fn))
    if max_shard_bytes is None:
        save_file(tensors, os.path.join(path, "model.safetensors"))
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        size = 0
        for name, a in tensors.items():
            if shards[-1] and size + a.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = a
            size += a.nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, fn))
            weight_map.update({n: fn for n in shard})
        total = sum(a.nbytes for a in tensors.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer_file is not None:
        import shutil
        shutil.copy(tokenizer_file, os.path.join(path, "tokenizer.json"))
