"""SecAgg+ masking: the sum survives dropouts, misbehaving clients are named, the server learns
nothing but the sum."""

import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privlearn.fl.privacy.secagg import masking
from privlearn.fl.privacy.secagg.base import AggregationFailed
from privlearn.fl.privacy.secagg.masking import MaskingParams, SecAggPlus, prg


def inputs(n, p=300, seed=0):
    rng = np.random.default_rng(seed)
    return {u: rng.normal(scale=3.0, size=p) for u in range(n)}


def plain_sum(x, clients):
    return np.sum([x[u] for u in clients], axis=0)


@pytest.mark.parametrize("drop", [0.0, 0.1, 0.3])
def test_sum_within_the_fixed_point_bound_at_each_dropout_level(drop):
    n = 30
    x = inputs(n)
    rng = np.random.default_rng(1)
    gone = rng.choice(n, size=int(drop * n), replace=False).tolist()
    before, after = frozenset(gone[::2]), frozenset(gone[1::2])  # both kinds of drop
    proto = SecAggPlus()
    agg = proto.aggregate(x, 4, before, after)
    assert set(agg.clients) == set(range(n)) - before  # late droppers' inputs are in the sum
    assert set(agg.excluded) == set(before)
    err = np.abs(agg.total - plain_sum(x, agg.clients)).max()
    assert err <= proto.error_bound(n)
    assert err > 0  # fixed point really rounds


def test_too_many_dropouts_fail_with_no_partial_sum():
    x = inputs(12)
    proto = SecAggPlus(MaskingParams(neighbours=4, threshold=3))
    with pytest.raises(AggregationFailed, match="fewer than the threshold"):
        proto.aggregate(x, 0, drop_before_unmask=frozenset(range(1, 12)))
    with pytest.raises(AggregationFailed, match="uploaded, fewer than the threshold"):
        proto.aggregate(x, 0, drop_before_upload=frozenset(range(10)))


def corrupt(phase, who, how):
    def adversary(p, u, msg):
        return how(msg) if (p, u) == (phase, who) else msg

    return adversary


def reheader(msg, rnd=None, dst=None):
    magic, kind, r, s, d = struct.unpack_from("<4sBIii", msg)
    head = struct.pack(
        "<4sBIii", magic, kind, r if rnd is None else rnd, s, d if dst is None else dst
    )
    return head + msg[struct.calcsize("<4sBIii") :]


@pytest.mark.parametrize(
    "phase, how, reason",
    [
        ("upload", lambda m: m[:-8], "malformed masked input"),
        ("upload", lambda m: reheader(m, rnd=1), "replayed"),
        ("upload", lambda m: reheader(m, dst=5), "mis-addressed"),
        ("advertise", lambda m: m[:-1], "malformed key advertisement"),
        ("share", lambda m: m[:-3], "malformed key shares"),
    ],
)
def test_a_malformed_or_misaddressed_message_names_its_client_and_the_sum_stays_right(
    phase, how, reason
):
    x = inputs(16)
    proto = SecAggPlus(adversary=corrupt(phase, 7, how))
    agg = proto.aggregate(x, 2)
    assert reason in agg.excluded[7]
    assert 7 not in agg.clients and len(agg.clients) == 15
    assert np.abs(agg.total - plain_sum(x, agg.clients)).max() <= proto.error_bound(16)


def test_shares_that_do_not_open_exclude_their_dealer():
    def flip_last(msg):  # the last byte is inside the last AES-GCM blob: its tag fails
        return msg[:-1] + bytes([msg[-1] ^ 1])

    x = inputs(16)
    agg = SecAggPlus(adversary=corrupt("share", 3, flip_last)).aggregate(x, 0)
    assert agg.excluded[3] == "sent key shares that did not open"
    assert np.abs(agg.total - plain_sum(x, agg.clients)).max() < 1e-5


def test_a_forged_share_in_the_unmasking_round_is_unfinished_and_ignored():
    def flip_last(msg):
        return msg[:-1] + bytes([msg[-1] ^ 1])

    x = inputs(16)
    agg = SecAggPlus(adversary=corrupt("unmask", 5, flip_last)).aggregate(
        x, 0, drop_before_upload=frozenset({2})
    )
    assert "does not match its commitment" in agg.unfinished[5]
    assert 5 in agg.clients  # its own input was well formed
    assert np.abs(agg.total - plain_sum(x, agg.clients)).max() < 1e-5


def test_out_of_range_inputs_are_withheld_by_their_client():
    x = inputs(10)
    proto = SecAggPlus()
    x[4] = np.full(300, proto.limit(10) * 2)
    x[6] = np.full(300, np.nan)
    agg = proto.aggregate(x, 0)
    assert "withheld" in agg.excluded[4] and "withheld" in agg.excluded[6]
    assert np.abs(agg.total - plain_sum(x, agg.clients)).max() < 1e-5


def test_the_server_holds_no_secret_and_cannot_unmask_one_client():
    x = inputs(20)
    proto = SecAggPlus()
    proto.aggregate(x, 0, drop_before_upload=frozenset({0}))
    server = proto.last_server

    def leaves(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield k
                yield from leaves(v)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                yield from leaves(v)
        else:
            yield obj

    held = list(leaves(vars(server)))
    assert not any(isinstance(v, X25519PrivateKey) for v in held)
    # a survivor's self-mask seed is what the server rebuilds; its pairwise masks stay on
    u = next(c for c in server.masked if 0 not in server.graph[c])
    b = masking.shamir.combine(server.got[(u, b"b")])
    guess = (server.masked[u] - prg(b, server.size)).view(np.int64) / 2.0**24
    assert np.abs(guess - x[u]).min() > 1e3  # uniform mod 2^64: nothing like the input
    assert (u, b"s") not in server.got  # never both shares of an uploader


def test_costs_grow_with_the_neighbour_count_not_the_cohort():
    params = MaskingParams(neighbours=6)
    small = SecAggPlus(params).aggregate(inputs(12, 100), 0).cost
    large = SecAggPlus(params).aggregate(inputs(48, 100), 0).cost
    assert large["client_bytes_sent"] == pytest.approx(small["client_bytes_sent"], rel=0.02)
    assert large["client_bytes_received"] == pytest.approx(small["client_bytes_received"], rel=0.05)


def test_degree_and_threshold_defaults():
    p = MaskingParams()
    assert p.degree(10) == 9  # small cohorts: everyone is a neighbour
    assert (p.degree(100), p.shares_needed(p.degree(100))) == (28, 10)
    assert (p.degree(1000), p.shares_needed(p.degree(1000))) == (40, 14)
    with pytest.raises(ValueError, match="threshold"):
        MaskingParams(neighbours=4, threshold=5).shares_needed(4)


def test_a_delivered_share_without_a_sender_id_is_refused_not_dropped():
    body = struct.pack("<I", 2) + masking._frame([struct.pack("<i", 3) + b"blob", b"ab"])
    with pytest.raises(masking.MessageError, match="no sender id"):
        masking._read_blobs(body)
