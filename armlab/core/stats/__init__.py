"""Sequential statistics: mSPRT, adaptive-valid (IPW) confidence sequences, SRM, corrections,
off-policy estimators and the Monte Carlo simulators that check them.

Pure numpy/scipy; no I/O. See ``msprt`` for the fixed-allocation test
of Johari et al. (2022) and ``adaptive`` for the propensity-weighted test that stays valid when a
bandit moves traffic in response to the data; ``guardrails`` applies the latter to guardrail
metrics (one-sided non-inferiority with a margin).
"""

from armlab.core.evidence import ArmSums
from armlab.core.stats.adaptive import (
    IpwMoments,
    SrmResult,
    ipw_moments,
    ipw_msprt,
    srm_check,
)
from armlab.core.stats.msprt import (
    MsprtResult,
    MsprtState,
    bonferroni_adjust,
    holm_adjust,
    mixture_test,
    msprt_two_sample,
    tau2_for_effect,
    tau2_for_horizon,
    two_sample_moments,
)
from armlab.core.stats.noninferiority import GuardrailResult, guardrail_test

__all__ = [
    "ArmSums",
    "GuardrailResult",
    "IpwMoments",
    "MsprtResult",
    "MsprtState",
    "SrmResult",
    "bonferroni_adjust",
    "guardrail_test",
    "holm_adjust",
    "ipw_moments",
    "ipw_msprt",
    "mixture_test",
    "msprt_two_sample",
    "srm_check",
    "tau2_for_effect",
    "tau2_for_horizon",
    "two_sample_moments",
]
