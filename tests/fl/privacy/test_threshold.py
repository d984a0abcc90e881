"""ThresholdCKKS: the sum within its stated error under dropouts, refusals, and a server that
holds nothing to decrypt with."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from privlearn.fl.privacy.secagg.base import SERVER, AggregationFailed, Wire
from privlearn.he import io

pytestmark = pytest.mark.openfhe
_NO_OPENFHE = {"reason": "OpenFHE is not importable", "exc_type": ImportError}
threshold = pytest.importorskip("privlearn.fl.privacy.secagg.threshold", **_NO_OPENFHE)
mp = pytest.importorskip("privlearn.he.multiparty", **_NO_OPENFHE)
ofhe = mp.ofhe
Phase, ThresholdCKKS, MessageRefused = (
    threshold.Phase,
    threshold.ThresholdCKKS,
    threshold.MessageRefused,
)

N = 10
LENGTH = 3000  # two ciphertexts of 2048 reals at the toy parameters


def make(**kw) -> ThresholdCKKS:
    return ThresholdCKKS(params=mp.TOY_AGGREGATION, insecure_for_testing=True, **kw)


def inputs(seed: int, n: int = N, length: int = LENGTH) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-1, 1, length) for c in range(n)}


class Recording(Wire):
    """A network that keeps every message with its header's phase and round."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, int, int, int, bytes]] = []  # phase, round, src, dst, bytes

    def carry(self, src: int, dst: int, message: bytes) -> bytes:
        head = threshold._HEAD.unpack_from(message)
        self.log.append((head[2], head[3], src, dst, bytes(message)))
        return super().carry(src, dst, message)

    def phases(self) -> set[int]:
        return {phase for phase, *_ in self.log}


@pytest.mark.parametrize(
    "before_upload, before_unmask",
    [((), ()), ((0,), ()), ((), (0,)), ((2, 5, 9), ()), ((), (0, 4, 7)), ((1,), (0, 8))],
    ids=["0%", "10%-upload", "10%-unmask-lead", "30%-upload", "30%-unmask", "30%-both"],
)
def test_the_sum_is_the_uploaders_within_the_stated_error(before_upload, before_unmask):
    agg = make()
    x = inputs(len(before_upload) + 7 * len(before_unmask))
    out = agg.aggregate(x, 0, frozenset(before_upload), frozenset(before_unmask))
    uploaders = [c for c in range(N) if c not in before_upload]
    assert out.clients == tuple(uploaders)
    assert out.excluded == {c: "dropped before upload" for c in before_upload}
    err = out.total - np.sum([x[c] for c in uploaders], axis=0)
    stated = agg.stated_error(LENGTH)
    assert stated["n"] == N and stated["t"] == N // 2 + 1
    assert 0.8 < err.std() / stated["error_std"] < 1.2
    assert np.abs(err).max() < 6 * stated["error_std"]
    assert stated["flooding_sigma"] == pytest.approx(
        mp.flood_sigma(mp.TOY_AGGREGATION, parties=N, summands=N, decryptions=2)
    )
    assert set(out.cost) >= {"client_bytes_sent", "server_bytes_received", "server_seconds"}


def test_fewer_survivors_than_t_fail_before_anything_is_decrypted():
    wire = Recording()
    agg = make(wire=lambda: wire)
    agg.setup(range(N))
    with pytest.raises(AggregationFailed, match="5 of 10 clients are left.*threshold t = 6"):
        agg.aggregate(inputs(1), 0, frozenset({0, 1}), frozenset({2, 3, 4}))
    assert Phase.UPLOAD in wire.phases()
    assert not wire.phases() & {Phase.DECRYPT, Phase.PARTIAL, Phase.REBUILD}
    with pytest.raises(AggregationFailed, match="5 valid uploads"):
        agg.aggregate(inputs(2), 1, frozenset(range(5)))
    out = agg.aggregate(inputs(3), 2, frozenset(range(4)))  # 6 of 10 still suffice
    assert len(out.clients) == 6


@pytest.mark.parametrize("fault", ["junk", "short", "level", "foreign"])
def test_a_malformed_upload_is_named_and_left_out_of_the_sum(fault):
    agg = make()
    agg.setup(range(N))
    bad = agg.epoch.clients[3]
    good_encrypt = bad.session.encrypt

    def encrypt(values):
        if fault == "junk":
            return b"\x00" * 1000
        if fault == "short":  # one ciphertext where two are due
            return good_encrypt(values[:100])
        if fault == "foreign":  # under a key of its own
            other = mp.Session(mp.TOY_AGGREGATION, insecure_for_testing=True)
            other.set_public_key(mp.Party.lead(other).public_key)
            return other.encrypt(values)
        env = io.unpack(good_encrypt(values), kind="mp_ciphertexts")
        parts = io.unpack_sections(env.payload)
        cc = bad.session._cc
        low = cc.Compress(ofhe.DeserializeCiphertextString(parts["c0"], mp.SER), 1)
        parts["c0"] = ofhe.Serialize(low, mp.SER)
        return io.pack(
            env.kind, env.backend, env.params_fingerprint, io.pack_sections(parts), env.meta
        )

    bad.session.encrypt = encrypt
    x = inputs(4)
    out = agg.aggregate(x, 0)
    assert 3 not in out.clients and len(out.clients) == N - 1
    reason = {
        "junk": "not a privlearn HE file",
        "short": "expected 2",
        "level": "level",
        "foreign": "another",
    }
    assert out.excluded[3].startswith("upload refused") and reason[fault] in out.excluded[3]
    err = out.total - np.sum([x[c] for c in out.clients], axis=0)
    assert np.abs(err).max() < 6 * agg.stated_error(LENGTH)["error_std"]


