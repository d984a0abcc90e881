"""Each algorithm's defining update rule on a tiny case worked by hand.

The model is logistic regression with one input and two classes (W: 2x1, b: 2). At W = b = 0
both classes have probability 1/2, so one sample (x = 1, y = 0) has cross-entropy gradient
dL/dW = dL/db = p - onehot(y) = [-0.5, +0.5]; for y = 1 it is [+0.5, -0.5]. Where a second
gradient is needed it is at logits (+-0.1 ...) and written with sigma(.), the logistic function.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from privlearn.fl import aggregate as A
from privlearn.fl import tree as T
from privlearn.fl.algorithms import LocalSGD, build_algorithm
from privlearn.fl.algorithms.base import ClientUpdate
from privlearn.fl.algorithms.fednova import normaliser
from privlearn.fl.models import logistic_regression, mlp

MODEL = logistic_regression((1,), 2)
LR = 0.1


def sig(z):
    return 1 / (1 + math.exp(-z))


def zeros():
    return {"fc.weight": torch.zeros(2, 1), "fc.bias": torch.zeros(2)}


def params(w0, w1, b0=0.0, b1=0.0):
    return {"fc.weight": torch.tensor([[w0], [w1]]), "fc.bias": torch.tensor([b0, b1])}


def batch(y, x=1.0, mask=1.0):
    return {"x": torch.tensor([[x]]), "y": torch.tensor([y]), "mask": torch.tensor([mask])}


def info(n, cid=0, **extra):
    return {"id": torch.tensor(cid), "n": torch.tensor(float(n)), **extra}


def algo(name, lr=LR, momentum=0.0, n_clients=4, model=MODEL, **hp):
    return build_algorithm(
        name, model, LocalSGD(lr, momentum), n_clients=n_clients, batch_size=1, **hp
    )


def train(a, server, cs, n, batches, cid=0):
    lo = a.client_init(server, cs, info(n, cid))
    for b in batches:
        lo = a.client_step(lo, b)
    return lo, *a.client_final(server, lo)


def stack(*updates):
    from privlearn.fl import tree as T

    return T.stack(list(updates))


def close(tree, expected, tol=1e-6):
    for k, v in expected.items():
        torch.testing.assert_close(
            tree[k],
            torch.as_tensor(v, dtype=torch.float32).reshape(tree[k].shape),
            atol=tol,
            rtol=0,
        )


def test_fedavg_one_step_each_and_sample_weighted_average():
    a = algo("fedavg")
    s = a.server_init(zeros(), {}, torch.Generator())
    _, ua, _ = train(a, s, {}, 1, [batch(0)])  # W = 0 - 0.1 * (-0.5) = +0.05 on class 0
    _, ub, _ = train(a, s, {}, 3, [batch(1)])  # W = -0.05 on class 0
    close(ua.delta, {"fc.weight": [0.05, -0.05], "fc.bias": [0.05, -0.05]})
    s = a.server_update(s, stack(ua, ub), torch.Generator())
    # (1 * 0.05 + 3 * (-0.05)) / 4 = -0.025
    close(s["params"], {"fc.weight": [-0.025, 0.025], "fc.bias": [-0.025, 0.025]})


def test_fedprox_adds_mu_times_distance_to_the_global_model():
    mu = 2.0
    a = algo("fedprox", mu=mu)
    s = a.server_init(zeros(), {}, torch.Generator())
    lo, _, _ = train(a, s, {}, 1, [batch(0), batch(0)])
    # step 1 at w = w_g: no proximal pull, w1 = +-0.05. Step 2: logits (0.1, -0.1),
    # grad = sigma(0.2) - 1 on class 0; w2 = w1 - 0.1 (grad + mu (w1 - 0))
    g = sig(0.2) - 1
    w2 = 0.05 - LR * (g + mu * 0.05)
    close(lo["params"], {"fc.weight": [w2, -w2], "fc.bias": [w2, -w2]})


def test_scaffold_correction_and_option_ii_control_variates():
    a = algo("scaffold", n_clients=4, server_lr=0.5)
    s = a.server_init(zeros(), {}, torch.Generator())
    s["c"] = params(0.2, -0.2, 0.2, -0.2)
    cs = {"c": {k: torch.zeros_like(v) for k, v in zeros().items()}}
    lo, up, new_cs = train(a, s, cs, 1, [batch(0)])
    # y = 0 - 0.1 (-0.5) - 0.1 (c - c_i) = 0.05 - 0.02 = 0.03
    close(lo["params"], {"fc.weight": [0.03, -0.03]})
    # c_i+ = c_i - c + (x - y) / (K lr) = 0 - 0.2 + (0 - 0.03) / 0.1 = -0.5 (= the gradient)
    close(new_cs["c"], {"fc.weight": [-0.5, 0.5], "fc.bias": [-0.5, 0.5]})
    close(up.extras["dc"], {"fc.weight": [-0.5, 0.5]})
    s2 = a.server_update(s, stack(up), torch.Generator())
    # x <- x + 0.5 * 0.03 ; c <- c + (1/N) sum dc = 0.2 - 0.5 / 4 = 0.075
    close(s2["params"], {"fc.weight": [0.015, -0.015]})
    close(s2["c"], {"fc.weight": [0.075, -0.075]})


def test_fednova_normalises_by_effective_steps():
    assert float(normaliser(torch.tensor(2.0), 0.5)) == pytest.approx(2.5)  # (2 - .75)/.5
    assert float(normaliser(torch.tensor(7.0), 0.0)) == 7.0
    a = algo("fednova", momentum=0.5)
    s = a.server_init(zeros(), {}, torch.Generator())
    lo, up, _ = train(a, s, {}, 1, [batch(0), batch(0)])
    close(up.delta, {k: lo["params"][k] / 2.5 for k in lo["params"]})  # -d_i = (y - x)/a_i
    assert float(up.extras["a"]) == pytest.approx(2.5)
    # server: p = (1/4, 3/4), a = (2, 6): tau_eff = 5; step = 5 * (0.25 * 1 - 0.75 * 1) = -2.5
    u1 = ClientUpdate(
        delta=params(1.0, 1.0, 0, 0),
        weight=torch.tensor(1.0),
        loss=torch.tensor(0.0),
        steps=torch.tensor(2.0),
        buffers={},
        extras={"a": torch.tensor(2.0)},
    )
    u2 = replace(
        u1,
        delta=params(-1.0, -1.0, 0, 0),
        weight=torch.tensor(3.0),
        extras={"a": torch.tensor(6.0)},
    )
    s2 = a.server_update(s, stack(u1, u2), torch.Generator())
    close(s2["params"], {"fc.weight": [-2.5, -2.5], "fc.bias": [0.0, 0.0]})


def test_feddyn_linear_term_state_and_server_correction():
    alpha = 0.5
    a = algo("feddyn", n_clients=2, alpha=alpha)
    s = a.server_init(zeros(), {}, torch.Generator())
    cs = {"g": params(0.3, -0.3, 0.0, 0.0)}
    lo, up, new_cs = train(a, s, cs, 1, [batch(0)])
    # grad + alpha (w - w_g) - g_k at w = w_g: W = -0.1 (-0.5 - 0.3) = 0.08; b = 0.05
    close(lo["params"], {"fc.weight": [0.08, -0.08], "fc.bias": [0.05, -0.05]})
    # g_k <- g_k - alpha (w_k - w_g) = 0.3 - 0.04 = 0.26
    close(new_cs["g"], {"fc.weight": [0.26, -0.26], "fc.bias": [-0.025, 0.025]})
    s2 = a.server_update(s, stack(up), torch.Generator())
    # h = -alpha (1/N) sum dw = -0.5 * 0.08 / 2 = -0.02; w = mean w_k - h/alpha = 0.08 + 0.04
    close(s2["h"], {"fc.weight": [-0.02, 0.02]})
    close(s2["params"], {"fc.weight": [0.12, -0.12], "fc.bias": [0.075, -0.075]})


def _server_steps(transform, deltas):
    p = {"w": torch.zeros(1)}
    state = transform.init(p)
    out = []
    for d in deltas:
        step, state = transform.update(
            A.Updates({"w": torch.tensor([[d]])}, torch.ones(1)), state, p
        )
        p = A.apply_updates(p, step)
        out.append(float(p["w"]))
    return out


def test_fedavgm_server_momentum():
    # v1 = 1, w1 = 0.5; v2 = 0.9 * 1 + 1 = 1.9, w2 = 0.5 + 0.95 = 1.45
    t = A.chain(A.weighted_mean(), A.momentum(lr=0.5, beta=0.9))
    assert _server_steps(t, [1.0, 1.0]) == pytest.approx([0.5, 1.45])


def test_fedadam_fedyogi_fedadagrad_server_steps():
    tau, lr = 0.1, 1.0
    # m1 = 0.1 * 1 = 0.1. Adam: v1 = 0.99 tau^2 + 0.01 = 0.0199 -> step 0.1/(0.14107 + 0.1)
    adam = _server_steps(A.chain(A.weighted_mean(), A.adam(lr, 0.9, 0.99, tau)), [1.0])
    assert adam[0] == pytest.approx(0.1 / (math.sqrt(0.0199) + 0.1))
    # Yogi: v1 = tau^2 - 0.01 * 1 * sign(tau^2 - 1) = 0.02 -> step 0.1 / (0.141421 + 0.1)
    yogi = _server_steps(A.chain(A.weighted_mean(), A.yogi(lr, 0.9, 0.99, tau)), [1.0])
    assert yogi[0] == pytest.approx(0.1 / (math.sqrt(0.02) + 0.1))
    # Adagrad (beta1 = 0): v = tau^2 + 1 + 4; second step = 2 / (sqrt(5.01) + 0.1)
    ada = _server_steps(A.chain(A.weighted_mean(), A.adagrad(lr, 0.0, tau)), [1.0, 2.0])
    first = 1 / (math.sqrt(1.01) + 0.1)
    assert ada == pytest.approx([first, first + 2 / (math.sqrt(5.01) + 0.1)])


def test_fedbn_keeps_batch_norm_local_and_averages_the_rest():
    model = mlp((1,), 2, hidden=(2,), batch_norm=True)
    a = algo("fedbn", model=model)
    p, b = model.init(torch.Generator().manual_seed(0))
    s = a.server_init(p, b, torch.Generator())
    cs = a.client_state_init(s)
    two = {"x": torch.tensor([[1.0], [-1.0]]), "y": torch.tensor([0, 1]), "mask": torch.ones(2)}
    lo, up, new_cs = train(a, s, cs, 2, [two])
    assert set(up.delta) == {k for k in p if k not in model.local_keys}
    assert set(new_cs["params"]) == {"bn1.weight", "bn1.bias"}
    assert not torch.equal(new_cs["buffers"]["bn1.running_mean"], b["bn1.running_mean"])
    s2 = a.server_update(s, stack(up), torch.Generator())
    for k in p:
        if k in model.local_keys:  # the server's BN entries never move
            assert torch.equal(s2["params"][k], p[k])
        else:
            torch.testing.assert_close(s2["params"][k], p[k] + up.delta[k])


def test_perfedavg_first_order_step():
    alpha, beta = 0.1, 0.5
    a = algo("perfedavg", lr=beta, alpha=alpha)
    s = a.server_init(zeros(), {}, torch.Generator())
    two = {"x": torch.tensor([[1.0], [1.0]]), "y": torch.tensor([0, 0]), "mask": torch.ones(2)}
    lo, _, _ = train(a, s, {}, 2, [two])
    # w' = 0 - 0.1 grad(0) = +-0.05; outer grad at logits (0.1, -0.1): sigma(0.2) - 1
    w = -beta * (sig(0.2) - 1)
    close(lo["params"], {"fc.weight": [w, -w], "fc.bias": [w, -w]})


def test_perfedavg_hessian_free_step_matches_explicit_hessian():
    alpha, beta = 0.3, 0.5
    a = algo("perfedavg", lr=beta, alpha=alpha, variant="hf")
    s = a.server_init(params(0.2, -0.1, 0.05, 0.0), {}, torch.Generator())
    three = {
        "x": torch.tensor([[1.0], [2.0], [-1.0]]),
        "y": torch.tensor([0, 1, 1]),
        "mask": torch.ones(3),
    }
    lo, _, _ = train(a, s, {}, 3, [three])
    flat0 = torch.tensor([0.2, -0.1, 0.05, 0.0])

    def loss(v, i):
        logits = three["x"][i : i + 1] @ v[:2].reshape(2, 1).T + v[2:]
        return torch.nn.functional.cross_entropy(logits, three["y"][i : i + 1])

    g1 = torch.autograd.functional.jacobian(lambda v: loss(v, 0), flat0)
    g2 = torch.autograd.functional.jacobian(lambda v: loss(v, 1), flat0 - alpha * g1)
    h3 = torch.autograd.functional.hessian(lambda v: loss(v, 2), flat0)
    expect = flat0 - beta * (g2 - alpha * h3 @ g2)
    got = torch.cat([lo["params"]["fc.weight"].flatten(), lo["params"]["fc.bias"]])
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=0)


def test_pfedme_inner_problem_and_outer_pull():
    a = algo("pfedme", lam=2.0, inner_steps=1, personal_lr=0.1)
    s = a.server_init(zeros(), {}, torch.Generator())
    lo, _, new_cs = train(a, s, a.client_state_init(s), 1, [batch(0)])
    # theta = 0 - 0.1 (grad + 2 (0 - 0)) = 0.05; w = 0 - 0.1 * 2 * (0 - 0.05) = 0.01
    close(new_cs["theta"], {"fc.weight": [0.05, -0.05]})
    close(lo["params"], {"fc.weight": [0.01, -0.01], "fc.bias": [0.01, -0.01]})


def test_ditto_personal_model_is_pulled_to_the_global_one():
    lam = 1.0
    a = algo("ditto", lam=lam, personal_lr=0.1)
    s = a.server_init(params(0.0, 0.0, 0.2, -0.2), {}, torch.Generator())
    cs = {"v": zeros(), "v_buffers": {}}
    _, _, new_cs = train(a, s, cs, 1, [batch(0)])
    # v = 0 - 0.1 (grad(0) + lam (0 - w_g)): W = 0.05; b0 = 0.05 + 0.1 * 0.2 = 0.07
    close(new_cs["v"], {"fc.weight": [0.05, -0.05], "fc.bias": [0.07, -0.07]})


def test_ifca_picks_the_lowest_loss_cluster_and_updates_only_it():
    a = algo("ifca", n_clusters=2)
    s = a.server_init(params(1.0, -1.0), {}, torch.Generator())
    s["params"] = {
        k: torch.stack([params(1.0, -1.0)[k], params(-1.0, 1.0)[k]]) for k in s["params"]
    }
    b = batch(1)
    score = a.client_score(s, {}, info(1), b)  # cluster 1 predicts class 1 for x = 1
    assert score.tolist() == pytest.approx([-math.log(sig(-2)), -math.log(sig(2))], rel=1e-5)
    lo = a.client_init(s, {}, info(1, score=score))
    lo = a.client_step(lo, b)
    up, _ = a.client_final(s, lo)
    # at cluster 1, p = (sigma(-2), sigma(2)), y = 1: W -= 0.1 (sigma(-2), -sigma(-2))
    d = -LR * sig(-2)
    close(lo["params"], {"fc.weight": [-1.0 + d, 1.0 - d]})
    s2 = a.server_update(s, stack(up), torch.Generator())
    assert torch.equal(s2["params"]["fc.weight"][0], s["params"]["fc.weight"][0])
    torch.testing.assert_close(s2["params"]["fc.weight"][1], lo["params"]["fc.weight"])


def test_fedfomo_weights_mix_and_affinity():
    a = algo("fedfomo", n_clients=3, n_candidates=2, epsilon=0.0)
    s = a.server_init(zeros(), {}, torch.Generator().manual_seed(0))
    good, bad = params(1.0, -1.0), params(-1.0, 1.0)
    for k in s["bank"]["params"]:
        s["bank"]["params"][k][1] = good[k]
        s["bank"]["params"][k][2] = bad[k]
    s["candidates"] = torch.tensor([[1, 2], [0, 2], [0, 1]])
    b = batch(0)
    score = a.client_score(s, {}, info(1, cid=0), b)
    l_own, l_good, l_bad = math.log(2), -math.log(sig(2)), -math.log(sig(-2))
    assert score.tolist() == pytest.approx([l_own, l_good, l_bad], rel=1e-5)
    lo = a.client_init(s, {}, info(1, cid=0, score=score))
    # w_n = (L_own - L_n) / ||theta_n - theta_own||, ||.|| = sqrt(2): only the good model
    # has w > 0, so the client moves all the way to it
    w = [(l_own - l_good) / math.sqrt(2), (l_own - l_bad) / math.sqrt(2)]
    assert lo["w"].tolist() == pytest.approx(w, rel=1e-5)
    close(lo["params"], {"fc.weight": [1.0, -1.0], "fc.bias": [0.0, 0.0]})
    up, _ = a.client_final(s, lo)
    s2 = a.server_update(s, stack(up), torch.Generator().manual_seed(1))
    assert s2["affinity"][0, 1:].tolist() == pytest.approx(w, rel=1e-5)
    torch.testing.assert_close(s2["bank"]["params"]["fc.weight"][0], lo["params"]["fc.weight"])
    assert s2["candidates"][0, 0] == 1  # greedy (epsilon 0): the higher-affinity client first


CHAINED = (
    "fedavg",
    "fedprox",
    "scaffold",
    "fednova",
    "feddyn",
    "fedbn",
    "perfedavg",
    "pfedme",
    "ditto",
    "ifca",
)


def _one_round(name, ds, server=None):
    """One round on digits: the server state and the norm of the chain's server step (per
    cluster for IFCA, whose chain runs once per cluster)."""
    from privlearn.fl.engine import make_engine
    from privlearn.fl.rounds import init_federation

    from .helpers import LocalWork, Sampling, make, run

    model, a = make(name, ds, server=server)
    out, _, _ = run(a, model, ds, make_engine("vectorised"), 1, Sampling("all"), LocalWork(1, 16))
    start, _ = init_federation(a, model, ds.n_clients, 0)  # as run() starts
    step = {k: out["params"][k] - start["params"][k] for k in out["params"]}
    if name == "feddyn":  # params = params + chain step - h / alpha
        step = {k: step[k] + out["h"][k] / 0.01 for k in step}
    if name == "ifca":
        return out, max(float(T.flat_rows(step)[m].norm()) for m in range(2))
    return out, float(torch.cat([v.flatten() for v in step.values()]).norm())


@pytest.mark.parametrize("name", CHAINED)
def test_server_chain_replaces_the_default_and_the_default_is_fedavgs(name, digits_dir):
    from .helpers import max_abs_diff

    default, default_norm = _one_round(name, digits_dir)
    # the default is FedAvg's chain (FedDyn: the paper's unweighted mean), bit for bit
    reducer = A.mean() if name == "feddyn" else A.weighted_mean()
    explicit, _ = _one_round(name, digits_dir, A.chain(reducer, A.sgd(1.0)))
    assert max_abs_diff(default, explicit) == 0.0
    # clipping every client's delta to norm 0.01 bounds the server step by 0.01
    clipped, clipped_norm = _one_round(
        name, digits_dir, A.chain(A.clip_by_norm(0.01), reducer, A.sgd(1.0))
    )
    assert default_norm > 0.05 and clipped_norm <= 0.01 + 1e-6
    assert max_abs_diff(default["params"], clipped["params"]) > 1e-3


def test_server_chain_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match="give either server_lr or a server chain, not both"):
        algo("scaffold", server_lr=0.5, server=A.chain(A.weighted_mean(), A.sgd(1.0)))
    with pytest.raises(ValueError, match="fedfomo takes no server= chain; these do: fedavg, "):
        algo("fedfomo", server=A.chain(A.weighted_mean(), A.sgd(1.0)))
