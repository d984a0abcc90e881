"""Every Evaluator operation against numpy, on the simulator and on OpenFHE (toy-n12)."""

from __future__ import annotations

import numpy as np
import pytest

from privlearn.he import LevelError, MissingKeyError, ParameterMismatchError

TOL = 1e-7  # toy-n12 (50-bit scale) keeps ~36 bits; values here are O(1) through <= 6 levels


@pytest.fixture(scope="module")
def data(client):
    rng = np.random.default_rng(7)
    n = client.slots
    x = rng.uniform(-1, 1, n)
    y = rng.uniform(-1, 1, n)
    z = rng.uniform(-1, 1, n) + 1j * rng.uniform(-1, 1, n)
    return x, y, z


def close(a, b, tol=TOL):
    err = np.max(np.abs(np.asarray(a) - np.asarray(b)))
    assert err < tol, f"max error {err:.3g} >= {tol}"


def test_encrypt_decrypt_real_and_complex(client, data):
    x, _, z = data
    close(client.decrypt(client.encrypt(x)), x)
    out = client.decrypt(client.encrypt(z))
    assert np.iscomplexobj(out)
    close(out, z)  # the imaginary part survives (OpenFHE needs CKKSDataType.COMPLEX for this)
    assert not np.iscomplexobj(client.decrypt(client.encrypt(x)))


def test_short_vectors_are_zero_padded(client):
    out = client.decrypt(client.encrypt([1.5, -2.0, 3.25]))
    close(out[:3], [1.5, -2.0, 3.25])
    close(out[3:], 0)


def test_add_sub_neg(client, ev, data):
    x, y, z = data
    cx, cy, cz = client.encrypt(x), client.encrypt(y), client.encrypt(z)
    close(client.decrypt(ev.add(cx, cy)), x + y)
    close(client.decrypt(ev.sub(cx, cy)), x - y)
    close(client.decrypt(ev.neg(cz)), -z)
    close(client.decrypt(ev.add(cx, y)), x + y)  # plaintext vector
    close(client.decrypt(ev.sub(cx, 0.25)), x - 0.25)  # scalar
    close(client.decrypt(ev.add(cz, 0.5 - 0.25j)), z + 0.5 - 0.25j)
    for op in (ev.add, ev.sub):
        assert op(cx, cy).level == cx.level  # additions cost no level


def test_multiplications_and_levels(client, ev, data):
    x, y, z = data
    cx, cy, cz = client.encrypt(x), client.encrypt(y), client.encrypt(z)
    top = client.params.depth
    for out, want in [
        (ev.mul(cx, cy), x * y),
        (ev.mul(cz, cz), z * z),
        (ev.mul(cx, y), x * y),
        (ev.mul(cz, z), z * z),
        (ev.mul(cx, 0.37), 0.37 * x),
        (ev.mul(cx, 0.5j), 0.5j * x),
    ]:
        assert out.level == top - 1
        close(client.decrypt(out), want)
    for k in (0, 1, -1, 3, -6, 13):  # integer scalars: additions only, no level
        out = ev.mul(cz, k)
        assert out.level == top
        close(client.decrypt(out), k * z, TOL * max(1, abs(k)))


def test_sum_of_products_rescales_once(client, ev, data):
    x, y, _ = data
    cx, cy = client.encrypt(x), client.encrypt(y)
    p1 = ev.mul(cx, cy, rescale=False)
    p2 = ev.mul(cx, x, rescale=False)
    assert p1.pending_rescale and p1.level == client.params.depth
    total = ev.rescale(ev.add(p1, p2))
    assert total.level == client.params.depth - 1 and not total.pending_rescale
    close(client.decrypt(total), x * y + x * x)
    with pytest.raises(LevelError, match="pending rescale"):
        ev.mul(p1, cx)
    with pytest.raises(LevelError, match="pending rescale"):
        ev.add(p1, cx)
    with pytest.raises(LevelError, match="nothing to rescale"):
        ev.rescale(cx)