def test_a_refused_partial_decryption_gets_its_share_rebuilt():
    agg = make()
    agg.setup(range(N))
    bad = agg.epoch.clients[2]
    bad._partial = lambda *args: b"\x00" * 64
    x = inputs(18)
    out = agg.aggregate(x, 0, frozenset({5}))
    assert 2 in out.clients and out.excluded == {5: "dropped before upload"}
    assert out.cost["rebuilt"] == [2, 5]
    assert "not a privlearn HE file" in out.cost["partials_refused"][2]
    err = out.total - np.sum([x[c] for c in out.clients], axis=0)
    assert np.abs(err).max() < 6 * agg.stated_error(LENGTH)["error_std"]


class Replaying(Recording):
    """The network replays client 2's round-0 upload in round 1 and hands the server client
    4's round-1 upload in place of client 5's."""

    def carry(self, src: int, dst: int, message: bytes) -> bytes:
        out = super().carry(src, dst, message)
        phase, rnd = self.log[-1][:2]
        if phase == Phase.UPLOAD and rnd == 1 and src in (2, 5):
            want = (0, 2) if src == 2 else (1, 4)
            return next(m for p, r, s, _, m in self.log if (p, r, s) == (Phase.UPLOAD, *want))
        return out


def test_replayed_and_misrouted_messages_are_refused():
    wire = Replaying()
    agg = make(rounds_per_key=2, wire=lambda: wire)
    agg.aggregate(inputs(5), 0)
    x = inputs(6)
    out = agg.aggregate(x, 1)
    assert "setup" not in out.cost  # one key epoch: only the round binding refuses them
    assert "round 0, expected 1" in out.excluded[2]
    assert "sender 4, expected 5" in out.excluded[5]
    err = out.total - np.sum([x[c] for c in out.clients], axis=0)
    assert np.abs(err).max() < 6 * agg.stated_error(LENGTH)["error_std"]
    # the same message twice, and a message for another recipient
    client1, client2 = agg.epoch.clients[1], agg.epoch.clients[2]
    sealed = agg.server.link.seal(1, Phase.DECRYPT, 7, b"x")
    assert client1.link.open(sealed, src=SERVER, phase=Phase.DECRYPT, round_idx=7) == b"x"
    with pytest.raises(MessageRefused, match="replays"):
        client1.link.open(sealed, src=SERVER, phase=Phase.DECRYPT, round_idx=7)
    with pytest.raises(MessageRefused, match="recipient 1, expected 2"):
        client2.link.open(sealed, src=SERVER, phase=Phase.DECRYPT, round_idx=7)
    sealed = agg.server.link.seal(1, Phase.DECRYPT, 8, b"x")
    forged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(MessageRefused, match="authentication"):
        agg.epoch.clients[1].link.open(forged, src=SERVER, phase=Phase.DECRYPT, round_idx=8)
    share = next(m for p, _, s, d, m in wire.log if p == Phase.SHARE and s == 3 and d == SERVER)
    with pytest.raises(MessageRefused, match="phase"):  # a share where an upload is due
        agg.server.upload(3, share, 1, 2)


def _reachable(root, seen=None):
    """Every object reachable from ``root`` through attributes and containers."""
    seen = set() if seen is None else seen
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(len))):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s))


@pytest.mark.parametrize("key_sharing", ["direct", "sealed"])
def test_the_server_holds_no_secret_key_and_cannot_decrypt_one_upload(key_sharing):
    wire = Recording()
    agg = make(wire=lambda: wire, key_sharing=key_sharing)
    x = inputs(7)
    agg.aggregate(x, 0, drop_before_unmask=frozenset({1}))  # a key share is rebuilt too
    server = agg.server
    held = list(_reachable(server))
    assert not any(isinstance(o, ofhe.PrivateKey) for o in held)
    assert not any(isinstance(o, (mp.Party, threshold._Client)) for o in held)
    # everything the server holds or saw: no blob parses as a key share or a Shamir share
    blobs = [o for o in held if isinstance(o, (bytes, bytearray))]
    blobs += [m for _, _, s, d, m in wire.log if SERVER in (s, d)]
    keys = []
    for blob in blobs:
        for attempt in (
            lambda b: mp.Party.from_key_bytes(server.session, b),
            lambda b: threshold.shamir.Share.from_bytes(b),
            lambda b: ofhe.DeserializePrivateKeyString(b, mp.SER),
        ):
            with contextlib.suppress(Exception):  # any refusal is the point
                keys.append(attempt(blob))
    assert keys == []
    # nor does a decryption attempt with what it has: fusing client 0's upload alone
    upload = next(m for p, _, s, _, m in wire.log if p == Phase.UPLOAD and s == 0)
    payload = upload[threshold._HEAD.size : -threshold._MAC]  # its HMAC tag cut off
    batch = server.session.read(payload, count=2, partial=False)
    pt = server.session._cc.MultipartyDecryptFusion([batch.raws[0]])
    pt.SetLength(mp.TOY_AGGREGATION.slots)
    z = pt.GetCKKSPackedValueArray()
    guess = np.concatenate([z.real, z.imag])
    assert np.abs(guess - x[0][: guess.size]).max() > 1e3


