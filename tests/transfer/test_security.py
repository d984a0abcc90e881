"""What the server holds and sees: public material and ciphertexts, never the secret key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privlearn.he import io
from privlearn.transfer.protocol import Message, ProtocolError
from privlearn.transfer.roles import Client, Server
from privlearn.transfer.session import EncryptedSession
from privlearn.transfer.train import TrainSpec

from .test_training import _problem


@pytest.fixture(scope="module")
def session_and_data():
    x, y, xv, yv = _problem(n=90, f=5, c=2)
    spec = TrainSpec(classes=2, features=6, batch_size=32, lr=2.0, epochs=2, logit_range=16)
    s = EncryptedSession(
        spec, preset="toy-n12", backend="openfhe", insecure_for_testing=True, record_transcript=True
    )
    s.fit(x, y, xv, yv, progress=False)
    yield s, (x, y, xv, yv)
    s.close()


pytestmark = pytest.mark.openfhe


def test_server_is_built_from_messages_alone_and_cannot_decrypt(session_and_data):
    s, _ = session_and_data
    server = s.server
    assert isinstance(server, Server)
    assert not any("decrypt" in n.lower() for n in dir(server.ev))
    held = {
        type(v).__name__ for obj in (server, server.ev, server.trainer) for v in vars(obj).values()
    }
    assert not held & {"Client", "ClientContext", "PrivateKey"}


def test_secret_key_bytes_appear_nowhere_in_the_transcript_or_bundle(session_and_data):
    s, _ = session_and_data
    sk = s.ctx._secret_key_bytes()
    public = s.ctx.public_bundle()
    step = max(1, len(sk) // 64)
    windows = [sk[i : i + 32] for i in range(0, len(sk) - 31, step) if sk[i : i + 32] not in public]
    assert len(windows) >= 48
    bundle_files = [f.read_bytes() for f in s.bundle_dir.iterdir()]  # read by the server
    transcript = s.link.transcript + bundle_files
    assert len(transcript) > 20
    for blob in transcript:
        for w in windows:
            assert w not in blob


def test_no_plaintext_data_crosses(session_and_data):
    s, (x, y, xv, yv) = session_and_data
    for blob in s.link.transcript:
        msg = Message.from_bytes(blob)
        json.dumps(msg.meta)  # metadata is small JSON: shapes, counts, indices
        for arr in (x, xv):  # no run of 4 feature values in float64, as serialized
            for row in arr[:10]:
                assert row[:4].astype(np.float64).tobytes() not in blob


def test_requests_carry_no_data_derived_metadata(session_and_data):
    """The decision to go on reaches the server only as whether another train_step comes:
    no loss, accuracy or label statistic rides in any request's metadata."""
    s, _ = session_and_data
    allowed = {
        "setup": {"spec", "weights", "bundle"},
        "upload": {"split", "x", "y"},
        "train_step": {"batch", "epoch"},
        "validate": set(),
        "get_model": set(),
        "set_model": {"weights"},
        "refreshed": set(),
    }
    for blob in s.link.transcript:
        msg = Message.from_bytes(blob)
        if msg.kind in allowed:
            assert set(msg.meta) <= allowed[msg.kind], (msg.kind, msg.meta)


def test_malformed_setup_is_refused(tmp_path):
    server = Server(bundle_root=tmp_path)
    with pytest.raises(io.EnvelopeError):
        server.handle(Message("setup", {"spec": {}, "weights": {}, "bundle": "nowhere"}))
    server.close()


@pytest.mark.parametrize("name", ["../bundle", "/etc", "a/b", "..", "", 3, None])
def test_a_setup_names_a_bundle_never_a_path(tmp_path, name):
    """The client's bundle path was opened as given: any file the server can read was hashed
    and its existence revealed. Now a setup names a bundle inside the server's bundle root."""
    server = Server(bundle_root=tmp_path / "root")
    with pytest.raises(ProtocolError, match="plain name|malformed"):
        server.handle(Message("setup", {"spec": {}, "weights": {}, "bundle": name}))
    server.close()


def test_a_server_without_a_bundle_root_takes_no_setup(tmp_path):
    with pytest.raises(ProtocolError, match="no directory"):
        Server().handle(Message("setup", {"spec": {}, "weights": {}, "bundle": "bundle"}))


