"""A client's keys saved to a file of mode 0600 and loaded back: the same key pair."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import ClientContext, Evaluator, io


def test_saved_keys_decrypt_what_the_original_encrypted(client, tmp_path):
    blob = client.serialize(client.encrypt(np.arange(6.0)))
    path = client.save(tmp_path / "key.plhe")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = ClientContext.load(path, insecure_for_testing=True)
    assert loaded.key_id == client.key_id and loaded.backend_name == client.backend_name
    assert np.allclose(loaded.decrypt(loaded.deserialize(blob))[:6], np.arange(6), atol=1e-6)
    # and it makes evaluation keys for the same pair: a rotation by a fresh bundle's key
    ev = Evaluator.from_bundle(loaded.public_bundle([1]), insecure_for_testing=True)
    out = client.decrypt(ev.rotate(ev.deserialize(blob), 1))
    assert np.allclose(out[:5], np.arange(1, 6), atol=1e-6)


def test_a_key_file_is_never_overwritten_nor_read_when_others_may(client, tmp_path):
    path = client.save(tmp_path / "key.plhe")
    with pytest.raises(FileExistsError):
        client.save(path)
    path.chmod(0o640)
    with pytest.raises(PermissionError, match="its mode is 0640: others may read or change it"):
        ClientContext.load(path, insecure_for_testing=True)
    path.chmod(0o600)
    with pytest.raises(ValueError, match="128-bit"):
        ClientContext.load(path)  # an insecure preset's key needs the same opt-out
    (tmp_path / "ct").write_bytes(client.serialize(client.encrypt([1.0])))
    (tmp_path / "ct").chmod(0o600)
    with pytest.raises(io.WrongKindError, match="expected a serialized secret_key"):
        ClientContext.load(tmp_path / "ct")
