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


def test_logit_distance_against_a_written_out_kl():
    """KL(p || q), max |log p - log q| and argmax flips, each written out with math."""
    import math

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5))
    other = logits + rng.normal(scale=0.1, size=logits.shape)
    other[1, 2] = logits[1, 2][::-1]                       # a position whose argmax moves
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logq = other - np.log(np.exp(other).sum(-1, keepdims=True))
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    logit_distance = repro.logit_distance
    d = logit_distance(logp, logq, mask)
    kls, flips, diffs = [], [], []
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            p, q = [math.exp(v) for v in logp[i, t]], [math.exp(v) for v in logq[i, t]]
            kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
            flips.append(max(range(5), key=lambda j: p[j]) != max(range(5), key=lambda j: q[j]))
            diffs += [abs(a - b) for a, b in zip(logp[i, t], logq[i, t])]
    assert d["positions"] == 5
    assert d["mean_kl"] == pytest.approx(sum(kls) / 5, rel=1e-12)
    assert d["max_kl"] == pytest.approx(max(kls), rel=1e-12)
    assert d["max_abs"] == pytest.approx(max(diffs), rel=1e-12)
    assert d["argmax_flips"] == pytest.approx(sum(flips) / 5) and sum(flips) >= 1
    assert d["problems_flipped"] == 0.5
    same = logit_distance(logp, logp, mask)
    assert same["mean_kl"] == 0 and same["max_abs"] == 0 and same["argmax_flips"] == 0
    with pytest.raises(ValueError, match="shape"):
        logit_distance(logp, logq[:, :2], mask)