def test_malformed_requests_get_protocol_errors(session_and_data):
    s, _ = session_and_data
    server = s.server
    good = s.client.batches(*session_and_data[1][:2], "train", s.data_level)[0]
    cases = [
        Message("upload", good.meta, good.blobs[:-1]),  # a ciphertext missing
        Message("upload", {**good.meta, "x": {**good.meta["x"], "block": [1, 2]}}, good.blobs),
        Message("upload", {"x": good.meta["x"]}, good.blobs),  # no split
        Message("train_step", {"batch": 0}),  # no epoch
        Message("train_step", {"batch": 10**6, "epoch": 0}),
        Message("predict", {"x": {"shape": [1]}}, ()),
        Message("train_step", {"batch": True, "epoch": 0}),  # was batch 1
        Message("upload", {**good.meta, "split": ["train"]}, good.blobs),
        Message("upload", good.meta, (b"garbage",) + good.blobs[1:]),  # refused on arrival
        Message("predict", {"x": good.meta["x"], "probabilities": "../.."}, good.blobs),  # was True
        Message("upload", {**good.meta, "y": {**good.meta["y"], "shape": [32, 1]}}, good.blobs),
    ]
    stored = len(server.batches["train"])
    for msg in cases:
        with pytest.raises((ProtocolError, io.EnvelopeError)):
            server.handle(msg)
    assert len(server.batches["train"]) == stored  # nothing malformed was kept


def test_flooding_noise_is_not_replayable_from_the_seed(session_and_data):
    """The server sees the batch order, which the seed fixes: the flooding noise must not
    come from that seed, or the server could subtract it."""
    s, (_, _, _, yv) = session_and_data
    reply = s.link.request(Message("validate"))
    a, b = (Client(s.ctx, s.spec, seed=0).validation(reply, yv) for _ in range(2))
    assert a["val_brier"] == b["val_brier"]
    assert a["val_brier_flooded"] != b["val_brier_flooded"]


@pytest.mark.parametrize("separate_process", [True, False])
def test_a_refused_request_is_an_error_reply_and_the_server_lives_on(separate_process):
    """One malformed request used to kill the --separate-process server (the client saw
    EOFError); now the refusal comes back as a reply and training goes on."""
    x, y, xv, yv = _problem(n=40, f=5, c=2)
    spec = TrainSpec(classes=2, features=6, batch_size=32, lr=2.0, epochs=1, logit_range=16)
    s = EncryptedSession(
        spec,
        preset="toy-n12",
        backend="simulator",
        insecure_for_testing=True,
        separate_process=separate_process,
    )
    try:
        for bad in (Message("train_step", {"batch": 0}), Message("upload", {"x": {}}, (b"x",))):
            with pytest.raises(ProtocolError, match="refused the request"):
                s.link.request(bad)
        run = s.fit(x, y, xv, yv, progress=False)
        assert run.steps >= 1 and np.isfinite(run.weights).all()
    finally:
        s.close()


def _reachable(root):
    """Every object reachable from ``root`` by references, as code could follow them:
    attributes, containers, bound methods and closures; not module globals or classes (those
    reach the whole interpreter, the test's own frames included)."""
    import gc
    import sys
    import types

    module_dicts = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    opaque = (types.ModuleType, type, types.CodeType, types.FrameType)
    seen, stack = {id(root)}, [root]
    while stack:
        obj = stack.pop()
        yield obj
        if isinstance(obj, types.FunctionType):
            refs = [c.cell_contents for c in obj.__closure__ or ()] + list(obj.__defaults__ or ())
        else:
            refs = gc.get_referents(obj)
        for ref in refs:
            if id(ref) not in seen and id(ref) not in module_dicts and not isinstance(ref, opaque):
                seen.add(id(ref))
                stack.append(ref)


def test_nothing_reachable_from_the_in_process_server_leads_to_the_client(session_and_data):
    """The in-process link used to hold the other side: server.endpoint.peer.handler.__self__
    .ctx._secret_key decrypted. Now the roles meet through a pipe of bytes."""
    from privlearn.he import ClientContext

    s, _ = session_and_data
    found = [o for o in _reachable(s.server) if isinstance(o, (Client, ClientContext))]
    assert not found
    assert sum(1 for _ in _reachable(s.server)) > 100  # the walk did get somewhere


