"""Divergence metrics on hand-made outputs."""

from __future__ import annotations

import numpy as np
import pytest

from bitscale import repro

REF = (np.array([[1, 2, 3, 9], [4, 5, 9, 0], [7, 8, 9, 0], [1, 1, 1, 1]]),
       np.array([4, 3, 3, 4]))


def test_first_divergence():
    other = (np.array([[1, 2, 3, 9], [4, 6, 9, 0], [7, 8, 9, 5], [1, 1, 2, 1]]),
             np.array([4, 3, 4, 4]))
    # identical; differs at 1; prefix of a longer output (index = shorter length); differs at 2
    np.testing.assert_array_equal(repro.first_divergence(REF, other), [-1, 1, 3, 2])
    d = repro.divergence(REF, other)
    assert d["diverged_fraction"] == 0.75
    assert d["summary"] == {"count": 3, "mean": 2.0, "median": 2.0, "min": 1, "max": 3,
                            "p10": 1.2, "p90": 2.8}
    assert repro.divergence(REF, REF)["summary"]["count"] == 0
    # tokens after a row's length are ignored
    padded = (REF[0].copy(), REF[1])
    padded[0][1, 3] = 42
    assert repro.divergence(REF, padded)["diverged_fraction"] == 0.0


def test_group_divergence_takes_the_earliest_index():
    a = (REF[0].copy(), REF[1])
    a[0][0, 3] = 0
    b = (REF[0].copy(), REF[1])
    b[0][0, 1] = 0
    b[0][3, 3] = 0
    g = repro.group_divergence([REF, a, b])
    assert g["first_divergence"] == [1, -1, -1, 3] and g["diverged_fraction"] == 0.5
    assert repro.group_divergence([REF])["diverged_fraction"] == 0.0


def test_std_at_acc_and_length_spread():
    s = repro.std_at_acc([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert repro.std_at_acc([0.4])["std"] == 0.0
    ls = repro.length_spread([[10, 20], [12, 20], [14, 20]])
    assert ls["mean_length"] == pytest.approx(16.0)
    assert ls["avg_std"] == pytest.approx(1.0) and ls["max_range"] == 4.0
    assert ls["avg_range"] == 2.0
    assert repro.divergence_curve([-1, 0, 2, 2], 4) == [0.25, 0.25, 0.75, 0.75]


def test_metric_errors():
    with pytest.raises(ValueError, match="numbers of problems"):
        repro.first_divergence(REF, (REF[0][:2], REF[1][:2]))
    with pytest.raises(ValueError, match="lengths"):
        repro.first_divergence(REF, (REF[0], REF[1] + 3))
    with pytest.raises(ValueError, match="no accuracies"):
        repro.std_at_acc([])
    with pytest.raises(ValueError, match="no runs"):
        repro.group_divergence([])
