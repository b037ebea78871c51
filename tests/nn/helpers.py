"""Shared helpers for tests/nn: the tiny config file and tiny random transformers checkpoints."""

from __future__ import annotations

import pathlib

import numpy as np

from bitscale.config_file import load_module

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config_module(name: str = "tiny"):
    """Imports configs/<name>.py by file path (configs/ is not an installed package)."""
    path = ROOT / "configs" / f"{name}.py"
    mod = load_module(path)
    return mod


HF_BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               vocab_size=128, max_position_embeddings=256, initializer_range=0.2)
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)


def make_hf_model(arch: str, *, gqa: bool, tied: bool, seed: int = 0, **extra):
    """A tiny random float32 transformers model (eager attention) with perturbed norms/biases."""
    import torch
    import transformers as tf

    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
           "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
           "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[arch]
    kw = dict(HF_BASE, num_key_value_heads=2 if gqa else 4, tie_word_embeddings=tied)
    if arch == "llama":
        kw.update(rope_parameters=dict(LLAMA3_ROPE), attention_bias=True, mlp_bias=not tied)
    if arch == "mistral":
        kw.update(sliding_window=5)
    if arch == "qwen2" and not tied:
        kw.update(use_sliding_window=True, sliding_window=5, max_window_layers=1)
    kw.update(extra)
    torch.manual_seed(seed)
    config = cls[0](**kw, attn_implementation="eager")
    model = cls[1](config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def random_tokens(shape, vocab: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)
