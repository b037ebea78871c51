"""Flax NNX Llama-family models with precision policies, Hugging Face checkpoints, sharding."""

from bitscale.nn.attention import KVCache, init_cache
from bitscale.nn.config import DEFAULT_AXIS_RULES, ModelConfig, RopeScaling
from bitscale.nn.hf import from_hf, load_tokenizer, to_hf
from bitscale.nn.layers import Embed, Linear, PackedWeight, RMSNorm
from bitscale.nn.llama import Llama, apply, module_paths
from bitscale.nn.packed import packed_matmul
from bitscale.nn.policy import (NAMED_POLICIES, PROJ, Policy, Rule, policy_names,
                                 register_policy, resolve_policy)
from bitscale.nn.ptq import packed_bits, quantize_weights
from bitscale.nn.qdot import make_dot_general, qdot, slot_key
from bitscale.nn.sharding import (
    MESH_AXES, constrain, logical_to_spec, make_mesh, param_specs, shard_model)

__all__ = [
    "DEFAULT_AXIS_RULES", "Embed", "KVCache", "Linear", "Llama", "MESH_AXES", "ModelConfig",
    "NAMED_POLICIES", "PROJ", "PackedWeight", "Policy", "RMSNorm", "RopeScaling", "Rule", "apply",
    "constrain", "from_hf", "init_cache", "load_tokenizer", "logical_to_spec", "make_dot_general",
    "make_mesh", "module_paths", "packed_bits", "packed_matmul", "param_specs", "policy_names",
    "qdot", "quantize_weights", "register_policy", "resolve_policy", "shard_model", "slot_key", "to_hf",
]
