"""Config sections: defaults in one place (the dataclasses), named overrides, unknown keys and
bad values refused, and the loop reading the same defaults."""

import dataclasses

import pytest

from bitscale.data import PAD_ID
from bitscale.train import sections

SECTIONS = [(sections.loss_section, sections.LossConfig),
            (sections.mesh_section, sections.MeshConfig),
            (sections.optim_section, sections.OptimConfig),
            (sections.train_section, sections.TrainConfig)]


def test_overrides_and_defaults():
    optim = sections.optim_section(lr=1e-3)
    default = sections.OptimConfig()
    assert optim.lr == 1e-3 and optim.warmup_steps == default.warmup_steps == 100
    assert set(optim.keys()) == {f.name for f in dataclasses.fields(sections.OptimConfig)}
    # fresh objects: changing one config does not leak into the next
    optim.lr = 5.0
    assert sections.optim_section().lr == default.lr == 3e-4
    assert sections.LossConfig().mask_id == PAD_ID


@pytest.mark.parametrize("fn,cls", SECTIONS)
def test_builder_and_reader_round_trip(fn, cls):
    section = fn()
    assert sections.read_section(cls, section, "x") == cls()
    assert sections.read_section(cls, None, "x") == cls()


@pytest.mark.parametrize("fn,cls", SECTIONS)
def test_unknown_key_is_named(fn, cls):
    with pytest.raises(ValueError, match=r"unknown keys \['lrr'\]; valid: \["):
        fn(lrr=1)
    with pytest.raises(ValueError, match=r"unknown cfg.sec keys \['lrr'\]; valid: \["):
        sections.read_section(cls, {"lrr": 1}, "sec")


@pytest.mark.parametrize("kw,match", [
    ({"grad_accum": 3}, r"train.grad_accum=3 must divide train.batch_size=16"),
    ({"steps": 0}, r"train.steps must be an int >= 1, got 0"),
    ({"stop_after": 1.5}, r"train.stop_after must be an int >= 0, got 1.5"),
])
def test_bad_train_values(kw, match):
    with pytest.raises(ValueError, match=match):
        sections.train_section(**kw)


def test_bad_optim_values():
    with pytest.raises(ValueError, match=r"optim.lr must be a number >= 0, got -1"):
        sections.OptimConfig(lr=-1)
    with pytest.raises(ValueError, match=r"optim.b2 must be in \[0, 1\), got 1.0"):
        sections.OptimConfig(b2=1.0)
    assert sections.OptimConfig(lr_scales=[["mlp", 2]]).lr_scales == (("mlp", 2.0),)


def test_run_config_names_missing_pieces():
    with pytest.raises(ValueError, match=r"no \['data', 'optim', 'train'\] section"):
        sections.RunConfig.of({"model": object(), "policy": "fp32"})