def test_the_client_reads_predictions_as_it_asked_not_as_the_server_says(session_and_data):
    """The client took the server's 'probabilities' flag: a server could have logits read as
    probabilities (not divided by the weight scale) or the reverse."""
    s, (x, _, _, _) = session_and_data
    request = s.client.encrypt_features(x[:4], s.data_level)[0]
    reply = s.link.request(request)
    forged = Message("predictions", {**reply.meta, "probabilities": True}, reply.blobs)
    with pytest.raises(ProtocolError, match="asked for logits"):
        s.client.predictions(request, forged)
    narrower = {**reply.meta, "z": {**reply.meta["z"], "shape": [4, 1]}}  # was cropped to it
    with pytest.raises(ProtocolError, match="expects"):
        s.client.predictions(request, Message("predictions", narrower, reply.blobs))
    assert len(s.client.predictions(request, reply)) == 4


def test_the_sessions_directories_are_private(session_and_data):
    """Temporary directories get random names and mode 0700 (mkdtemp): their prefix names
    them, nobody else can list or pre-create what is inside."""
    s, _ = session_and_data
    for d in (s.bundle_dir.parent, s.server.workdir):
        assert d.stat().st_mode & 0o777 == 0o700


def test_a_refresh_that_fails_after_decryption_ends_the_session_instead_of_answering(
    session_and_data, monkeypatch
):
    """An error reply to a refresh whose ciphertext failed to decode would tell the server a
    bit about the plaintext of a ciphertext it chose, as often as it asked."""
    from privlearn.transfer.protocol import Endpoint, SessionAborted

    s, _ = session_and_data
    client = Client(s.ctx, s.spec)
    end = Endpoint(client.handle)
    msg = Message("refresh", {"level": 1}, (s.ctx.serialize(s.ctx.encrypt([0.5])),))
    assert Message.from_bytes(end.handle(msg.to_bytes())).kind == "refreshed"
    bad_level = Message("refresh", {"level": "1"}, msg.blobs)
    assert Message.from_bytes(end.handle(bad_level.to_bytes())).kind == "error"  # bytes only

    def undecodable(ct, level=None):
        raise RuntimeError("The decryption failed because the approximation error is too high")

    monkeypatch.setattr(s.ctx, "refresh", undecodable)
    with pytest.raises(SessionAborted, match="ends the session"):
        end.handle(msg.to_bytes())


@pytest.mark.parametrize(
    "meta",
    [
        {"snapshots": [[{"epoch": 0}]]},  # a snapshot wrapped in a list: TypeError
        {"snapshots": "x"},
        {"snapshots": [{"epoch": 0, "count": 0.5}]},  # a slice by 0.5: TypeError
    ],
)
def test_malformed_model_replies_are_protocol_errors(session_and_data, meta):
    s, _ = session_and_data
    with pytest.raises(ProtocolError):
        s.client.weights(Message("model", meta, ()), 0)


def test_malformed_validation_replies_are_protocol_errors(session_and_data):
    s, (_, _, _, yv) = session_and_data
    good = s.link.request(Message("validate"))
    layout_in_a_list = [{**m, "layout": [m["layout"]]} for m in good.meta["probabilities"]]
    for meta in (
        {**good.meta, "probabilities": layout_in_a_list},  # ValueError from the Layout enum
        {**good.meta, "probabilities": [float("nan")]},  # TypeError: float not subscriptable
        {**good.meta, "count": 10**6},
    ):
        with pytest.raises(ProtocolError):
            s.client.validation(Message("squared_errors", meta, good.blobs), yv)
    with pytest.raises(ProtocolError, match="no ciphertext"):
        s.client.handle(Message("refresh", {"level": 1}))


def test_weights_of_another_shape_are_not_served(session_and_data):
    """set_model took any shape: a one-row model then served wrong predictions silently."""
    s, _ = session_and_data
    msg = s.client.set_model(np.zeros((s.spec.classes, s.spec.features)))
    meta = {"weights": {**msg.meta["weights"], "shape": [1, s.spec.features]}}
    with pytest.raises(ProtocolError, match="the model is"):
        s.server.handle(Message("set_model", meta, msg.blobs))
