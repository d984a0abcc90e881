"""Shamir t-of-n sharing of bytes: any t rebuild, fewer cannot, corrupt shares are refused."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from privlearn.fl.privacy.secagg.shamir import P, Share, ShareError, combine, split


@pytest.mark.parametrize("length", [0, 1, 2, 3, 32, 1001])
def test_any_t_of_n_shares_rebuild_the_secret(length):
    secret = os.urandom(length)
    shares = split(secret, n=5, t=3)
    for subset in itertools.combinations(shares, 3):
        assert combine(list(subset)) == secret
    assert combine(shares) == secret


def test_fewer_than_t_shares_are_refused_and_say_nothing():
    shares = split(b"\x00" * 64, n=4, t=3)
    with pytest.raises(ShareError, match="fewer than the threshold 3"):
        combine(shares[:2])
    # t - 1 shares of an all-zero secret are uniform residues, not zeros
    assert all(np.mean(s.y == 0) < 0.2 for s in shares[:2])


def test_shares_round_trip_through_bytes_and_malformed_ones_are_named():
    shares = split(b"seed" * 8, n=3, t=2)
    back = [Share.from_bytes(s.to_bytes()) for s in shares]
    assert combine(back[1:]) == b"seed" * 8
    blob = shares[0].to_bytes()
    for bad, why in [
        (blob[:5], "shorter than its header"),
        (b"XXXX" + blob[4:], "bad magic"),
        (blob[:-1], "must hold"),
        (blob[:-4] + (P + 1).to_bytes(4, "little"), "outside the field"),
    ]:
        with pytest.raises(ShareError, match=why):
            Share.from_bytes(bad)


def test_a_garbled_share_is_caught_by_the_symbol_range_check():
    """Shamir itself has no integrity (the protocols authenticate shares in transit); a
    share of random values rebuilds symbols >= 2^24 with probability 1 - 2^-7 each."""
    shares = split(b"k" * 30, n=3, t=3)
    forged = Share(shares[0].x, 3, 30, np.random.default_rng(0).integers(0, P, 10))
    with pytest.raises(ShareError, match="forged or corrupt"):
        combine([forged, *shares[1:]])


def test_mixed_secrets_and_bad_parameters_are_refused():
    a, b = split(b"a" * 9, 3, 2), split(b"b" * 12, 3, 2)
    with pytest.raises(ShareError, match="different secrets"):
        combine([a[0], b[1]])
    with pytest.raises(ValueError, match="1 <= t <= n"):
        split(b"x", n=2, t=3)
