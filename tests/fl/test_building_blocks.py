"""Models, aggregation transforms, round plans, and the client update every algorithm uploads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privlearn.fl import aggregate as A
from privlearn.fl import tree as T
from privlearn.fl.algorithms import ALGORITHMS, ClientUpdate
from privlearn.fl.engine import TrainData, make_engine
from privlearn.fl.models import build_model, simple_cnn
from privlearn.fl.plan import LocalWork, Sampling, plan_round, sample_cohort
from privlearn.fl.rounds import init_federation, run_round, server_rng

from .helpers import make


@pytest.mark.parametrize(
    "shape, name, n_params",
    [
        ((1, 28, 28), "cnn", 44_426),  # NIID-Bench SimpleCNNMNIST
        ((3, 32, 32), "cnn", 62_006),  # NIID-Bench SimpleCNN
        ((60,), "mclr", 610),  # FedProx mclr on Synthetic
        ((1, 8, 8), "cnn", 19_754),  # the 3x3 variant for digits
    ],
)
def test_parameter_counts_match_the_references(shape, name, n_params):
    assert build_model(name, shape, 10).n_params() == n_params


def test_masked_batch_norm_ignores_padding():
    model = simple_cnn((1, 8, 8), 10, batch_norm=True)
    p, b = model.init(torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 8, 8)
    real, _ = model.apply(p, b, x[:3], train=True)
    padded, nb = model.apply(
        p, b, torch.cat([x[:3], 100 * x[3:]]), mask=torch.tensor([1.0, 1, 1, 0, 0]), train=True
    )
    _, nb_real = model.apply(p, b, x[:3], train=True)
    torch.testing.assert_close(padded[:3], real, atol=1e-5, rtol=0)
    for k in nb:
        torch.testing.assert_close(nb[k], nb_real[k], atol=1e-6, rtol=0)
    # an all-padding batch leaves the running statistics alone; eval mode uses them
    _, same = model.apply(p, b, x, mask=torch.zeros(5), train=True)
    assert all(torch.equal(same[k], b[k]) for k in b)
    out1, _ = model.apply(p, b, x[:1], train=False)
    out2, _ = model.apply(p, b, x[:2], train=False)
    torch.testing.assert_close(out1, out2[:1])


def test_model_errors_are_specific():
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model("cnn", (64,), 10)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", (64,), 10)


def test_weighted_mean_clip_and_chain_order():
    u = A.Updates({"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}, torch.tensor([1.0, 3.0]))
    step, _ = A.weighted_mean().update(u, (), {})
    torch.testing.assert_close(step.values["w"], torch.tensor([0.75, 1.75]))
    clipped, _ = A.clip_by_norm(1.0).update(u, (), {})
    torch.testing.assert_close(clipped.values["w"], torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="sgd must come after the reducer"):
        A.chain(A.sgd(1.0)).update(u, ((),), {})
    with pytest.raises(ValueError, match="clip_by_norm must come before"):
        A.chain(A.mean(), A.clip_by_norm(1.0)).update(u, ((), ()), {})


def test_screen_names_clients_with_non_finite_rows():
    ups = {
        "delta": {"w": torch.tensor([[1.0], [float("nan")], [2.0]])},
        "n": torch.tensor([1.0, 2.0, float("inf")]),
    }
    keep, rejected = A.screen(ups, torch.tensor([7, 8, 9]))
    assert keep.tolist() == [True, False, False]
    assert [(r.client, r.reason) for r in rejected] == [
        (8, "non-finite values (NaN/Inf) in ['delta']['w']"),
        (9, "non-finite values (NaN/Inf) in ['n']"),
    ]


def test_screening_wants_the_models_precision_and_admits_integer_extras_only():
    from privlearn.fl.algorithms.base import ClientUpdate

    def update(**fields):
        base = dict(
            delta={"w": torch.zeros(2, 3)},
            weight=torch.ones(2),
            loss=torch.zeros(2),
            steps=torch.ones(2),
            buffers={},
            extras={"id": torch.tensor([4, 5])},  # FedFomo's ids are int64
        )
        return ClientUpdate(**{**base, **fields})

    ids = torch.tensor([4, 5])
    assert A.screen(update(), ids, dtype=torch.float32)[0].all()
    for bad, reason in [
        (
            {"delta": {"w": torch.zeros(2, 3, dtype=torch.int64)}},
            "delta['w'] has dtype torch.int64",
        ),
        ({"extras": {"id": torch.zeros(2, dtype=torch.float64)}}, "extras['id'] has dtype"),
        ({"steps": torch.ones(2, dtype=torch.float16)}, "steps has dtype torch.float16"),
    ]:
        keep, rejected = A.screen(update(**bad), ids, dtype=torch.float32)
        assert not keep.any() and [r.client for r in rejected] == [4, 5]
        assert rejected[0].reason.startswith(reason)
    huge = update(delta={"w": torch.tensor([[0.0, 0.0, 2e19], [0.0, 0.0, 1e19]])})
    keep, rejected = A.screen(huge, ids, dtype=torch.float32)
    assert keep.tolist() == [False, True] and "beyond ±1.8e+19" in rejected[0].reason


def test_sampling_is_seeded_and_has_the_right_size():
    rng = lambda s: np.random.default_rng(s)  # noqa: E731
    a = sample_cohort(100, Sampling("uniform", 10), rng(1))
    assert len(a) == 10 and len(set(a)) == 10
    assert (a == sample_cohort(100, Sampling("uniform", 10), rng(1))).all()
    sizes = [len(sample_cohort(1000, Sampling("poisson", rate=0.1), rng(s))) for s in range(20)]
    assert 80 < np.mean(sizes) < 120 and len(set(sizes)) > 1
    with pytest.raises(ValueError, match="exceeds the 5 clients"):
        sample_cohort(5, Sampling("uniform", 10), rng(0))


def _clients():
    return [np.arange(i * 50, i * 50 + n) for i, n in enumerate([23, 50, 7, 31, 12, 40])]


def test_drop_last_plans_only_full_batches_from_each_epochs_permutation():
    plan = plan_round(_clients(), Sampling("all"), LocalWork(2, 8, drop_last=True), 0, 0)
    for row in range(len(plan)):
        n, nb = int(plan.n[row]), int(plan.nb[row])
        assert nb == max(n // 8, 1) and int(plan.steps[row]) == 2 * nb
        for e in range(2):
            batches = [plan.client_batch(row, e * nb + b) for b in range(nb)]
            assert all(len(b) == min(8, n) for b in batches)  # n = 7: its one short batch
            seen = torch.cat(batches).tolist()
            assert len(set(seen)) == len(seen)
            assert set(seen) <= set(_clients()[int(plan.clients[row])].tolist())
            idx, mask = plan.batch_rows(torch.tensor([row]), e * nb + nb - 1)
            assert idx[0][mask[0]].tolist() == batches[-1].tolist()


def test_plan_batches_cover_each_epoch_exactly_once():
    plan = plan_round(_clients(), Sampling("all"), LocalWork(3, 8), seed=0, round_idx=0)
    for row in range(len(plan)):
        n, nb = int(plan.n[row]), int(plan.nb[row])
        assert int(plan.steps[row]) == 3 * nb
        for e in range(3):
            seen = torch.cat([plan.client_batch(row, e * nb + b) for b in range(nb)])
            assert sorted(seen.tolist()) == _clients()[int(plan.clients[row])].tolist()
        # the padded view returns the same rows with a mask
        for t in range(3 * nb):
            idx, mask = plan.batch_rows(torch.tensor([row]), t)
            assert idx[0][mask[0]].tolist() == plan.client_batch(row, t).tolist()
            assert int(mask.sum()) == len(plan.client_batch(row, t)) <= 8
            assert n >= 1


@pytest.mark.parametrize(
    "work",
    [
        LocalWork(2, 8, stragglers=0.3, straggler_policy="partial"),
        LocalWork(1, 8, sampler="poisson"),
    ],
    ids=["shuffle", "poisson"],
)
def test_a_plans_rows_taken_keep_their_batches(work):
    """RoundPlan.take (a shard of the cohort): each taken row reads the batches it read in
    the whole plan, and the shard's sample order holds only its clients' samples."""
    plan = plan_round(_clients(), Sampling("all"), work, seed=0, round_idx=1)
    rows = torch.tensor([3, 0, 2])
    part = plan.take(rows)
    assert part.clients.tolist() == plan.clients[rows].tolist()
    assert set(part.stragglers) <= set(part.clients.tolist())
    for j, row in enumerate(rows.tolist()):
        for t in range(int(plan.steps[row])):
            assert torch.equal(part.client_batch(j, t), plan.client_batch(row, t))
    for t in range(int(plan.steps.max())):
        (a, ma), (b, mb) = plan.batch_rows(rows, t), part.batch_rows(torch.arange(3), t)
        assert torch.equal(ma, mb) and torch.equal(a[ma], b[mb])
    if work.sampler == "shuffle":
        mine = set(np.concatenate([_clients()[c] for c in part.clients.tolist()]).tolist())
        assert set(part.order.tolist()) == mine


@pytest.mark.parametrize("sampler", ["shuffle", "poisson"])
def test_step_batches_are_every_steps_batch_rows_at_once(sampler):
    """The vectorised engine's per-round layout holds what batch_rows gives step by step,
    for a shrinking stack and for rows kept (masked) past their last step."""
    work = LocalWork(2, 8, epochs_range=(1, 3), sampler=sampler)
    plan = plan_round(_clients(), Sampling("all"), work, seed=0, round_idx=1)
    rows = torch.argsort(-plan.steps, stable=True)
    steps = plan.steps[rows].tolist()
    widths = [max(1, sum(s > t for s in steps)) for t in range(steps[0])]
    widths[0] = len(rows)  # a row kept at step 0 whatever its count
    idx, mask, at = plan.step_batches(rows, widths)
    assert at[-1] == sum(widths) == len(idx) == len(mask)
    for t, w in enumerate(widths):
        want_idx, want_mask = plan.batch_rows(rows[:w], t)
        assert torch.equal(mask[at[t] : at[t + 1]], want_mask)
        assert torch.equal(idx[at[t] : at[t + 1]][want_mask], want_idx[want_mask])


def test_stragglers_heterogeneous_epochs_and_determinism():
    clients = [np.arange(i * 40, i * 40 + 40) for i in range(10)]
    drop = plan_round(clients, Sampling("all"), LocalWork(5, 10, stragglers=0.5), 1, 3)
    assert len(drop) == 5 and len(drop.dropped) == 5  # FedProx: round(K (1 - s)) stay active
    part = plan_round(
        clients, Sampling("all"), LocalWork(5, 10, stragglers=0.9, straggler_policy="partial"), 1, 3
    )
    slow = np.isin(part.clients.numpy(), part.stragglers)
    assert slow.sum() == 9
    assert ((part.steps.numpy()[slow] >= 4) & (part.steps.numpy()[slow] <= 16)).all()  # 1-4 ep.
    assert (part.steps.numpy()[~slow] == 20).all()
    het = plan_round(clients, Sampling("all"), LocalWork(2, 10, epochs_range=(2, 5)), 1, 3)
    assert set((het.steps // 4).tolist()) <= {2, 3, 4, 5} and len(set(het.steps.tolist())) > 1
    again = plan_round(clients, Sampling("all"), LocalWork(2, 10, epochs_range=(2, 5)), 1, 3)
    assert torch.equal(het.order, again.order) and torch.equal(het.steps, again.steps)
    other = plan_round(clients, Sampling("all"), LocalWork(2, 10, epochs_range=(2, 5)), 1, 4)
    assert not torch.equal(het.order, other.order)


def test_batch_mask_takes_the_features_precision():
    from privlearn.fl.engine.base import TrainData

    idx = torch.tensor([0, 1])
    for dtype in (torch.float32, torch.float64):
        data = TrainData(torch.zeros(3, 2, dtype=dtype), torch.zeros(3, dtype=torch.long))
        assert data.batch(idx)["mask"].dtype == dtype
        assert data.batch(idx, torch.ones(2))["mask"].dtype == dtype


@pytest.mark.parametrize("engine", ["sequential", "vectorised"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_client_updates_are_typed_and_the_round_loss_is_sample_weighted(name, engine, digits_dir):
    """Every algorithm uploads a ClientUpdate whose weight is the client's sample count and
    whose loss is its mean step loss; the round's train loss weighs clients by samples."""
    model, algo = make(name, digits_dir, **({"n_candidates": 2} if name == "fedfomo" else {}))
    eng = make_engine(engine)
    work = LocalWork(1, 16, stragglers=0.5, straggler_policy="partial")
    plan = plan_round(digits_dir.clients, Sampling("uniform", 4), work, 0, 0, algo.batches_per_step)
    data = TrainData(digits_dir.x_train, digits_dir.y_train)
    server, bank = init_federation(algo, model, digits_dir.n_clients, 0)
    result = eng.run_clients(algo, server, T.rows(bank, plan.clients), plan, data)
    up = result.updates
    assert isinstance(up, ClientUpdate)
    assert torch.equal(up.weight, plan.n.to(up.weight.dtype))  # one row per client, plan order
    assert torch.equal(up.steps, plan.steps.to(up.steps.dtype))
    assert up.loss.shape == (len(plan),) and (up.loss > 0).all()
    _, stats = run_round(algo, eng, server, bank, plan, data, server_rng(0, 0))
    n = plan.n.double()
    assert stats.train_loss == pytest.approx(float((up.loss.double() * n).sum() / n.sum()))


