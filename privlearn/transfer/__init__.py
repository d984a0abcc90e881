"""Encrypted transfer learning after HETAL: a server fine-tunes a softmax head on ciphertexts."""

from privlearn.transfer.estimator import EncryptedSoftmaxClassifier
from privlearn.transfer.userdata import DataSource, UserData, load_data

__all__ = [
    "DataSource",
    "EncryptedSoftmaxClassifier",
    "UserData",
    "load_data",
]
