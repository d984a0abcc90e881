"""Polynomial approximation on ciphertexts, and a wide-range softmax with a derived error bound."""
