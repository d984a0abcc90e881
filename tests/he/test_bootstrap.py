"""Bootstrapping: levels, precision, and the input contract, on both backends."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import ClientContext, Evaluator, LevelError, MissingKeyError
from tests.conftest import BACKENDS


def _precision_bits(err: np.ndarray) -> float:
    return float(-np.log2(np.max(np.abs(err))))


@pytest.fixture(scope="module", params=BACKENDS)
def boot(request):
    client = ClientContext.create("toy-n12-boot", request.param, seed=0, insecure_for_testing=True)
    return client, Evaluator.from_bundle(
        client.public_bundle([1], bootstrap=True), insecure_for_testing=True
    )


def test_bootstrap_restores_levels_and_keeps_precision(boot):
    client, ev = boot
    p = client.params
    z = 0.9 * np.exp(2j * np.pi * np.random.default_rng(0).random(p.slots))
    ct = ev.level_down(client.encrypt(z), 1)
    out = ev.bootstrap(ct)
    assert out.level == p.levels_after_bootstrap == 4
    assert _precision_bits(client.decrypt(out) - z) > 20  # 26.6 measured on OpenFHE
    for _ in range(out.level):  # every level it reports is usable
        out, z = ev.mul(out, 1.01), z * 1.01
    assert out.level == 0
    assert _precision_bits(client.decrypt(out) - z) > 20


def test_bootstrap_needs_one_level_and_no_pending_rescale(boot):
    client, ev = boot
    ct = ev.level_down(client.encrypt([0.5]), 0)
    with pytest.raises(LevelError, match="needs 1 level"):
        ev.bootstrap(ct)
    pending = ev.mul(client.encrypt([0.5]), 0.5, rescale=False)
    with pytest.raises(LevelError, match="pending rescale"):
        ev.bootstrap(pending)


def test_bootstrap_needs_its_keys(boot):
    client, _ = boot
    ev = Evaluator.from_bundle(client.public_bundle([1]), insecure_for_testing=True)
    with pytest.raises(MissingKeyError, match="bootstrap=True"):
        ev.bootstrap(client.encrypt([0.5]))
    plain = ClientContext.create("toy-n12", "simulator", insecure_for_testing=True)
    with pytest.raises(MissingKeyError, match="not bootstrappable"):
        Evaluator.from_bundle(plain.public_bundle(), insecure_for_testing=True).bootstrap(
            plain.encrypt([0.5])
        )


def test_simulator_refuses_inputs_outside_the_contract():
    client = ClientContext.create("toy-n12-boot", "simulator", insecure_for_testing=True)
    ev = Evaluator.from_bundle(client.public_bundle(bootstrap=True), insecure_for_testing=True)
    with pytest.raises(LevelError, match="must lie in"):
        ev.bootstrap(client.encrypt([1.5]))


@pytest.mark.slow
@pytest.mark.openfhe
def test_bootstrap_at_128_bits(tmp_path):
    """n16-boot on OpenFHE: ~9 GB of keys through a bundle directory; prints the precision."""
    import time

    client = ClientContext.create("n16-boot", "openfhe")
    ev = Evaluator.from_bundle(
        client.public_bundle(bootstrap=True, path=tmp_path / "bundle"), insecure_for_testing=True
    )
    z = np.random.default_rng(1).uniform(-1, 1, client.slots)
    ct = ev.level_down(client.encrypt(z), 1)
    t = time.perf_counter()
    out = ev.bootstrap(ct)
    seconds = time.perf_counter() - t
    bits = _precision_bits(client.decrypt(out) - z)
    print(f"\nn16-boot bootstrap: {seconds:.1f} s, {bits:.1f} bits, level {out.level}")
    assert out.level == 4
    assert bits > 14
    for _ in range(out.level - 1):
        out, z = ev.mul(out, 0.99), z * 0.99
    assert _precision_bits(client.decrypt(out) - z) > 14
