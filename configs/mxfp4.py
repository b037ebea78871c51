"""The precision-study config (configs/demo.py) with the ``mxfp4`` precision policy.

    python -m bitscale.train --config=configs/mxfp4.py --workdir=/tmp/demo_mxfp4
"""

from __future__ import annotations

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_bitscale_demo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


def get_config():
    return _demo.get_config("mxfp4")
