"""The precision-study config (configs/demo.py) with the ``mxfp4`` precision policy.

    python -m bitscale.train --config=configs/mxfp4.py --workdir=/tmp/demo_mxfp4
"""

from __future__ import annotations

from bitscale.config_file import load_module, sibling

_demo = load_module(sibling(__file__, "demo.py"))


def get_config():
    return _demo.get_config("mxfp4")
