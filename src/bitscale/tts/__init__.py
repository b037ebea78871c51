"""bitscale.tts: test-time scaling metrics and models.

- pass@k (unbiased, float32-accurate at any n) and coverage curves with bootstrap bands;
- the exponentiated power-law fit of coverage, ``coverage(k) = exp(a k^b)``;
- verifiers: perfect (a task's checker), imperfect (completeness/soundness), weak (answer residue);
- selection of one of N samples: verifier, majority vote, log-prob-weighted vote, oracle, and
  accuracy-vs-k curves for any selector;
- the closed-form model of resampling with an imperfect verifier: accuracy limit, finite-k outcome,
  expected utility with false-positive cost, and the optimal number of samples K*.

Array functions are pure jnp (they work under `jit`/`vmap`); randomness is an explicit key.

References:
    Chen et al., arXiv:2107.03374 (pass@k); Brown et al., "Large Language Monkeys",
    arXiv:2407.21787; Stroebl et al., "Inference Scaling fLaws", arXiv:2411.17501;
    Wang et al., arXiv:2203.11171 (self-consistency).
"""

from bitscale.tts._coverage import (
    CoverageBands,
    PowerLawFit,
    bootstrap_coverage,
    coverage_curve,
    fit_power_law,
    pass_at_k_matrix,
)
from bitscale.tts._imperfect import (
    OptimalK,
    ResampleOutcome,
    accuracy_limit,
    expected_utility,
    optimal_num_samples,
    resample_outcome,
    two_type_optimal_k,
)
from bitscale.tts._passk import pass_at_k, pass_at_k_np
from bitscale.tts._selection import (
    Selection,
    accuracy_curve,
    logprob_vote,
    majority_vote,
    oracle_select,
    select_best_score,
    select_first_accepted,
    weighted_vote,
)
from bitscale.tts._verifiers import (
    ImperfectVerifier,
    PerfectVerifier,
    ResidueVerifier,
    answer_codes,
    final_answers,
    task_correctness,
)

__all__ = [
    "CoverageBands", "ImperfectVerifier", "OptimalK", "PerfectVerifier", "PowerLawFit",
    "ResampleOutcome", "ResidueVerifier", "Selection", "accuracy_curve", "accuracy_limit",
    "answer_codes", "bootstrap_coverage", "coverage_curve", "expected_utility", "final_answers",
    "fit_power_law", "logprob_vote", "majority_vote", "optimal_num_samples", "oracle_select",
    "pass_at_k", "pass_at_k_matrix", "pass_at_k_np", "resample_outcome", "select_best_score",
    "select_first_accepted", "task_correctness", "two_type_optimal_k", "weighted_vote",
]
