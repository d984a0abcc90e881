"""Encrypted transfer learning after HETAL: a server fine-tunes a softmax head on ciphertexts."""

from privlearn.transfer.estimator import EncryptedSoftmaxClassifier

__all__ = ["EncryptedSoftmaxClassifier"]
