"""Secure aggregation: the server learns only the sum of the surviving clients' vectors, under
SecAgg+-style pairwise masks (`masking`) or threshold CKKS (`threshold`), both behind
`SecureAggregator` (`base`)."""

from __future__ import annotations

from privlearn.fl.privacy.secagg.base import SecureAggregator

PROTOCOLS = ("masking", "threshold-ckks")


def make_aggregator(name: str) -> SecureAggregator:
    """The protocol `name` (one of PROTOCOLS) at its default, 128-bit parameters."""
    if name == "masking":
        from privlearn.fl.privacy.secagg.masking import SecAggPlus

        return SecAggPlus()
    if name == "threshold-ckks":
        from privlearn.fl.privacy.secagg.threshold import ThresholdCKKS

        return ThresholdCKKS()
    raise ValueError(f"unknown secure aggregation {name!r}; expected one of {', '.join(PROTOCOLS)}")