def test_depth_is_exhausted_with_a_clear_error(client, ev):
    ct = client.encrypt([0.9] * 4, level=3)
    for _ in range(3):
        ct = ev.mul(ct, ct)
    assert ct.level == 0
    close(client.decrypt(ct)[:4], 0.9**8, 1e-6)
    with pytest.raises(LevelError, match="0 left"):
        ev.mul(ct, ct)
    with pytest.raises(LevelError):
        ev.mul(ct, 0.5)


def test_operands_at_different_levels_meet_at_the_lower(client, ev, data):
    x, y, _ = data
    hi, lo = client.encrypt(x), client.encrypt(y, level=5)
    assert ev.add(hi, lo).level == 5
    prod = ev.mul(hi, lo)
    assert prod.level == 4
    close(client.decrypt(prod), x * y)
    down = ev.level_down(hi, 2)
    assert down.level == 2
    close(client.decrypt(down), x)
    assert ev.match_level(hi, lo).level == 5
    with pytest.raises(LevelError):
        ev.level_down(lo, 6)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 100, -1, -7])
def test_rotation(client, ev, data, k):
    x, _, z = data
    close(client.decrypt(ev.rotate(client.encrypt(x), k)), np.roll(x, -k))
    close(client.decrypt(ev.rotate(client.encrypt(z), k)), np.roll(z, -k))


def test_rotation_without_key_is_refused(client, ev, data):
    with pytest.raises(MissingKeyError, match="no rotation key for 4"):
        ev.rotate(client.encrypt(data[0]), 4)


def test_hoisted_rotations_match_plain_ones(client, ev, data):
    x = data[0]
    ct = client.encrypt(x)
    ks = [1, 2, 3, 5, 8, -1, 0]
    with ev.cost.measure() as c:
        out = ev.rotate_many(ct, ks)
    assert c["decompose"] == 1 and c["hoisted_rotate"] == 6 and c["rotate"] == 0
    assert c.key_switches == 6 and c.rotations == 6
    for k in ks:
        close(client.decrypt(out[k]), np.roll(x, -k))


def test_conjugation(client, ev, data):
    z = data[2]
    cz = client.encrypt(z)
    close(client.decrypt(ev.conjugate(cz)), np.conj(z))
    # the complexification identity: Re(a) from a and its conjugate
    close(client.decrypt(ev.mul(ev.add(cz, ev.conjugate(cz)), 0.5)), z.real)


def test_cost_counts(client, ev, data):
    x = data[0]
    cx = client.encrypt(x)
    with ev.cost.measure() as c, ev.cost.scope("demo"):
        ev.rotate(ev.mul(ev.mul(cx, cx), x), 1)
    assert c.as_dict() == {
        "mult": 1,
        "cmult": 1,
        "rescale": 2,
        "rotate": 1,
        "rotations": 1,
        "key_switches": 2,
    }
    assert ev.cost.scopes["demo"]["rescale"] >= 2


def test_mixing_contexts_is_refused(client, ev):
    from privlearn.he import ClientContext

    other = ClientContext.create("toy-n12-boot", "simulator", insecure_for_testing=True)
    with pytest.raises(ParameterMismatchError):
        ev.add(client.encrypt([1.0]), other.encrypt([1.0]))


def test_bad_inputs(client):
    with pytest.raises(ValueError, match="NaN"):
        client.encrypt([1.0, np.nan])
    with pytest.raises(ValueError, match="slots"):
        client.encrypt(np.zeros(client.slots + 1))
    with pytest.raises(LevelError):
        client.encrypt([1.0], level=client.params.depth + 1)


def test_refresh(client, ev, data):
    x = data[0]
    ct = client.encrypt(x, level=1)
    ct = ev.mul(ct, ct)
    fresh = client.refresh(ct)
    assert fresh.level == client.params.depth
    close(client.decrypt(fresh), x * x)
