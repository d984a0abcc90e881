"""The server's side of HETAL training: a softmax head fitted on ciphertexts.

Per mini-batch (X: b x (f+1) with a bias column, Y: one-hot b x c):

    Z = X·Wᵀ        DiagABT                 logits, packed c' per row (COL_TILED)
    P = softmax(Z)  privlearn.approx         row-wise, through a LevelManager
    D = P − Y
    G = Dᵀ·X        DiagATB                 the batch gradient times b
    V = W − η'·G;  W ← (1 − γ)·V + γ·V_prev  Nesterov (reference.nesterov_gamma), one level

W is stored times s, the factor at which the softmax's first step is free (``prescale``;
1/(2·reach) for ours), so X·(sW)ᵀ arrives as its input; η' = lr·s/b absorbs it. Ciphertexts
whose levels run out are renewed by the LevelManager's policy: ``"bootstrap"``
(non-interactive) or ``"refresh"`` (the client decrypts and encrypts afresh). Validation
runs the same forward pass and returns the encrypted squared errors (P − Y)², summed over
batches; the client turns them into the Brier score it alone sees.

The trainer holds no key: it runs on an :class:`~privlearn.he.Evaluator`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from privlearn.approx.planner import LevelManager, Policy
from privlearn.approx.softmax import Hetal, NormSquare, SoftmaxMethod
from privlearn.he import Ciphertext, CKKSParams, Evaluator
from privlearn.linalg.cost import Cost, Dims
from privlearn.linalg.matmul import get as get_algorithm
from privlearn.linalg.packing import BlockShape, EncMatrix, Layout, hetal_block_shape
from privlearn.transfer.reference import nesterov_gamma

REFRESH_MODES = ("client", "bootstrap")
# The softmaxes fit for training (the older baselines diverge on wide ranges; bench softmax).
SOFTMAXES: dict[str, type[SoftmaxMethod]] = {"ours": NormSquare, "hetal": Hetal}


@dataclass(frozen=True)
class TrainSpec:
    """Everything both sides must agree on; public (it travels in the setup message).

    Its defaults are the only ones: callers with data build it through
    :func:`privlearn.transfer.prepare.prepare`, which also scales the features."""

    classes: int
    features: int  # columns of X, the bias column included
    batch_size: int = 128
    lr: float = 4.0
    epochs: int = 10
    refresh: str = "client"
    nesterov: bool = True
    early_stopping: bool = True
    patience: int = 3
    softmax: str = "ours"
    logit_range: float = 32.0
    matmul: str = "ours"

    def __post_init__(self) -> None:
        if self.refresh not in REFRESH_MODES:
            raise ValueError(f"refresh must be one of {REFRESH_MODES}, got {self.refresh!r}")
        if self.softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {sorted(SOFTMAXES)}, got {self.softmax!r}")
        if self.matmul not in ("ours", "hetal"):
            raise ValueError(f"matmul must be 'ours' or 'hetal', got {self.matmul!r}")
        if self.classes < 2 or self.features < 2 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("need classes >= 2, features >= 2, batch_size >= 1, epochs >= 1")
        if not self.lr > 0 or not self.logit_range > 0 or self.patience < 1:
            raise ValueError("need lr > 0, logit_range > 0 and patience >= 1")

    @property
    def policy(self) -> Policy:
        return "bootstrap" if self.refresh == "bootstrap" else "refresh"

    def block(self, slots: int) -> BlockShape:
        return hetal_block_shape(self.batch_size, self.classes, slots)

    @property
    def weight_scale(self) -> float:
        """The factor W is stored with: the softmax's ``prescale``, at which its first
        operation is free, so X·(sW)ᵀ arrives as the input it wants."""
        return SOFTMAXES[self.softmax](self.classes, self.logit_range).prescale

    def softmax_method(self) -> SoftmaxMethod:
        return SOFTMAXES[self.softmax](
            self.classes, self.logit_range, input_scale=self.weight_scale
        )

    def abt_name(self) -> str:
        return f"diag_abt/{self.matmul}"

    def atb_name(self) -> str:
        return f"diag_atb/{self.matmul}"

    def costs(self, slots: int) -> tuple[Cost, Cost]:
        """Closed-form cost of one DiagABT and one DiagATB at this shape."""
        blk = self.block(slots)
        abt = get_algorithm(self.abt_name()).cost(
            Dims(self.batch_size, self.features, self.classes), blk
        )
        atb = get_algorithm(self.atb_name()).cost(
            Dims(self.batch_size, self.features, self.classes), blk
        )
        return abt, atb

    def keys(self, slots: int) -> tuple[frozenset[int], bool]:
        """Rotation keys and whether conjugation is needed, for the whole protocol."""
        abt, atb = self.costs(slots)
        rots = set(abt.rotation_keys | atb.rotation_keys)
        rots |= {k % slots for k in self.softmax_method().rotations()} - {0}
        return frozenset(rots), True  # conjugation: complexified products, paired gradients

    def data_level(self, slots: int, spare: int) -> int:
        """Level to encrypt features at: enough for both products, a level left in the
        gradient for the update, plus the spare a bootstrap needs on what they produce."""
        abt, atb = self.costs(slots)
        return max(abt.lag[0], atb.lag[1] + 1) + spare

    def to_meta(self) -> dict:
        return asdict(self)


def gamma_at(step: int, nesterov: bool) -> float:
    return nesterov_gamma(step) if nesterov else 0.0


class EncryptedTrainer:
    """Server-side state (encrypted weights, momentum, step count) and the training math."""

    def __init__(
        self,
        ev: Evaluator,
        spec: TrainSpec,
        weights: EncMatrix,
        refresh: Callable[[Sequence[Ciphertext], int], list[Ciphertext]] | None = None,
    ) -> None:
        self.ev, self.spec = ev, spec
        self.block = spec.block(ev.slots)
        self.softmax = spec.softmax_method()
        self.abt, self.atb = get_algorithm(spec.abt_name()), get_algorithm(spec.atb_name())
        self.abt_cost, self.atb_cost = spec.costs(ev.slots)
        self._refresh_many = refresh
        one = (lambda ct: refresh([ct], ev.params.depth)[0]) if refresh else None
        self.lm = LevelManager(ev, spec.policy, refresh=one)
        self.w = weights
        self.v_prev = weights
        self.step_count = 0

    @property
    def params(self) -> CKKSParams:
        return self.ev.params

    # -- level management for whole matrices ---------------------------------------------------
    def _ready(self, m: EncMatrix, need: int) -> EncMatrix:
        """``m`` with ``need`` levels to spend in every block. Client refreshes are batched in
        one message and encrypt at exactly ``need`` levels (smaller, faster ciphertexts than
        the top level); bootstraps go block by block."""
        spare = self.lm.spare
        low = [i for i, ct in enumerate(m.blocks) if ct.level < need + spare]
        if not low:
            return m
        blocks = list(m.blocks)
        if self.spec.refresh == "client":
            fresh = self._refresh_many([blocks[i] for i in low], need)
            self.lm.refreshes += len(low)
        else:
            fresh = [self.lm.ready(blocks[i], need) for i in low]
        for i, ct in zip(low, fresh, strict=True):
            blocks[i] = ct
        return EncMatrix(tuple(blocks), m.shape, m.block, m.layout)

    # -- the forward pass ------------------------------------------------------------------------
    def probabilities(self, x: EncMatrix) -> EncMatrix:
        """softmax(X·Wᵀ) for a PLAIN-packed batch, COL_TILED like the logits."""
        self.w = self._ready(self.w, self.abt_cost.lag[1])
        z = self.abt(self.ev, x, self.w)
        # the softmax is deep: a client refresh brings the logits to the top level at once;
        # a bootstrap needs its one spare level here and gives what it gives later
        z = self._ready(z, self.params.depth if self.spec.refresh == "client" else 1)
        p = tuple(self.softmax.evaluate(self.lm, ct) for ct in z.blocks)
        return EncMatrix(p, z.shape, z.block, z.layout)

    def logits(self, x: EncMatrix) -> EncMatrix:
        """X·Wᵀ / R (COL_TILED): what encrypted inference returns."""
        self.w = self._ready(self.w, self.abt_cost.lag[1])
        return self.abt(self.ev, x, self.w)

    # -- one step ----------------------------------------------------------------------------
    def step(self, x: EncMatrix, y: EncMatrix) -> None:
        ev = self.ev
        p = self.probabilities(x)
        d = EncMatrix(
            tuple(ev.sub(pi, yi) for pi, yi in zip(p.blocks, y.blocks, strict=True)),
            p.shape,
            p.block,
            p.layout,
        )
        d = self._ready(d, self.atb_cost.lag[0] + 1)  # G keeps one level for the update
        g = self.atb(ev, d, x)
        self._update(g)
        self.step_count += 1

    def _gradient_terms(self, g: EncMatrix) -> list[tuple[Ciphertext, complex]]:
        """(ciphertext, coefficient) per block column of W with G_j = coefficient · ct.
        A ROW_TILED_PAIRED gradient holds G_2p + i·G_2p+1: the conjugate separates them and
        the 1/2 and 1/(2i) go into the update's scalars."""
        if g.layout is Layout.ROW_TILED:
            return [(ct, 1.0) for ct in g.blocks]
        if g.layout is not Layout.ROW_TILED_PAIRED:
            raise ValueError(f"unexpected gradient layout {g.layout}")
        ncols = self.w.grid[1]
        terms: list[tuple[Ciphertext, complex]] = []
        for ct in g.blocks[: ncols // 2]:
            cj = self.ev.conjugate(ct)
            terms += [(self.ev.add(ct, cj), 0.5), (self.ev.sub(ct, cj), -0.5j)]
        if ncols % 2:
            terms.append((g.blocks[-1], 1.0))
        return terms

    def _update(self, g: EncMatrix) -> None:
        ev, spec = self.ev, self.spec
        eta = spec.lr * spec.weight_scale / spec.batch_size
        gamma = gamma_at(self.step_count, spec.nesterov)
        terms = self._gradient_terms(g)
        w = self._ready(self.w, 1)
        v_prev = self._ready(self.v_prev, 1)
        new_w, new_v = [], []
        for j, (gct, coef) in enumerate(terms):
            wj, vj = w.blocks[j], v_prev.blocks[j]
            # V = W − η·G (one level of G) and W' = (1−γ)·W − (1−γ)·η·G + γ·V_prev (one
            # level: the three products are summed before their single rescale)
            v = ev.add(wj, ev.mul(gct, -eta * coef))
            if gamma == 0:
                w_next = v
            else:
                level = min(wj.level, vj.level, gct.level)
                wj, vj, gl = (ev.level_down(c, level) for c in (wj, vj, gct))
                acc = ev.add(
                    ev.mul(wj, 1.0 - gamma, rescale=False),
                    ev.mul(gl, -(1.0 - gamma) * eta * coef, rescale=False),
                )
                w_next = ev.rescale(ev.add(acc, ev.mul(vj, gamma, rescale=False)))
            new_w.append(w_next)
            new_v.append(v)
        self.w = EncMatrix(tuple(new_w), w.shape, w.block, w.layout)
        self.v_prev = EncMatrix(tuple(new_v), w.shape, w.block, w.layout)

    # -- validation ------------------------------------------------------------------------------
    def validate(
        self,
        batches: Iterable[tuple[EncMatrix, EncMatrix]],
    ) -> tuple[list[Ciphertext], list[EncMatrix]]:
        """Under encryption: Σ over batches of (P − Y)² (one ciphertext per block row), and
        each batch's probabilities P (for the client's accuracy curve)."""
        total: list[Ciphertext] | None = None
        probs = []
        for x, y in batches:
            p = self.probabilities(x)
            sq = [
                self.lm.square(self.ev.sub(pi, yi))
                for pi, yi in zip(p.blocks, y.blocks, strict=True)
            ]
            total = (
                sq if total is None else [self.ev.add(a, b) for a, b in zip(total, sq, strict=True)]
            )
            probs.append(p)
        if total is None:
            raise ValueError("no validation batches")
        return total, probs


def brier_from_squared_errors(
    sums: Sequence[np.ndarray], n: int, block: BlockShape, classes: int
) -> float:
    """The client's side: mean over ``n`` samples of Σ_c (p_c − y_c)² from decrypted sums.
    COL_TILED rows repeat their c' values s1/c' times; padded classes and padded rows (whose
    label the client set to the uniform distribution) contribute ~0."""
    from privlearn.linalg.packing import padded_classes

    copies = block.s1 // padded_classes(classes)
    return float(np.sum([np.real(s).sum() for s in sums]) / copies / n)
