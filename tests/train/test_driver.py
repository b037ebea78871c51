"""`StepDriver`: metrics drained one step late, a save drains (checks) its step first, a non-finite
metric at step k raises naming k with nothing at or after k saved or logged, ``stop_after``; and
`Progress` shows the named metrics."""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import pytest

from bitscale.train import StepDriver
from bitscale.train.checkpoint import Checkpointer
from bitscale.train.metrics import MetricsWriter, Progress, read_metrics

STATE = {"w": jnp.arange(3, dtype=jnp.float32)}


class RecordingCheckpointer(Checkpointer):
    def __init__(self, directory: str, events: list):
        super().__init__(directory, max_to_keep=None)
        self.events = events

    def save(self, step, state, meta):
        self.events.append(("save", step))
        super().save(step, state, meta)


def make_driver(tmp_path, events: list, **kw) -> StepDriver:
    ckpt = RecordingCheckpointer(str(tmp_path / "checkpoints"), events)
    settings = dict(total=6, log_every=2, checkpoint_every=2, stop_after=0)
    settings.update(kw)
    return StepDriver("test", ckpt=ckpt, writer=MetricsWriter(str(tmp_path), tensorboard=False),
                      progress=Progress(settings["total"], enabled=False),
                      on_step=lambda s, m: events.append(("drained", s)), **settings)


def device_metrics(step: int, nan_at: int = 0) -> dict:
    loss = math.nan if step == nan_at else 1.0 / step
    return {"loss": jnp.float32(loss), "grad_norm": jnp.float32(step)}


def run(driver: StepDriver, events: list, nan_at: int = 0) -> None:
    try:
        for s in range(1, driver.total + 1):
            events.append(("dispatched", s))
            driver.submit(s, device_metrics(s, nan_at), {"host": float(s)})
            if driver.end_step(s, STATE, {"position": s}):
                break
        driver.finish()
    finally:
        driver.close()


def test_one_step_late_and_saves_drain_first(tmp_path):
    events: list = []
    driver = make_driver(tmp_path, events)
    run(driver, events)
    assert events == [("dispatched", 1), ("dispatched", 2), ("drained", 1), ("drained", 2),
                      ("save", 2), ("dispatched", 3), ("dispatched", 4), ("drained", 3),
                      ("drained", 4), ("save", 4), ("dispatched", 5), ("dispatched", 6),
                      ("drained", 5), ("drained", 6), ("save", 6)]
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 4, 6]  # step 1, every log_every, the last
    assert rows[-1] == {"step": 6, "loss": float(jnp.float32(1 / 6)), "grad_norm": 6.0,
                        "host": 6.0}
    assert driver.last == {k: v for k, v in rows[-1].items() if k != "step"}
    assert not driver.stopped


def test_save_flushes_the_pending_step(tmp_path):
    events: list = []
    driver = make_driver(tmp_path, events)
    driver.submit(1, device_metrics(1))
    assert events == []
    driver.save(1, STATE, {"position": 1})
    assert events == [("drained", 1), ("save", 1)]
    driver.finish()
    driver.close()


@pytest.mark.parametrize("k", [3, 4])  # between checkpoints, on a checkpoint step
def test_non_finite_metric_names_the_step_and_saves_nothing_from_it(tmp_path, k):
    events: list = []
    driver = make_driver(tmp_path, events)
    with pytest.raises(FloatingPointError,
                       match=rf"non-finite test metrics at step {k}: loss=nan, grad_norm="
                             rf"{float(k)}; stopped without saving it \(latest checkpoint: "
                             rf"step 2 in .*checkpoints\)"):
        run(driver, events, nan_at=k)
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]
    assert ("save", k) not in events and ("drained", k) not in events
    assert max(r["step"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl"))) < k


def test_stop_after_drains_and_stops(tmp_path):
    events: list = []
    driver = make_driver(tmp_path, events, stop_after=3)
    run(driver, events)
    assert driver.stopped and events[-1] == ("drained", 3)
    assert [e for e in events if e[0] == "save"] == [("save", 2)]


def test_always_log_keys_are_written_on_any_step(tmp_path):
    events: list = []
    driver = make_driver(tmp_path, events, always_log=("eval_accuracy",))
    host = {}
    driver.submit(3, device_metrics(3), host)
    host["eval_accuracy"] = 0.5  # added after submit: read when the step is drained
    driver.finish()
    driver.close()
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == [
        {"step": 3, "loss": float(jnp.float32(1 / 3)), "grad_norm": 3.0, "eval_accuracy": 0.5}]


def test_progress_shows_named_metrics(capsys):
    p = Progress(10, keys=("loss", "reward_mean"))
    p.update(2, {"loss": 0.5, "reward_mean": 0.25, "other": 1.0})
    p.update(3, {"loss": math.nan})
    p.close()
    err = capsys.readouterr().err
    assert "\rstep 2/10 loss 0.5000 reward_mean 0.2500 " in err and "other" not in err
    assert "\rstep 3/10 loss nan " in err
    Progress(10).update(1, {"loss": 1.0})
    assert capsys.readouterr().err.startswith("\rstep 1/10 loss 1.0000 ")
