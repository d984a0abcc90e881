"""Malformed files give a specific error; none reaches OpenFHE's deserializer to crash it."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privlearn.he import ClientContext, Evaluator, InsecureParametersError, io


@pytest.fixture(scope="module")
def blob(client):
    return client.serialize(client.encrypt(np.linspace(-1, 1, 64), level=3))


def test_round_trip(client, ev, blob):
    for ctx in (client, ev):
        ct = ctx.deserialize(blob)
        assert ct.level == 3
        assert np.allclose(client.decrypt(ct)[:64], np.linspace(-1, 1, 64), atol=1e-8)
    assert client.serialize(ev.mul(client.deserialize(blob), 2.5))  # usable after loading


def test_truncated(client, blob):
    for n in (0, 3, 7, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(io.TruncatedError if n >= 8 or n < 8 else io.EnvelopeError):
            client.deserialize(blob[:n])


def test_flipped_payload_byte_fails_checksum(client, blob):
    bad = bytearray(blob)
    bad[-100] ^= 0x01
    with pytest.raises(io.CorruptError, match="SHA-256"):
        client.deserialize(bytes(bad))


def test_edited_header_fails_checksum(client, blob):
    bad = blob.replace(b'"level": 3', b'"level": 2', 1)
    with pytest.raises(io.CorruptError, match="SHA-256"):
        client.deserialize(bad)


def test_wrong_version(client, blob):
    bad = blob.replace(b'"format": 1', b'"format": 9', 1)
    with pytest.raises(io.VersionError, match="version 9"):
        client.deserialize(bad)


def test_foreign_parameters(client, backend):
    other = ClientContext.create("toy-n12-boot", backend, insecure_for_testing=True)
    with pytest.raises(io.ForeignParametersError, match="parameters"):
        client.deserialize(other.serialize(other.encrypt([1.0])))


def test_wrong_kind_and_garbage(client):
    bundle = client.public_bundle()
    with pytest.raises(io.WrongKindError):
        client.deserialize(bundle)
    with pytest.raises(io.CorruptError, match="not a privlearn"):
        client.deserialize(b"\x00" * 100)
    with pytest.raises(io.EnvelopeError):
        Evaluator.from_bundle(b"PLHE" + b"\xff" * 40, insecure_for_testing=True)


@settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), print_blob=False
)
@given(data=st.data())
def test_fuzzed_ciphertext_files_raise_envelope_errors(client, blob, data):
    mode = data.draw(st.sampled_from(["flip", "cut", "insert", "header"]))
    b = bytearray(blob)
    if mode == "flip":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= data.draw(st.integers(1, 255))
    elif mode == "cut":
        b = b[: data.draw(st.integers(0, len(b) - 1))]
    elif mode == "insert":
        i = data.draw(st.integers(0, len(b)))
        b[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(4, 200))
        b[i] = data.draw(st.integers(0, 255))
    if bytes(b) == blob:
        return
    with pytest.raises(io.EnvelopeError):
        client.deserialize(bytes(b))


def test_fuzzed_bundles_raise_envelope_errors(client):
    bundle = client.public_bundle([1])
    rng = np.random.default_rng(0)
    for _ in range(40):
        b = bytearray(bundle)
        b[int(rng.integers(0, len(b)))] ^= int(rng.integers(1, 256))
        if bytes(b) == bundle:
            continue
        with pytest.raises(io.EnvelopeError):
            Evaluator.from_bundle(bytes(b), insecure_for_testing=True)


def test_bundle_directory_round_trip_and_tamper(client, tmp_path):
    path = client.public_bundle([1], path=tmp_path / "b")
    ev = Evaluator.from_bundle(path, insecure_for_testing=True)
    x = np.linspace(0, 1, 8)
    assert np.allclose(client.decrypt(ev.rotate(client.encrypt(x), 1))[:7], x[1:], atol=1e-8)
    sections = [f for f in path.iterdir() if f.name != "bundle.plhe"]
    if not sections:  # the simulator's bundle is header-only
        return
    victim = max(sections, key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(io.CorruptError, match="SHA-256"):
        Evaluator.from_bundle(path, insecure_for_testing=True)
    victim.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(io.TruncatedError):
        Evaluator.from_bundle(path, insecure_for_testing=True)


def _resign_index(path, index) -> None:
    """What a hostile peer can do: write any index and a valid envelope around it."""
    env = io.unpack((path / "bundle.plhe").read_bytes(), kind="public_bundle")
    payload = json.dumps(index).encode()
    blob = io.pack("public_bundle", env.backend, env.params_fingerprint, payload, env.meta)
    (path / "bundle.plhe").write_bytes(blob)


def test_bundle_index_cannot_name_files_outside_the_bundle(client, tmp_path):
    path = client.public_bundle([1], path=tmp_path / "b")
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 10)
    for name in ("../secret", str(tmp_path / "secret"), "a/b", "relin_key.bin", "", "A"):
        _resign_index(path, {name: {"length": 10, "sha256": "0" * 64}})
        with pytest.raises(io.CorruptError, match="invalid section"):
            Evaluator.from_bundle(path, insecure_for_testing=True)
    for entry in ([], {"length": "10", "sha256": "0"}, {"length": -1, "sha256": "0"}, {}):
        _resign_index(path, {"context": entry})
        with pytest.raises(io.CorruptError, match="malformed"):
            Evaluator.from_bundle(path, insecure_for_testing=True)


@pytest.mark.timeout(60)
def test_bundle_fifo_is_refused_not_read(client, tmp_path):
    path = client.public_bundle([1], path=tmp_path / "b")
    os.mkfifo(path / "extra.bin")
    _resign_index(path, {"extra": {"length": 1, "sha256": "0" * 64}})
    with pytest.raises(io.CorruptError, match="not a regular file"):
        Evaluator.from_bundle(path, insecure_for_testing=True)
    fifo_dir = tmp_path / "f"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "bundle.plhe")
    with pytest.raises(io.CorruptError, match="not a regular file"):
        Evaluator.from_bundle(fifo_dir, insecure_for_testing=True)


def test_ciphertext_under_another_key_is_refused(client, ev, backend):
    other = ClientContext.create("toy-n12", backend, seed=2, insecure_for_testing=True)
    blob = other.serialize(other.encrypt([0.5]))
    for ctx in (client, ev):
        with pytest.raises(io.ForeignParametersError, match="another key"):
            ctx.deserialize(blob)
    if backend == "openfhe":  # a header re-signed with our key id: OpenFHE's own tag disagrees
        env = io.unpack(blob, kind="ciphertext")
        forged = io.pack(
            "ciphertext",
            env.backend,
            env.params_fingerprint,
            env.payload,
            {**env.meta, "key": client.key_id},
        )
        with pytest.raises(io.ForeignParametersError, match="another key"):
            ev.deserialize(forged)


def _rewrap_bundle(bundle: bytes, params) -> bytes:
    env = io.unpack(bundle, kind="public_bundle")
    meta = {**env.meta, "params": params.summary()}
    return io.pack("public_bundle", env.backend, params.fingerprint(), env.payload, meta)


def test_bundle_must_hold_the_context_its_header_claims(client, backend):
    from privlearn.he import PRESETS

    bundle = client.public_bundle([1])
    if backend == "openfhe":  # a toy N=4096 context under a 128-bit header
        with pytest.raises(io.CorruptError, match="ring dimension 4096"):
            Evaluator.from_bundle(
                _rewrap_bundle(bundle, PRESETS["n16-d24"]), insecure_for_testing=True
            )
    fake = dataclasses.replace(PRESETS["toy-n12"], security="128-classic")
    with pytest.raises(InsecureParametersError, match="marked 128-bit but is not"):
        Evaluator.from_bundle(_rewrap_bundle(bundle, fake), insecure_for_testing=True)


def test_a_bundle_short_of_128_bits_needs_the_opt_out(client):
    """It loaded silently before: the server side needs the loud opt-out as the client did."""
    bundle = client.public_bundle([1])
    with pytest.raises(InsecureParametersError, match="insecure_for_testing"):
        Evaluator.from_bundle(bundle)
    assert Evaluator.from_bundle(bundle, insecure_for_testing=True).params.name == "toy-n12"


@pytest.mark.openfhe
def test_an_in_process_evaluator_computes_with_its_bundles_relinearisation_key():
    """OpenFHE's key table keeps one relinearisation key per key tag: in one process the
    client's stayed and the bundle's was never used, so no in-process test exercised it."""
    import openfhe as ofhe

    client = ClientContext.create("toy-n12", "openfhe", seed=3, insecure_for_testing=True)
    bundle = client.public_bundle()
    ofhe.ClearEvalMultKeys()
    client._cc.EvalMultKeyGen(client._secret_key)  # the table now holds another key, same tag
    fresh = ofhe.SerializeEvalMultKeyString(ofhe.BINARY, client.key_id)
    _, sections = io.open_bundle(bundle)
    assert fresh != sections["relin_key"]
    ev = Evaluator.from_bundle(bundle, insecure_for_testing=True)
    assert ofhe.SerializeEvalMultKeyString(ofhe.BINARY, ev.key_id) == sections["relin_key"]
    x = client.encrypt(np.linspace(-1, 1, 16))
    assert np.allclose(client.decrypt(ev.mul(x, x))[:16], np.linspace(-1, 1, 16) ** 2, atol=1e-4)


@pytest.mark.openfhe
def test_a_real_header_over_complex_slots_is_refused_on_decryption():
    """The complex flag came from the header alone: a real-unfinished ciphertext of complex slots
    decrypted with its imaginary part silently dropped."""
    client = ClientContext.create("toy-n12", "openfhe", seed=4, insecure_for_testing=True)
    env = io.unpack(client.serialize(client.encrypt(np.full(8, 0.5 + 0.5j))), kind="ciphertext")
    forged = io.pack(
        "ciphertext",
        env.backend,
        env.params_fingerprint,
        env.payload,
        {**env.meta, "complex": False},
    )
    with pytest.raises(io.CorruptError, match="imaginary"):
        client.decrypt(client.deserialize(forged))
    real = client.encrypt(np.linspace(-1, 1, 8))
    assert np.allclose(client.decrypt(real)[:8], np.linspace(-1, 1, 8), atol=1e-5)


@pytest.mark.openfhe
def test_a_bundle_with_another_clients_relinearisation_key_is_refused():
    """It loaded, and the first product raised a raw OpenFHE error."""
    a = ClientContext.create("toy-n12", "openfhe", seed=5, insecure_for_testing=True)
    b = ClientContext.create("toy-n12", "openfhe", seed=6, insecure_for_testing=True)
    env = io.unpack(a.public_bundle(), kind="public_bundle")
    sections = io.unpack_sections(env.payload)
    sections["relin_key"] = io.unpack_sections(
        io.unpack(b.public_bundle(), kind="public_bundle").payload
    )["relin_key"]
    forged = io.pack(
        "public_bundle", env.backend, env.params_fingerprint, io.pack_sections(sections), env.meta
    )
    with pytest.raises(io.CorruptError, match="another key pair"):
        Evaluator.from_bundle(forged, insecure_for_testing=True)


@pytest.mark.parametrize("field", ["meta", "length", "kind"])
def test_header_fields_of_the_wrong_type_are_corrupt_not_type_errors(field):
    data = io.pack("ciphertext", "simulator", "fp", b"abc", {"level": 1})
    hlen = int.from_bytes(data[4:8], "big")
    header = json.loads(data[8 : 8 + hlen])
    header[field] = {"meta": [1], "length": "3", "kind": 7}[field]
    h = json.dumps(header, sort_keys=True).encode()
    with pytest.raises(io.CorruptError, match="header"):
        io.unpack(b"PLHE" + len(h).to_bytes(4, "big") + h + b"abc", kind="ciphertext")


@pytest.mark.openfhe
def test_a_bundle_that_fails_to_load_leaves_the_clients_keys_as_they_were():
    client = ClientContext.create("toy-n12", "openfhe", seed=9, insecure_for_testing=True)
    env = io.unpack(client.public_bundle(), kind="public_bundle")
    sections = io.unpack_sections(env.payload)
    sections["relin_key"] = sections["relin_key"][:-64]  # truncated inside OpenFHE's format
    forged = io.pack(
        "public_bundle", env.backend, env.params_fingerprint, io.pack_sections(sections), env.meta
    )
    with pytest.raises(io.CorruptError):
        Evaluator.from_bundle(forged, insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    x = client.encrypt(np.full(4, 0.5))
    assert np.allclose(client.decrypt(ev.mul(x, x))[:4], 0.25, atol=1e-4)


def _forge_bundle(bundle: bytes, *, meta=None, drop=()) -> bytes:
    env = io.unpack(bundle, kind="public_bundle")
    sections = {k: v for k, v in io.unpack_sections(env.payload).items() if k not in drop}
    return io.pack(
        "public_bundle",
        env.backend,
        env.params_fingerprint,
        io.pack_sections(sections),
        {**env.meta, **(meta or {})},
    )


@pytest.mark.openfhe
@pytest.mark.parametrize(
    "meta",
    [
        {"rotations": 0},
        {"rotations": [[1]]},
        {"rotations": [-1]},
        {"bootstrap": "true"},
        {"bootstrap": True},  # toy-n12 has no bootstrapping: a TypeError on its level budget
    ],
)
def test_a_bundle_header_of_the_wrong_shape_is_corrupt(meta):
    """These ended in TypeErrors (rotations not a list) or were read as truthy flags."""
    client = ClientContext.create("toy-n12", "openfhe", seed=10, insecure_for_testing=True)
    with pytest.raises(io.CorruptError, match="public bundle"):
        Evaluator.from_bundle(
            _forge_bundle(client.public_bundle([1]), meta=meta), insecure_for_testing=True
        )


@pytest.mark.openfhe
def test_a_bundle_that_grants_rotations_it_has_no_keys_for_is_corrupt():
    """It loaded, and the first rotation raised OpenFHE's 'keys are not generated'."""
    client = ClientContext.create("toy-n12", "openfhe", seed=11, insecure_for_testing=True)
    lacking = _forge_bundle(client.public_bundle([1]), drop=("automorphism_keys",))
    with pytest.raises(io.CorruptError, match="grants 1 rotation/conjugation keys but holds 0"):
        Evaluator.from_bundle(lacking, insecure_for_testing=True)
    other_keys = _forge_bundle(client.public_bundle([2]), meta={"rotations": [1]})
    with pytest.raises(io.CorruptError, match="holds 0"):
        Evaluator.from_bundle(other_keys, insecure_for_testing=True)
    # in a process where an evaluator already holds the key for rotation 1 under this tag,
    # OpenFHE's merged table made the forged bundle look complete
    honest = Evaluator.from_bundle(client.public_bundle([1]), insecure_for_testing=True)
    with pytest.raises(io.CorruptError, match="holds 0"):
        Evaluator.from_bundle(other_keys, insecure_for_testing=True)
    x = client.encrypt(np.arange(8.0))
    assert np.allclose(client.decrypt(honest.rotate(x, 1))[:7], np.arange(1.0, 8.0), atol=1e-4)
