"""Flax NNX Llama-family models with precision policies, Hugging Face checkpoints, sharding.

The API is this ``__init__`` (its modules are private, ``_llama.py`` ...) plus the public
module `safetensors_io` (a dependency-free safetensors reader / writer)."""

from bitscale.nn._attention import KVCache, init_cache, softmax
from bitscale.nn._config import DEFAULT_AXIS_RULES, ModelConfig, RopeScaling
from bitscale.nn._hf import from_hf, to_hf
from bitscale.nn._layers import Embed, Linear, PackedWeight, RMSNorm
from bitscale.nn._llama import Llama, apply, module_paths, with_policy
from bitscale.nn._packed import packed_matmul
from bitscale.nn._policy import (NAMED_POLICIES, PROJ, DotReduction, Policy, Rotation, Rule,
                                  SumReduction, policy_names, register_policy,
                                  register_policy_family, resolve_policy)
from bitscale.nn._recipes import RECIPE_POLICIES
from bitscale.nn._ptq import mean_weight_bits, quantize_weights, weight_bits
from bitscale.nn._qdot import make_dot_general, qdot, slot_key
from bitscale.nn._sharding import (
    MESH_AXES, batch_spec, constrain, dotted_path, logical_to_spec, make_mesh, param_specs,
    shard_model)

__all__ = [
    "DEFAULT_AXIS_RULES", "DotReduction", "Embed", "KVCache", "Linear", "Llama", "MESH_AXES",
    "ModelConfig", "NAMED_POLICIES", "PROJ", "PackedWeight", "Policy", "RECIPE_POLICIES",
    "RMSNorm", "RopeScaling", "Rotation", "Rule", "SumReduction", "apply", "batch_spec",
    "constrain", "dotted_path", "from_hf", "init_cache", "logical_to_spec", "make_dot_general",
    "make_mesh", "mean_weight_bits", "module_paths", "packed_matmul", "param_specs",
    "policy_names", "qdot", "quantize_weights", "register_policy", "register_policy_family",
    "resolve_policy", "shard_model", "slot_key", "softmax", "to_hf", "weight_bits",
    "with_policy",
]
