"""Threshold CKKS seam: joint keys, sums, flooded partial decryptions, key-share recovery."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.fl.privacy.secagg import shamir
from privlearn.he import io
from privlearn.he.params import InsecureParametersError

pytestmark = pytest.mark.openfhe
mp = pytest.importorskip(
    "privlearn.he.multiparty", reason="OpenFHE is not importable", exc_type=ImportError
)

PARAMS = mp.TOY_AGGREGATION
N_PARTIES = 5
LENGTH = 2 * PARAMS.ring_dim + 300  # three ciphertexts, the last one partly filled


def session():
    return mp.Session(PARAMS, insecure_for_testing=True)


@pytest.fixture(scope="module")
def keyed():
    """Five parties (each with its own session, as in its own process) and a server."""
    sessions = [session() for _ in range(N_PARTIES)]
    lead = mp.Party.lead(sessions[0])
    parties = [lead] + [mp.Party.join(s, lead.public_key) for s in sessions[1:]]
    server = session()
    joint = server.joint_public_key([p.public_key for p in parties])
    for s in [server, *sessions]:
        s.set_public_key(joint)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, LENGTH) for _ in parties]
    count = server.count(LENGTH)
    uploads = [s.encrypt(x) for s, x in zip(sessions, xs, strict=True)]
    total = server.add([server.read(u, count=count, partial=False) for u in uploads])
    return server, parties, xs, uploads, total


def decrypt(server, parties, total, *, sigma=0.0, replace=None):
    """Fuse every share's partial decryption; ``replace`` maps a party index to the Party
    that decrypts for it."""
    count = server.count(LENGTH)
    partials = []
    for i, p in enumerate(parties):
        p = (replace or {}).get(i, p)
        blob = p.partial_decrypt(total, count=count, lead=i == 0, sigma=sigma)
        partials.append(server.read(blob, count=count, partial=True))
    return server.fuse(partials, LENGTH)


def test_default_parameters_are_128_bit_and_the_toy_set_needs_the_opt_out():
    assert mp.AGGREGATION.secure and not mp.AGGREGATION.security_problems()
    assert mp.Session().params.name == "mp-n14"  # OpenFHE's own 128-bit check passes too
    with pytest.raises(InsecureParametersError):
        mp.Session(PARAMS)


def test_the_sum_decrypts_within_the_stated_error(keyed):
    server, parties, xs, _, total = keyed
    err = decrypt(server, parties, total) - np.sum(xs, axis=0)
    std = mp.error_std(PARAMS, parties=N_PARTIES, summands=N_PARTIES, sigma=0.0)
    assert 0.5 * std < err.std() < 1.5 * std
    assert np.abs(err).max() < 7 * std


def test_flooding_adds_sigma_per_share_and_without_it_the_error_is_far_smaller(keyed):
    server, parties, xs, _, total = keyed
    sigma = 1e-4
    err = decrypt(server, parties, total, sigma=sigma) - np.sum(xs, axis=0)
    # five floods of sigma each: sqrt(5) sigma per value, measured over ~4,400 values
    assert err.std() == pytest.approx(np.sqrt(N_PARTIES) * sigma, rel=0.05)
    assert abs(err.mean()) < 5 * err.std() / np.sqrt(err.size)
    bare = decrypt(server, parties, total) - np.sum(xs, axis=0)
    assert bare.std() < 1e-4 * sigma


def test_sigma_is_flooding_sigma_of_the_error_bound_and_the_bound_holds(keyed):
    """The key-dependent error, read with the joint secret (the sum of every share, formed
    here from OpenFHE's additive shares), stays below error_bound and near it."""
    server, parties, xs, _, total = keyed
    cc = server._cc
    pieces = {}
    for p in parties:  # additive 2-way shares of each key: together they sum to the joint key
        for share in cc.ShareKeys(p._secret, 3, 2, 1, "additive").values():
            pieces[len(pieces) + 1] = share
    joint = mp.ofhe.PrivateKey(cc)
    cc.RecoverSharedKey(joint, pieces, len(pieces), len(pieces), "additive")
    batch = server.read(total, count=server.count(LENGTH), partial=False)
    exact = np.sum(xs, axis=0)
    bound = mp.error_bound(PARAMS, parties=N_PARTIES, summands=N_PARTIES)
    half = PARAMS.slots
    for i, raw in enumerate(batch.raws[:2]):  # the two full ciphertexts
        pt = cc.Decrypt(joint, raw)
        pt.SetLength(half)
        z = pt.GetCKKSPackedValueArray()
        e = np.concatenate([z.real, z.imag]) - exact[i * 2 * half : (i + 1) * 2 * half]
        assert bound / 3 < np.linalg.norm(e) < bound
    sigma = mp.flood_sigma(PARAMS, parties=5, summands=5, decryptions=100)
    assert sigma == pytest.approx(2**15 * 10 * bound)


def test_no_share_alone_and_no_subset_decrypts(keyed):
    server, parties, xs, _, total = keyed
    count = server.count(LENGTH)
    partials = [
        server.read(
            p.partial_decrypt(total, count=count, lead=i == 0, sigma=0), count=count, partial=True
        )
        for i, p in enumerate(parties[:-1])
    ]
    assert np.abs(server.fuse(partials, LENGTH) - np.sum(xs, axis=0)).max() > 1e3


def test_openfhe_shares_and_shamir_shared_bytes_rebuild_the_same_share(keyed):
    """(a) ShareKeys / RecoverSharedKey in one process and (b) the share's bytes split with
    secagg.shamir rebuild party 2's key from 3 of the other 4 parties; both decrypt the sum."""
    server, parties, xs, _, total = keyed
    n, t, dropped = N_PARTIES, 3, 1  # OpenFHE's indices are 1..n: party index 1 is "2"
    openfhe_shares = {i + 1: p.share_keys(n, t, i + 1) for i, p in enumerate(parties)}
    holders = (1, 3, 4)
    a = mp.Party.recover(
        parties[0].session, {j: openfhe_shares[dropped + 1][j] for j in holders}, n, t
    )
    byte_shares = shamir.split(parties[dropped].key_bytes(), n, t)
    rebuilt = shamir.combine([byte_shares[j - 1] for j in holders])
    b = mp.Party.from_key_bytes(parties[0].session, rebuilt)
    exact = np.sum(xs, axis=0)
    sum_a = decrypt(server, parties, total, replace={dropped: a})
    sum_b = decrypt(server, parties, total, replace={dropped: b})
    std = mp.error_std(PARAMS, parties=n, summands=n, sigma=0.0)
    assert np.abs(sum_a - exact).max() < 7 * std
    assert np.abs(sum_b - exact).max() < 7 * std
    assert np.abs(sum_a - sum_b).max() < 10 * std
    with pytest.raises(RuntimeError, match="less than threshold|Not enough"):
        mp.Party.recover(parties[0].session, {1: openfhe_shares[2][1]}, n, t)


def _repack(server, payloads, *, partial=False, key=None):
    sections = {f"c{i}": p for i, p in enumerate(payloads)}
    return io.pack(
        "mp_partials" if partial else "mp_ciphertexts",
        "openfhe",
        server.fingerprint,
        io.pack_sections(sections),
        {"count": len(payloads), "key": key or server.tag},
    )


def test_malformed_ciphertexts_are_refused_with_the_reason(keyed):
    server, parties, _, uploads, total = keyed
    count = server.count(LENGTH)
    good = io.unpack_sections(io.unpack(uploads[0], kind="mp_ciphertexts").payload)
    payloads = [good[f"c{i}"] for i in range(count)]
    cc = server._cc
    low = mp.ofhe.DeserializeCiphertextString(payloads[0], mp.SER)
    low = mp.ofhe.Serialize(cc.Compress(low, 1), mp.SER)  # one modulus fewer: another level
    partials = parties[1].partial_decrypt(total, count=count, lead=False, sigma=0)
    partial = io.unpack_sections(io.unpack(partials, kind="mp_partials").payload)["c0"]
    cases = [
        (b"junk", io.TruncatedError, "too short"),
        (uploads[0][:-7], io.TruncatedError, "truncated"),
        (_repack(server, payloads[:-1]), io.CorruptError, "expected 3"),
        (_repack(server, [b"\x00" * 4096] + payloads[1:]), io.CorruptError, "OpenFHE"),
        (_repack(server, [low] + payloads[1:]), io.CorruptError, "level"),
        (_repack(server, payloads, key="another"), io.ForeignParametersError, "another joint"),
        (_repack(server, [partial] + payloads[1:]), io.CorruptError, "1 elements"),
        (partials, io.WrongKindError, "got a mp_partials"),
    ]
    for blob, error, words in cases:
        with pytest.raises(error, match=words):
            server.read(blob, count=count, partial=False)
    other = mp.Session(mp.TOY_AGGREGATION, insecure_for_testing=True)
    other.set_public_key(mp.Party.lead(other).public_key)  # a foreign single-party key
    foreign = io.unpack_sections(
        io.unpack(other.encrypt(np.ones(5)), kind="mp_ciphertexts").payload
    )
    with pytest.raises(io.ForeignParametersError):
        server.read(_repack(server, [foreign["c0"]] + payloads[1:]), count=count, partial=False)


@pytest.mark.parametrize("how", ["garbage", "truncated", "flipped"])
def test_a_crafted_key_contribution_is_refused_by_position_not_a_crash(keyed, how):
    """Set-up parses every contribution in the isolation worker first: a crafted one names
    its position instead of crashing the server's process."""
    server, parties, *_ = keyed
    good = [p.public_key for p in parties[:3]]
    env = io.unpack(good[2], kind="mp_public_key")
    payload = {
        "garbage": b"\x00" * 64,
        "truncated": env.payload[: len(env.payload) // 2],
        "flipped": env.payload[:40] + bytes([env.payload[40] ^ 0xFF]) + env.payload[41:],
    }[how]
    crafted = io.pack("mp_public_key", env.backend, env.params_fingerprint, payload, env.meta)
    with pytest.raises(mp.KeyContributionError) as refused:
        session().joint_public_key([*good[:2], crafted])
    assert refused.value.index == 2
