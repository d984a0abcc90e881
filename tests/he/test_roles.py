"""The server side is built from public bytes alone and has no way to decrypt."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import ClientContext, Evaluator


def test_evaluator_has_no_decrypt_path(ev):
    assert not any("decrypt" in name.lower() for name in dir(ev))
    assert not any("secret" in name.lower() for name in vars(ev))


def test_secret_key_bytes_appear_nowhere_in_the_bundle(client, backend):
    bundle = client.public_bundle([1, 2, 3], conjugation=True)
    sk = client._secret_key_bytes()
    public = client.public_bundle()  # public key, relinearisation key, parameters only
    # 32-byte windows of the serialized secret key that are not also in the minimal public
    # bundle: what is in there (moduli, roots of unity, framing) is public by definition.
    step = max(1, len(sk) // 64)
    windows = [sk[i : i + 32] for i in range(0, len(sk) - 31, step) if sk[i : i + 32] not in public]
    assert len(windows) >= (48 if backend == "openfhe" else 1)
    for w in windows:
        assert w not in bundle


@pytest.mark.openfhe
def test_openfhe_evaluator_cannot_decrypt_even_by_reaching_into_openfhe():
    client = ClientContext.create("toy-n12", "openfhe", insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle([1]), insecure_for_testing=True)
    ct = ev.add(client.encrypt([0.5, 0.25]), 0.0)
    held = {type(v).__name__ for v in vars(ev).values()}
    assert "PrivateKey" not in held
    # decrypting with the only key the server has, the public one, is not even expressible
    with pytest.raises(TypeError):
        ev._cc.Decrypt(ev._public_key, ct.raw)
    assert np.allclose(client.decrypt(ct)[:2], [0.5, 0.25], atol=1e-8)


def test_bundle_records_what_it_grants(client):
    ev = Evaluator.from_bundle(client.public_bundle([3, -1]), insecure_for_testing=True)
    assert ev.rotation_keys == {3, client.slots - 1}
    assert not ev.has_conjugation_key and not ev.can_bootstrap


def test_simulator_says_it_is_not_encryption():
    client = ClientContext.create("toy-n12", "simulator", insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(), insecure_for_testing=True)
    assert not client.is_real_encryption and not ev.is_real_encryption
    assert b"NOT ENCRYPTION" in client.public_bundle()
