"""Orbax checkpoints of a training state pytree plus JSON metadata (step, data position).

The state is saved as a flat dict of its leaves (``leaf_00000`` ...) so that any pytree (NNX
`State`, optax NamedTuples, raw key data) round-trips bit-exactly; the leaves' key paths, shapes
and dtypes go into the metadata and are checked on restore, so a checkpoint written for another
model or optimizer fails with an error that names the directory instead of restoring garbage.

References:
  orbax-checkpoint `CheckpointManager` (Composite of StandardSave / JsonSave).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer"]


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be restored into the current run's state."""


def _describe(tree: Any) -> tuple[list[str], list[tuple[int, ...]], list[str], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    shapes = [tuple(int(d) for d in np.shape(x)) for _, x in leaves]
    dtypes = [str(np.dtype(x.dtype)) for _, x in leaves]
    return paths, shapes, dtypes, treedef


class Checkpointer:
    """Saves/restores ``(state, metadata)`` every ``every`` steps under ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        try:
            self._mngr = ocp.CheckpointManager(self.directory, options=options)
        except Exception as e:
            raise CheckpointError(f"cannot open checkpoint directory {self.directory}: "
                                  f"{type(e).__name__}: {e}") from e

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves ``state`` (any pytree of arrays) and JSON-able ``meta`` as checkpoint ``step``."""
        leaves = jax.tree_util.tree_leaves(state)
        paths, shapes, dtypes, _ = _describe(state)
        meta = dict(meta, step=int(step), paths=paths, shapes=shapes, dtypes=dtypes)
        items = {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}
        self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                      meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, like: Any, shardings: Any = None) -> tuple[Any, dict]:
        """Restores checkpoint ``step`` into the structure of ``like`` (placed as ``shardings``)."""
        return self._restore_prefix(step, "", like, shardings, what="this run's state",
                                    hint="model/optimizer config changed?")

    def restore_subtree(self, step: int, prefix: str, like: Any,
                        shardings: Any = None) -> tuple[Any, dict]:
        """Restores the part of checkpoint ``step`` whose key paths start with ``prefix`` (e.g.
        ``".params"`` of a `TrainState`) into the structure of ``like``.

        The other leaves are read too (orbax restores whole items) and dropped.
        """
        return self._restore_prefix(step, prefix, like, shardings,
                                    what=f"the requested {prefix}",
                                    hint="model config or policy changed?")

    def _restore_prefix(self, step: int, prefix: str, like: Any, shardings: Any, *, what: str,
                        hint: str) -> tuple[Any, dict]:
        """The leaves of checkpoint ``step`` under ``prefix`` ("": all), checked against
        ``like``'s paths, shapes and dtypes, as ``like``'s structure placed as ``shardings``."""
        where = os.path.join(self.directory, str(step))
        meta = self._meta(step)
        saved = list(zip(meta.get("paths") or [], [tuple(s) for s in meta.get("shapes") or []],
                         meta.get("dtypes") or []))
        paths, shapes, dtypes, treedef = _describe(like)
        mine = [i for i, (p, _, _) in enumerate(saved) if p.startswith(prefix)]
        got = [(saved[i][0][len(prefix):], saved[i][1], saved[i][2]) for i in mine]
        want = list(zip(paths, shapes, dtypes))
        if got != want:
            under = f" under {prefix}" if prefix else ""
            diff = next((f"{a} {sa} {da} (checkpoint) vs {b} {sb} {db} (run)"
                         for (a, sa, da), (b, sb, db) in zip(got, want)
                         if (a, sa, da) != (b, sb, db)),
                        f"{len(got)} leaves{under} (checkpoint) vs {len(want)} (run)")
            raise CheckpointError(f"checkpoint {where} does not match {what} ({hint}): first "
                                  f"difference: {diff}")
        like_leaves = jax.tree_util.tree_leaves(like)
        shard_leaves = (jax.tree_util.tree_leaves(shardings) if shardings is not None
                        else [getattr(x, "sharding", None) for x in like_leaves])
        target = {f"leaf_{i:05d}": jax.ShapeDtypeStruct(s, np.dtype(d))
                  for i, (_, s, d) in enumerate(saved)}
        for j, i in enumerate(mine):
            target[f"leaf_{i:05d}"] = jax.ShapeDtypeStruct(shapes[j], np.dtype(dtypes[j]),
                                                           sharding=shard_leaves[j])
        items = self._restore_items(step, target)
        leaves = [items[f"leaf_{i:05d}"] for i in mine]
        return jax.tree_util.tree_unflatten(treedef, leaves), meta

    def _meta(self, step: int) -> dict:
        try:
            return self._mngr.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            where = os.path.join(self.directory, str(step))
            raise CheckpointError(f"corrupt or unreadable checkpoint {where}: metadata does not "
                                  f"load ({type(e).__name__}: {e})") from e

    def _restore_items(self, step: int, target: dict) -> dict:
        try:
            return self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))["state"]
        except Exception as e:
            where = os.path.join(self.directory, str(step))
            raise CheckpointError(f"corrupt or unreadable checkpoint {where}: arrays do not load "
                                  f"({type(e).__name__}: {e})") from e

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.close()
