"""`ModelConfig`: the Llama-family decoder's hyper-parameters, and Hugging Face config.json I/O.

One frozen dataclass covers Llama 2/3 (optional attention and MLP biases, Llama-3 rope scaling),
Qwen2 (q/k/v biases, optional per-layer sliding window) and Mistral (sliding window).

References:
  Touvron et al., "Llama 2", arXiv:2307.09288; Grattafiori et al., "The Llama 3 Herd of Models",
    arXiv:2407.21783 (rope scaling, section 3.4 and the released `apply_scaling`).
  Qwen Team, "Qwen2 Technical Report", arXiv:2407.10671.
  Jiang et al., "Mistral 7B", arXiv:2310.06825 (sliding-window attention).
  transformers 5 `LlamaConfig` / `Qwen2Config` / `MistralConfig` and `modeling_rope_utils`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

ARCHS = ("llama", "qwen2", "mistral")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated). Parameters use
# vocab / embed / heads / kv_heads / mlp / norm; activations the act_* names.
DEFAULT_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_head_dim", None),
    ("cache_length", None),
)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding frequency scaling (``rope_parameters`` of transformers 5).

    ``linear`` divides every inverse frequency by ``factor``; ``llama3`` divides the low
    frequencies (wavelength > original_max_position_embeddings / low_freq_factor) by ``factor``,
    keeps the high ones and interpolates in between.
    """

    rope_type: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES[1:]:
            raise ValueError(f"unsupported rope scaling type {self.rope_type!r}; supported: "
                             f"{ROPE_TYPES[1:]} (or no scaling)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder (frozen, hashable).

    Attributes:
      arch: ``llama``, ``qwen2`` or ``mistral`` (the Hugging Face architecture written by `to_hf`).
      head_dim: defaults to hidden_size // num_heads.
      qkv_bias / o_bias / mlp_bias: biases of the q/k/v, o and MLP projections (Llama's
        ``attention_bias`` sets the first two; Qwen2 has q/k/v biases only).
      sliding_window: attention window (keys with position > query position - window are
        seen) on the layers whose ``layer_types`` entry is ``sliding_attention``; None: full.
      layer_types: per-layer ``full_attention`` / ``sliding_attention``; None means every layer
        slides when ``sliding_window`` is set (Mistral).
      logical_axis_rules: logical axis -> mesh axes (`bitscale.nn._sharding`).
      scan_layers: run the decoder layers with `jax.lax.scan` (one compiled layer body; the
        per-layer weights are stacked inside the step) instead of a Python loop (whose compile
        time grows with depth). None: scan from 4 layers on. Scanning needs every layer to have
        the same rules and attention window; otherwise the loop is used.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    arch: str = "llama"
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: Optional[int] = None
    layer_types: Optional[tuple[str, ...]] = None
    initializer_range: float = 0.02
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    logical_axis_rules: tuple[tuple[str, Any], ...] = DEFAULT_AXIS_RULES
    scan_layers: Optional[bool] = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported arch {self.arch!r}; supported: {ARCHS}")
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                                 f"{self.num_heads}; set head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.layer_types is not None:
            lt = tuple(self.layer_types)
            if len(lt) != self.num_layers or any(t not in LAYER_TYPES for t in lt):
                raise ValueError(f"layer_types must be {self.num_layers} entries of "
                                 f"{LAYER_TYPES}, got {lt}")
            object.__setattr__(self, "layer_types", lt)
        rules = tuple((str(k), tuple(v) if isinstance(v, list) else v)
                      for k, v in self.logical_axis_rules)
        object.__setattr__(self, "logical_axis_rules", rules)

    def window(self, layer: int) -> Optional[int]:
        """Sliding window of ``layer`` (None: full attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    @property
    def num_params(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * h * self.intermediate_size
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp + 2 * h) + emb + h

    # -----------------------------------------------------------------------------------------
    # Hugging Face config.json

    @classmethod
    def from_hf_config(cls, d: dict[str, Any], **overrides) -> "ModelConfig":
        """Reads a transformers 4 or 5 ``config.json`` dict of a Llama, Qwen2 or Mistral model."""
        mt = d.get("model_type")
        archs = d.get("architectures") or []
        known = {v: k for k, v in HF_ARCHITECTURES.items()}
        if mt not in ARCHS or any(a not in known for a in archs):
            raise ValueError(
                f"unsupported architecture {archs or None} (model_type {mt!r}); supported: "
                f"{sorted(HF_ARCHITECTURES.values())} (model_type {list(ARCHS)})")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r} in config.json (only 'silu')")
        theta, scaling = _read_rope(d)
        heads = d["num_attention_heads"]
        kv = d.get("num_key_value_heads") or heads
        window = d.get("sliding_window")
        layer_types = d.get("layer_types")
        if mt == "qwen2" and not d.get("use_sliding_window", False):
            window, layer_types = None, None
        if mt == "qwen2" and window is not None and not layer_types:
            first = d.get("max_window_layers", 0)
            layer_types = ["sliding_attention" if i >= first else "full_attention"
                           for i in range(d["num_hidden_layers"])]
        if mt == "llama":
            window, layer_types = None, None
        if window is None:
            layer_types = None
        kw = dict(
            arch=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
            num_heads=heads, num_kv_heads=kv, head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=(mt == "qwen2") or bool(d.get("attention_bias", False)),
            o_bias=(mt == "llama") and bool(d.get("attention_bias", False)),
            mlp_bias=(mt == "llama") and bool(d.get("mlp_bias", False)),
            sliding_window=window,
            layer_types=tuple(layer_types) if layer_types else None,
            initializer_range=d.get("initializer_range", 0.02),
            bos_token_id=_int_or_none(d.get("bos_token_id")),
            eos_token_id=_int_or_none(d.get("eos_token_id")),
            pad_token_id=_int_or_none(d.get("pad_token_id")))
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self, dtype: str = "float32") -> dict[str, Any]:
        """A transformers 5 ``config.json`` dict for this model."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope = {"rope_theta": self.rope_theta,
                    **{k: v for k, v in dataclasses.asdict(self.rope_scaling).items()}}
            if self.rope_scaling.rope_type == "linear":
                rope = {"rope_type": "linear", "rope_theta": self.rope_theta,
                        "factor": self.rope_scaling.factor}
        d: dict[str, Any] = {
            "architectures": [HF_ARCHITECTURES[self.arch]], "model_type": self.arch,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range, "dtype": dtype,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "attention_dropout": 0.0, "use_cache": True,
        }
        if self.arch == "llama":
            if self.qkv_bias != self.o_bias:
                raise ValueError("Llama's attention_bias covers q/k/v and o together; "
                                 f"got qkv_bias={self.qkv_bias}, o_bias={self.o_bias}")
            d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias, pretraining_tp=1)
        else:
            if self.mlp_bias or self.o_bias or self.qkv_bias != (self.arch == "qwen2"):
                raise ValueError(f"{self.arch} checkpoints fix the biases (qwen2: q/k/v only; "
                                 "mistral: none); this config's biases cannot be written")
            if self.arch == "mistral" and self.layer_types is not None:
                raise ValueError("mistral applies sliding_window to every layer; "
                                 "layer_types cannot be written")
        if self.arch == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.arch == "qwen2":
            d.update(use_sliding_window=self.sliding_window is not None,
                     sliding_window=self.sliding_window,
                     max_window_layers=self.num_layers,
                     layer_types=list(self.layer_types or (
                         ["sliding_attention" if self.sliding_window else "full_attention"]
                         * self.num_layers)))
        return d


def _int_or_none(v) -> Optional[int]:
    if isinstance(v, list):
        v = v[0] if v else None
    return None if v is None else int(v)


def _read_rope(d: dict[str, Any]) -> tuple[float, Optional[RopeScaling]]:
    """(theta, scaling) from transformers 5 ``rope_parameters`` or 4's ``rope_theta`` /
    ``rope_scaling``."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    rtype = params.get("rope_type", params.get("type", "default"))
    if rtype not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rtype!r} in config.json; supported: {ROPE_TYPES}")
    if rtype == "default":
        return theta, None
    if rtype == "linear":
        return theta, RopeScaling("linear", factor=float(params["factor"]))
    return theta, RopeScaling(
        "llama3", factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))