NAN = float("nan")


@pytest.mark.parametrize(
    ("make_it", "field"),
    [
        (lambda: LocalWork(epochs=0), "epochs"),
        (lambda: LocalWork(epochs=NAN), "epochs"),
        (lambda: LocalWork(epochs=1001), "epochs"),
        (lambda: LocalWork(batch_size=NAN), "batch_size"),
        (lambda: LocalWork(epochs_range=(1, NAN)), "epochs_range"),
        (lambda: LocalWork(epochs_range=()), "epochs_range"),
        (lambda: LocalWork(epochs_range=(3, 2)), "epochs_range"),
        (lambda: LocalWork(stragglers=NAN), "stragglers"),
        (lambda: LocalWork(stragglers=1.0), "stragglers"),
        (lambda: LocalWork(straggler_policy="wait"), "straggler_policy"),
        (lambda: Sampling("uniform", clients_per_round=NAN), "clients_per_round"),
        (lambda: Sampling("poisson", rate=NAN), "sample_rate"),
        (lambda: Sampling("some"), "sampling"),
    ],
)
def test_the_plans_checks_name_the_config_field_and_refuse_nan(make_it, field):
    """NaN epochs or batch sizes passed `< 1`; RunConfig relies on these checks."""
    with pytest.raises(ValueError, match=f"^{field}: "):
        make_it()
