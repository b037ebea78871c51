"""`python -m bitscale.selfcheck`: the CLI end to end (--quick, as CI runs it) and its verdicts."""

import json
import subprocess
import sys

import numpy as np

from bitscale import selfcheck
from bitscale.selfcheck import FAIL, MISMATCH, OK, Report, Result


def test_quick_selfcheck_passes_and_writes_json(tmp_path):
    out = tmp_path / "selfcheck.json"
    proc = subprocess.run([sys.executable, "-m", "bitscale.selfcheck", "--quick",
                           f"--json={out}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("SUMMARY device='cpu")
    data = json.loads(out.read_text())
    assert data["counts"]["mismatch"] == 0 and data["counts"]["fail"] == 0
    names = {r["name"] for r in data["results"]}
    for spec in selfcheck.QUICK_SPECS:
        assert f"fake_quant {spec} stochastic" in names
        assert f"lowering cuda+tpu {spec}" in names
    assert any(n.startswith("kernel qmatmul") for n in names)


def test_diff_message_sees_nan_payloads_and_signed_zeros():
    a = np.array([np.nan, 0.0], np.float32)
    b = a.copy()
    assert selfcheck.diff_message(a, b) is None
    b[0] = np.array(0xFFC00000, np.uint32).view(np.float32)  # the x86 default NaN
    assert "1 of 2 elements differ" in selfcheck.diff_message(a, b)
    c = np.array([np.nan, -0.0], np.float32)
    assert "first at (1,)" in selfcheck.diff_message(a, c)


def test_report_fails_on_mismatch_or_exception():
    assert Report("x", [Result("a", OK)]).passed
    assert not Report("x", [Result("a", OK), Result("b", MISMATCH, "1 differs")]).passed
    r = selfcheck._run_case("boom", lambda: 1 / 0)
    assert r.status == FAIL and "ZeroDivisionError" in r.detail
    assert not Report("x", [r]).passed