def test_a_key_epoch_serves_its_rounds_and_spends_its_decryption_budget():
    agg = make(rounds_per_key=2)
    setup = agg.setup(range(N))
    assert setup["client_bytes_sent"] > 0 and agg.setup_cost is setup
    first = agg.aggregate(inputs(8), 0)
    second = agg.aggregate(inputs(9), 1)
    third = agg.aggregate(inputs(10), 2)
    assert "setup" not in first.cost and "setup" not in second.cost and "setup" in third.cost
    assert agg.stated_error(LENGTH)["decryptions_per_key"] == 4
    client = agg.epoch.clients[0]
    client.decryptions = 2
    ask = agg.server.link.seal(
        0, Phase.DECRYPT, 9, threshold._pack(sum=b"", lead=b"0", length=b"1")
    )
    with pytest.raises(MessageRefused, match="decrypted its 2 rounds"):
        client.decrypt(ask, 9)
    assert "setup" in agg.aggregate(inputs(11, n=N - 1), 3).cost  # another cohort re-keys


def test_rebuilt_key_shares_are_capped_per_epoch():
    """n = 5, t = 3: within one key epoch at most n - t = 2 key shares may be rebuilt."""
    agg = make(rounds_per_key=3)
    agg.aggregate(inputs(12, n=5), 0, drop_before_unmask=frozenset({0}))
    with pytest.raises(
        AggregationFailed, match="3 key shares rebuilt in this key epoch, more than n - t = 2"
    ):
        agg.aggregate(inputs(13, n=5), 1, drop_before_upload=frozenset({1, 2}))
    out = agg.aggregate(inputs(14, n=5), 2, drop_before_upload=frozenset({1, 2}))
    assert "setup" in out.cost and len(out.clients) == 3


def test_inputs_outside_the_range_and_bad_thresholds_are_refused():
    agg = make()
    x = inputs(15, n=4)
    for bad in (2.0**31, np.nan):
        x[1][5] = bad
        with pytest.raises(ValueError, match="outside"):
            agg.aggregate(x, 0)
    with pytest.raises(ValueError, match="n/2 < t <= n"):
        make(threshold=2).setup(range(4))
    with pytest.raises(ValueError, match="n >= 3"):
        make().setup(range(2))


def test_default_128_bit_parameters_aggregate():
    agg = ThresholdCKKS()
    assert agg.config.params.secure and agg.config.params.name == "mp-n14"
    x = inputs(16, n=4, length=20_000)
    out = agg.aggregate(x, 0, drop_before_unmask=frozenset({2}))
    err = out.total - np.sum(list(x.values()), axis=0)
    stated = agg.stated_error(20_000)
    assert np.abs(err).max() < 6 * stated["error_std"] and stated["error_std"] < 1e-4


def test_sealed_key_sharing_rebuilds_dropped_shares_at_a_fraction_of_the_set_up_cost():
    direct, sealed = make(key_sharing="direct"), make()
    cost = {"direct": direct.setup(range(N)), "sealed": sealed.setup(range(N))}
    assert cost["sealed"]["client_bytes_sent"] < cost["direct"]["client_bytes_sent"] / 2
    assert sorted(sealed.server.sealed) == list(range(N))
    x = inputs(17)
    out = sealed.aggregate(x, 0, frozenset({9}), frozenset({0, 4}))
    err = out.total - np.sum([x[c] for c in out.clients], axis=0)
    assert np.abs(err).max() < 6 * sealed.stated_error(LENGTH)["error_std"]
    with pytest.raises(ValueError, match="key_sharing"):
        make(key_sharing="additive")


def test_clients_refuse_requests_that_would_expose_a_share_or_shrink_the_flood():
    agg = make(rounds_per_key=2)
    agg.aggregate(inputs(19), 0)
    client, link = agg.epoch.clients[1], agg.server.link
    ask = link.seal(1, Phase.RECOVER, 1, str(SERVER).encode(), about=4)
    with pytest.raises(MessageRefused, match="not to -1"):
        client.forward(ask, 1, 4)  # sealed "for the server" would be readable by it
    short = threshold._pack(sum=b"", lead=b"0", length=b"100")  # σ for 100 values, not 3000
    with pytest.raises(MessageRefused, match="decrypt b'100' values, not 3000"):
        client.decrypt(link.seal(1, Phase.DECRYPT, 1, short), 1)
