"""The precision-study config (configs/demo.py) with the ``int4@g128`` precision policy.

    python -m bitscale.train --config=configs/int4_g128.py --workdir=/tmp/demo_int4_g128
"""

from __future__ import annotations

from bitscale.config_file import load_module, sibling

_demo = load_module(sibling(__file__, "demo.py"))


def get_config():
    return _demo.get_config("int4@g128")
