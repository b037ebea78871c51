"""Logical axis names -> `PartitionSpec`s on a (data, fsdp, tensor) mesh.

Parameters carry their logical axis names in the ``logical_axes`` metadata of their
`nnx.Variable`; activations are constrained with `constrain`. The rules (a tuple of
``(logical name, mesh axis | tuple of mesh axes | None)``) live in `ModelConfig`, so the same model
code runs on one CPU device (no mesh: every constraint is a no-op) and on many.

References:
  JAX "Distributed arrays and automatic parallelization"; Flax "Scale up on multiple devices"
  (logical axis rules); MaxText `logical_axis_rules`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one of the sizes may be -1 (all remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError("at most one mesh axis size may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into mesh {shape}")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                         f"have {len(devices)}")
    arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_spec(names: Sequence[str | None], rules: Rules,
                    mesh_axes: Sequence[str] | None = None) -> PartitionSpec:
    """PartitionSpec for logical ``names``; a mesh axis is used at most once (first wins).

    Mesh axes not in ``mesh_axes`` (when given) are dropped, so rules written for the full
    (data, fsdp, tensor) mesh also work on smaller meshes.
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for n in names:
        target = table.get(n) if n is not None else None
        if n is not None and n not in table:
            raise ValueError(f"logical axis {n!r} has no sharding rule; rules cover "
                             f"{sorted(table)}")
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used
                     and (mesh_axes is None or a in mesh_axes))
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh; no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(names, rules, mesh.axis_names)
    return jax.lax.with_sharding_constraint(x, _fit(spec, x.shape, dict(mesh.shape)))


def _fit(spec: PartitionSpec, shape, sizes: dict[str, int]) -> PartitionSpec:
    """Drops mesh axes from dimensions they do not divide (e.g. batch 1 when decoding)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept, prod = [], 1
        for a in axes:
            if dim % (prod * sizes[a]) == 0:
                kept.append(a)
                prod *= sizes[a]
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def param_specs(model: nnx.Module, mesh: Mesh | None = None,
                rules: Rules | None = None) -> dict[str, PartitionSpec]:
    """Dotted parameter path -> PartitionSpec from each variable's ``logical_axes``.

    With ``mesh``, mesh axes it lacks are dropped and a rule that would shard a dimension the
    mesh axis does not divide raises, naming the parameter.
    """
    rules = rules if rules is not None else model.cfg.logical_axis_rules
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(model)):
        names = v.get_metadata().get("logical_axes")
        p = dotted_path(path)
        if names is None:
            out[p] = PartitionSpec()
            continue
        spec = logical_to_spec(names, rules, mesh.axis_names if mesh is not None else None)
        if mesh is not None and isinstance(v.get_value(), jax.Array):
            _check_divisible(p, v.get_value().shape, spec, names, dict(mesh.shape))
        out[p] = spec
    return out


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
    """Places every parameter of ``model`` on ``mesh`` as its logical axes say (in place).

    Packed `QArray` weights (post-training quantization) are replicated.
    """
    specs = param_specs(model, mesh, rules)
    for path, v in nnx.to_flat_state(nnx.state(model)):
        value = v.get_value()
        spec = specs[".".join(str(k) for k in path)]
        if not isinstance(value, jax.Array):
            spec = PartitionSpec()
        v.set_value(jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec)), value))
    return model


def _check_divisible(path: str, shape, spec, names, sizes) -> None:
    for dim, entry, name in zip(shape, tuple(spec) + (None,) * len(shape), names):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        n = int(np.prod([sizes[a] for a in axes])) if axes else 1
        if dim % n:
            raise ValueError(f"cannot shard parameter {path} of shape {tuple(shape)}: logical axis "
                             f"{name!r} -> mesh axes {axes} (size {n}) does not divide {dim}")


def dotted_path(path) -> str:
    """``layers.0.mlp.up_proj.kernel`` from an `nnx` state path (a tuple of keys) or a
    `jax.tree_util` key path (``GetAttrKey`` / ``DictKey`` / ``SequenceKey`` entries; the
    ``.value`` attribute of a variable is dropped)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
            continue
        out.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return ".".join(out)


def batch_spec(mesh: Mesh, rows: int, *, leading: int = 0) -> PartitionSpec:
    """The spec of a batch whose axis ``leading`` has ``rows`` rows: split over the mesh's data
    and fsdp axes when they divide it, else replicated (leading axes are not split)."""
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % n:
        return PartitionSpec()
    return PartitionSpec(*([None] * leading), ("data", "fsdp"))
