"""The precision-study config (configs/demo.py) with the ``bf16`` precision policy.

    python -m bitscale.train --config=configs/bf16.py --workdir=/tmp/demo_bf16
"""

from __future__ import annotations

from bitscale.config_file import load_module, sibling

_demo = load_module(sibling(__file__, "demo.py"))


def get_config():
    return _demo.get_config("bf16")
