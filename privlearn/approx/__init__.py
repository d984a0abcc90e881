"""Polynomial approximation on ciphertexts, and a wide-range softmax with a derived error bound.

Modules, bottom up: ``bounds`` (certified suprema), ``planner`` (level manager, symbolic dry
runs), ``poly`` (Chebyshev series, depth-optimal evaluation), ``rows`` (row-major row groups),
``functions`` (exp, inverses, sign, row max), ``normalise`` (normalisers for
normalise-and-square), ``softmax`` (HETAL, baselines, ours). Depends on ``privlearn.he`` only.
"""
