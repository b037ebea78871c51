"""Config sections: defaults in one place, named overrides, unknown keys refused, and the loop
reading the same defaults."""

import pytest

from bitscale.data import PAD_ID
from bitscale.train import sections
from bitscale.train.loop import loss_settings


def test_overrides_and_defaults():
    optim = sections.optim_section(lr=1e-3)
    assert optim.lr == 1e-3 and optim.warmup_steps == sections.OPTIM_DEFAULTS["warmup_steps"]
    assert set(optim.keys()) == set(sections.OPTIM_DEFAULTS)
    # fresh objects: changing one config does not leak into the next
    optim.lr = 5.0
    assert sections.optim_section().lr == sections.OPTIM_DEFAULTS["lr"]


@pytest.mark.parametrize("fn", [sections.loss_section, sections.mesh_section,
                                sections.optim_section, sections.train_section])
def test_unknown_key_is_named(fn):
    with pytest.raises(ValueError, match=r"unknown keys \['lrr'\]; valid: \["):
        fn(lrr=1)


def test_loop_defaults_match_the_section():
    class Cfg(dict):
        def get(self, k, d=None):
            return super().get(k, d)

    assert loss_settings(Cfg()) == dict(sections.loss_section())
    assert sections.LOSS_DEFAULTS["mask_id"] == PAD_ID
