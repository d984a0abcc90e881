"""Compressed uploads: each client's model delta is encoded to bytes, the server decodes them.

Methods (`METHODS`), each a client-side encoder paired with a server-side decoder:
- ``topk``: the k = round(ratio P) largest magnitudes, as indices (at the narrowest unsigned
  width that holds P - 1) and float32 values. Biased (contractive), never rescaled.
- ``randk``: k coordinates drawn from a seed the payload carries instead of the indices,
  float32 values. Rescaled by P/k, so unbiased, when there is no error feedback; not rescaled
  (contractive, as EF and EF21 need) under error feedback.
- ``qsgd`` (Alistarh et al. 2017): s levels, stochastic rounding, unbiased; a float32 norm and
  per coordinate a sign bit and a level index in 0..s, bit-packed at a fixed width.
- ``dadaquant`` (Hönig et al. 2022): qsgd's payload with time- and client-adaptive levels.
  The server doubles q when the training loss stops falling (its moving average made no new
  low, by a relative `MARGIN`, for `PATIENCE` rounds); client i of the cohort gets
  q_i = q p_i^(2/3) sqrt(sum p^(2/3) / sum p^2) (p: cohort weight shares), which keeps the
  aggregate's variance bound sum p_i^2 / q_i^2 at fixed q's while minimising sum q_i.

Error feedback (`FEEDBACK`, top-k and rand-k only; the quantisers are unbiased already):
- ``ef`` (Seide et al. 2014, Stich et al. 2018): e_i keeps what compression dropped; the
  client sends C(delta_i + e_i) and keeps e_i <- delta_i + e_i - sent.
- ``ef21`` (Richtárik et al. 2021): client and server both keep g_i; the client sends
  c_i = C(delta_i - g_i), both set g_i <- g_i + c_i, and the server aggregates the g_i.
- ``ef21-sgdm`` (Fatkhullin et al. 2023): v_i <- (1 - eta) v_i + eta delta_i first, then
  EF21 on v_i.

Every encoder works on the cohort's [K, P] update matrix at once (one topk, one quantisation);
a payload is a numpy structured record, so its size is exactly its `len()` in bytes and the
server decodes a whole cohort from the bytes alone (`decode`). Random draws (rand-k's indices,
QSGD's rounding) come from (seed, round, client) alone (`client_seeds`), so a deployed client
sends what the simulation sends for it. The error-feedback memory is a
[N, P] bank per kind (`Compressor.init`), held as one copy in a simulation: under EF21 the
server's g_i equals the client's by construction. A deployment (privlearn.fl.flower) keeps both
copies: each client its own one-row memory (`upload` with `slots`), the server its g bank
(`server_init`, `receive`). A client whose upload the server rejects keeps its old memory, as
it keeps its old algorithm state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from privlearn.fl import tree as T
from privlearn.fl.algorithms.base import ClientUpdate

METHODS = ("topk", "randk", "qsgd", "dadaquant")
FEEDBACK = ("ef", "ef21", "ef21-sgdm")
SPARSIFIERS = ("topk", "randk")
QUANTISERS = ("qsgd", "dadaquant")
DEFAULT_RATIO = 0.1
DEFAULT_LEVELS = {"qsgd": 8, "dadaquant": 1}
DEFAULT_MOMENTUM = 0.1
# DAdaQuant's time schedule (our choice of constants; the paper tunes them per task)
EMA, PATIENCE, MARGIN, MAX_LEVELS = 0.9, 3, 0.01, 2**16

# payload tags: the first byte of every payload
TOPK, RANDK, RANDK_SCALED, QSGD = 1, 2, 3, 4
MEMORY = {None: (), "ef": ("e",), "ef21": ("g",), "ef21-sgdm": ("v", "g")}


def index_dtype(n_params: int) -> np.dtype:
    """The narrowest unsigned integer that holds every index 0..P-1."""
    for dt in ("u1", "<u2", "<u4"):
        if n_params - 1 <= np.iinfo(np.dtype(dt)).max:
            return np.dtype(dt)
    return np.dtype("<u8")


def level_bits(levels: int) -> int:
    """Bits of one coordinate: the level index 0..levels, then a sign bit."""
    return max(1, math.ceil(math.log2(levels + 1))) + 1


def _record(tag: int, n_params: int, k: int = 0, bits: int = 0) -> np.dtype:
    """The wire layout of one payload (packed, little-endian)."""
    head = [("tag", "u1")]
    if tag == TOPK:
        return np.dtype(
            head + [("k", "<u4"), ("idx", index_dtype(n_params), (k,)), ("val", "<f4", (k,))]
        )
    if tag in (RANDK, RANDK_SCALED):
        return np.dtype(head + [("k", "<u4"), ("seed", "<u8"), ("val", "<f4", (k,))])
    if tag == QSGD:
        n = math.ceil(n_params * bits / 8)
        return np.dtype(head + [("levels", "<u4"), ("norm", "<f4"), ("bits", "u1", (n,))])
    raise ValueError(f"unknown payload tag {tag}")


def _split(records: np.ndarray) -> list[bytes]:
    buf, n = records.tobytes(), records.dtype.itemsize
    return [buf[i * n : (i + 1) * n] for i in range(len(records))]


# --- sparsifiers -----------------------------------------------------------------------------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64, element-wise on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hashes(seeds: np.ndarray, n: int) -> np.ndarray:
    """[K, n] pseudo-random uint64s, row k a function of seeds[k] alone."""
    return _mix(_mix(seeds.astype(np.uint64))[:, None] + np.arange(n, dtype=np.uint64))


def client_seeds(seed: int, round_idx: int, stream: int, clients: torch.Tensor) -> np.ndarray:
    """One seed per client for (run seed, round, stream): what a client draws from, the same
    in a simulated cohort and a deployed client alone."""
    base = np.random.default_rng([seed, round_idx, stream]).integers(2**63, dtype=np.uint64)
    return _mix(base + clients.cpu().numpy().astype(np.uint64))


def seed_indices(seeds: np.ndarray, n_params: int, k: int) -> np.ndarray:
    """The k sorted coordinates seed s selects (the k smallest hashes of (s, j)): what a
    rand-k client and the server both derive from the seed, so only the seed travels."""
    keys = _hashes(seeds, n_params)
    return np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)


def encode_topk(rows: torch.Tensor, k: int) -> list[bytes]:
    """Top-k of each row of [K, P]: its k largest magnitudes."""
    idx = rows.abs().topk(k, dim=1).indices.sort(dim=1).values
    rec = np.zeros(rows.shape[0], _record(TOPK, rows.shape[1], k))
    rec["tag"], rec["k"] = TOPK, k
    rec["idx"] = idx.cpu().numpy()
    rec["val"] = rows.gather(1, idx).float().cpu().numpy()
    return _split(rec)


def encode_randk(rows: torch.Tensor, k: int, seeds: np.ndarray, scaled: bool) -> list[bytes]:
    """Rand-k of each row of [K, P] with that row's seed; `scaled`: times P/k (unbiased)."""
    tag = RANDK_SCALED if scaled else RANDK
    idx = torch.from_numpy(seed_indices(seeds, rows.shape[1], k)).to(rows.device)
    rec = np.zeros(rows.shape[0], _record(tag, rows.shape[1], k))
    rec["tag"], rec["k"], rec["seed"] = tag, k, seeds
    rec["val"] = rows.gather(1, idx).float().cpu().numpy()
    return _split(rec)


# --- quantisers ------------------------------------------------------------------------------


def encode_qsgd(rows: torch.Tensor, levels: np.ndarray, seeds: np.ndarray) -> list[bytes]:
    """QSGD of each row of [K, P] at that row's level count (levels: [K] ints >= 1): level
    index floor(s |u_j| / ||u|| + U[0, 1)), so E[decoded] = u, U drawn from the row's seed
    (24-bit uniforms). Rows with equal bit widths are packed together."""
    x = rows.float().cpu()
    norm = x.norm(dim=1)
    s = torch.as_tensor(levels, dtype=torch.float32)
    scaled = x.abs() / norm.clamp_min(torch.finfo(torch.float32).tiny)[:, None] * s[:, None]
    dither = torch.from_numpy((_hashes(seeds, x.shape[1]) >> np.uint64(40)).astype(np.float32))
    dither = dither * 2.0**-24
    lvl = torch.minimum(torch.floor(scaled + dither), s[:, None]).to(torch.int64)
    codes = (lvl * 2 + (x < 0)).numpy().astype(np.uint32)
    out: list[bytes | None] = [None] * len(levels)
    widths = np.array([level_bits(int(q)) for q in levels])
    for w in np.unique(widths):
        rows_w = np.flatnonzero(widths == w)
        rec = np.zeros(len(rows_w), _record(QSGD, x.shape[1], bits=int(w)))
        rec["tag"], rec["levels"], rec["norm"] = QSGD, levels[rows_w], norm[rows_w].numpy()
        bits = np.empty((len(rows_w), x.shape[1], w), np.uint8)
        for b in range(w):  # bit b of every code (a loop over bits, not clients)
            bits[:, :, b] = (codes[rows_w] >> b) & 1
        rec["bits"] = np.packbits(bits.reshape(len(rows_w), -1), axis=1, bitorder="little")
        for i, p in zip(rows_w, _split(rec), strict=True):
            out[i] = p
    return out


def client_levels(q: int, weights: torch.Tensor) -> np.ndarray:
    """DAdaQuant's client-adaptive levels: q_i = q p_i^(2/3) sqrt(sum p^(2/3) / sum p^2),
    rounded, at least 1 (p: the cohort's weight shares; equal weights give q to everyone)."""
    p = weights.double().cpu().numpy()
    p = p / p.sum()
    c = math.sqrt((p ** (2 / 3)).sum() / (p**2).sum())
    return np.clip(np.rint(q * c * p ** (2 / 3)), 1, MAX_LEVELS).astype(np.int64)


# --- decoding (server side) ------------------------------------------------------------------


def decode(payloads: list[bytes], n_params: int) -> torch.Tensor:
    """The [K, P] float32 rows that `payloads` encode, from their bytes alone (and P): one
    vectorised decode per group of payloads with the same layout."""
    out = torch.zeros(len(payloads), n_params, dtype=torch.float32)
    groups: dict[tuple[int, int, bytes], list[int]] = {}
    for i, p in enumerate(payloads):
        if len(p) < 5:
            raise ValueError(f"payload {i} has {len(p)} bytes, shorter than any header")
        groups.setdefault((p[0], len(p), p[1:5]), []).append(i)  # tag, size, k or levels
    for (tag, size, head), members in groups.items():
        blob = b"".join(payloads[i] for i in members)
        rows = torch.as_tensor(members)
        count = int(np.frombuffer(head, "<u4")[0])
        if tag in (TOPK, RANDK, RANDK_SCALED):
            k = count
            if not 1 <= k <= n_params:
                raise ValueError(f"payload {members[0]} claims k = {k} of {n_params} values")
            rec = _parse(blob, _record(tag, n_params, k), size)
            val = torch.from_numpy(rec["val"].copy())
            idx = rec["idx"] if tag == TOPK else seed_indices(rec["seed"], n_params, k)
            if idx.max() >= n_params:
                raise ValueError(f"payload {members[0]} names an index beyond {n_params} values")
            if tag == RANDK_SCALED:
                val = val * (n_params / k)
            out[rows[:, None], torch.from_numpy(idx.astype(np.int64))] = val
        elif tag == QSGD:
            if count < 1:
                raise ValueError(f"payload {members[0]} has 0 quantisation levels")
            w = _width_of(size, n_params, count)
            rec = _parse(blob, _record(QSGD, n_params, bits=w), size)
            bits = np.unpackbits(rec["bits"], axis=1, count=n_params * w, bitorder="little")
            bits = bits.reshape(len(members), n_params, w)
            codes = np.zeros((len(members), n_params), np.int64)
            for b in range(w):
                codes |= bits[:, :, b].astype(np.int64) << b
            sign = 1.0 - 2.0 * torch.from_numpy(codes & 1).float()
            step = torch.from_numpy(rec["norm"] / rec["levels"].astype(np.float32))[:, None]
            out[rows] = step * torch.from_numpy(codes >> 1).float() * sign
        else:
            raise ValueError(f"payload {members[0]} has unknown tag {tag}")
    return out


def _width_of(size: int, n_params: int, levels: int) -> int:
    """A qsgd group's bit width, checked against its payload size."""
    w = level_bits(levels)
    if _record(QSGD, n_params, bits=w).itemsize != size:
        raise ValueError(
            f"a {size}-byte qsgd payload does not hold {n_params} values at {levels} levels"
        )
    return w


def _parse(blob: bytes, dtype: np.dtype, size: int) -> np.ndarray:
    if dtype.itemsize != size:
        raise ValueError(f"a {size}-byte payload where its header implies {dtype.itemsize} bytes")
    return np.frombuffer(blob, dtype)


# --- the per-round client and server logic ---------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One cohort's compressed round: what the server aggregates (`rows`, [K, P]), each client's
    payload, and the memory rows the clients keep if the server accepts their update."""

    rows: torch.Tensor
    payloads: list[bytes]
    memory: dict[str, torch.Tensor]
    levels: np.ndarray | None = None  # per client (quantisers)

    @property
    def n_bytes(self) -> int:
        return sum(len(p) for p in self.payloads)

    def report(self, n_params: int, value_bytes: int) -> dict:
        """The round's upload entry: payload bytes against the raw deltas' (and the levels)."""
        k = len(self.payloads)
        out = {"bytes": self.n_bytes, "uncompressed_bytes": k * n_params * value_bytes}
        out["clients"] = k
        if self.levels is not None and k:
            out["levels"] = [int(self.levels.min()), int(self.levels.max())]
        return out


@dataclass(frozen=True)
class Compressor:
    """A run's compression: `method` with its `ratio` (sparsifiers) or `levels` (quantisers),
    optional error `feedback` with `momentum` (EF21-SGDM's eta), random draws from `seed`."""

    method: str
    ratio: float | None = None
    levels: int | None = None
    feedback: str | None = None
    momentum: float | None = None
    seed: int = 0

    def __post_init__(self):
        problem = compression_problem(
            self.method, self.ratio, self.levels, self.feedback, self.momentum
        )
        if problem:
            raise ValueError(problem)

    @property
    def k_ratio(self) -> float:
        return DEFAULT_RATIO if self.ratio is None else self.ratio

    @property
    def start_levels(self) -> int:
        return DEFAULT_LEVELS.get(self.method, 0) if self.levels is None else self.levels

    @property
    def eta(self) -> float:
        return DEFAULT_MOMENTUM if self.momentum is None else self.momentum

    def k(self, n_params: int) -> int:
        return min(n_params, max(1, round(self.k_ratio * n_params)))

    def init(self, n_clients: int, n_params: int, dtype: torch.dtype, device="cpu") -> dict:
        """The compressor's state: the error-feedback memory ([N, P] per kind) and DAdaQuant's
        schedule (its level count, the loss's moving average, its low and rounds since)."""
        state = {
            m: torch.zeros(n_clients, n_params, dtype=dtype, device=device)
            for m in MEMORY[self.feedback]
        }
        if self.method == "dadaquant":
            state["schedule"] = {
                "q": torch.tensor(self.start_levels, dtype=torch.int64),
                "seen": torch.tensor(0, dtype=torch.int64),
                "ema": torch.tensor(0.0, dtype=torch.float64),
                "low": torch.tensor(0.0, dtype=torch.float64),
                "since": torch.tensor(0, dtype=torch.int64),
            }
        return state

    def upload(
        self,
        state: dict,
        rows: torch.Tensor,
        clients: torch.Tensor,
        weights: torch.Tensor,
        round_idx: int,
        levels: np.ndarray | None = None,
        slots: torch.Tensor | None = None,
    ) -> Upload:
        """Encode the clients' true updates `rows` ([K, P]) as they would, decode them as the
        server would, and return what the server aggregates. DAdaQuant's per-client `levels`
        default to `client_levels` of the cohort's `weights`; a deployed client, which does
        not see the cohort, takes the level the server sent it. `slots`: the rows of `state`
        that hold these clients' memory (default `clients`; a deployed client keeps a
        one-row state and passes slot 0)."""
        slots = clients if slots is None else slots
        mem = {
            m: state[m][slots.to(state[m].device)].to(rows.device) for m in MEMORY[self.feedback]
        }
        if self.feedback == "ef":
            target = rows + mem["e"]
        elif self.feedback == "ef21":
            target = rows - mem["g"]
        elif self.feedback == "ef21-sgdm":
            v = (1 - self.eta) * mem["v"] + self.eta * rows
            target = v - mem["g"]
        else:
            target = rows
        if levels is not None and self.method != "dadaquant":
            raise ValueError(f"per-client levels are DAdaQuant's; {self.method} takes none")
        if self.method == "topk":
            payloads = encode_topk(target, self.k(rows.shape[1]))
        elif self.method == "randk":
            seeds = client_seeds(self.seed, round_idx, 4, clients)
            payloads = encode_randk(
                target, self.k(rows.shape[1]), seeds, scaled=self.feedback is None
            )
        else:
            if self.method == "qsgd":
                levels = np.full(len(rows), self.start_levels, dtype=np.int64)
            elif levels is None:
                levels = client_levels(int(state["schedule"]["q"]), weights)
            payloads = encode_qsgd(target, levels, client_seeds(self.seed, round_idx, 3, clients))
        sent = decode(payloads, rows.shape[1]).to(device=rows.device, dtype=rows.dtype)
        if self.feedback == "ef":
            return Upload(sent, payloads, {"e": target - sent}, levels)
        if self.feedback is None:
            return Upload(sent, payloads, {}, levels)
        g_new = mem["g"] + sent
        memory = {"g": g_new} if self.feedback == "ef21" else {"v": v, "g": g_new}
        return Upload(g_new, payloads, memory, levels)

    def payload_size(self, n_params: int) -> int | None:
        """The bytes of every payload this compressor sends for P = n_params (None for
        DAdaQuant, whose levels vary by client and round)."""
        if self.method in SPARSIFIERS:
            return _record(
                TOPK if self.method == "topk" else RANDK, n_params, self.k(n_params)
            ).itemsize
        if self.method == "qsgd":
            return _record(QSGD, n_params, bits=level_bits(self.start_levels)).itemsize
        return None

    def server_init(self, n_clients: int, n_params: int, dtype: torch.dtype) -> dict:
        """What a server that sees only payloads keeps: EF21's g_i bank ([N, P]), else nothing."""
        if self.feedback not in ("ef21", "ef21-sgdm"):
            return {}
        return {"g": torch.zeros(n_clients, n_params, dtype=dtype)}

    def receive(
        self, state: dict, payloads: list[bytes], sent: torch.Tensor, slots: torch.Tensor
    ) -> Upload:
        """The server's half of `upload`, from the clients' `payloads` and their decoded rows
        `sent` (`decode`): what it aggregates (under EF21, g_i + c_i from its bank `state`,
        `server_init`) and the g rows it keeps if it accepts those updates (`keep`)."""
        levels = None
        if self.method in QUANTISERS:  # the level count each payload's header names
            levels = np.array([int(np.frombuffer(p[1:5], "<u4")[0]) for p in payloads])
        if "g" not in state:
            return Upload(sent, payloads, {}, levels)
        g_new = state["g"][slots] + sent.to(state["g"])
        return Upload(g_new, payloads, {"g": g_new}, levels)

    def keep(self, state: dict, slots: torch.Tensor, upload: Upload, kept: torch.Tensor) -> None:
        """Write the memory of the clients whose update the server accepted (rows `kept` of
        the upload) into their `slots` of `state`, in place."""
        for m, rows in upload.memory.items():
            state[m][slots[kept].to(state[m].device)] = rows[kept].to(state[m])

    def observe(self, state: dict, train_loss: float) -> None:
        """DAdaQuant's time-adaptive step after a round: double q once the moving average of
        the training loss has made no new low (by MARGIN relative) for PATIENCE rounds."""
        if self.method != "dadaquant":
            return
        s = state["schedule"]
        ema = train_loss if int(s["seen"]) == 0 else EMA * float(s["ema"]) + (1 - EMA) * train_loss
        s["seen"] += 1
        s["ema"].fill_(ema)
        if int(s["seen"]) == 1 or ema < (1 - MARGIN) * float(s["low"]):
            s["low"].fill_(ema)
            s["since"].zero_()
            return
        s["since"] += 1
        if int(s["since"]) >= PATIENCE:
            s["q"].fill_(min(2 * int(s["q"]), MAX_LEVELS))
            s["since"].zero_()
            s["low"].fill_(ema)


def compression_problem(
    method: str | None,
    ratio: float | None,
    levels: int | None,
    feedback: str | None,
    momentum: float | None,
) -> str | None:
    """Why these compression settings do not go together (naming config keys), or None."""
    settings = {
        "compress_ratio": ratio,
        "compress_levels": levels,
        "error_feedback": feedback,
        "ef_momentum": momentum,
    }
    if method is None:
        given = [k for k, v in settings.items() if v is not None]
        if given:
            return f"config keys {', '.join(given)} set compression: give them with --compress"
        return None
    checks = (
        ("compress", method, method in METHODS, f"must be one of {', '.join(METHODS)}"),
        ("compress_ratio", ratio, ratio is None or 0 < ratio <= 1, "must be in (0, 1]"),
        (
            "compress_levels",
            levels,
            levels is None or 1 <= levels <= MAX_LEVELS,
            f"must be in 1..{MAX_LEVELS}",
        ),
        (
            "error_feedback",
            feedback,
            feedback is None or feedback in FEEDBACK,
            f"must be one of {', '.join(FEEDBACK)}",
        ),
        ("ef_momentum", momentum, momentum is None or 0 < momentum <= 1, "must be in (0, 1]"),
    )
    for key, value, ok, accepted in checks:
        if not ok:
            return f"config key {key}: {accepted}, got {value!r}"
    if ratio is not None and method not in SPARSIFIERS:
        return (
            f"config key compress_ratio: sets top-k and rand-k's share of coordinates; "
            f"{method} takes --compress-levels"
        )
    if levels is not None and method not in QUANTISERS:
        return (
            f"config key compress_levels: sets qsgd and dadaquant's levels; "
            f"{method} takes --compress-ratio"
        )
    if feedback is not None and method not in SPARSIFIERS:
        return (
            f"config key error_feedback: {method} is unbiased and needs none; error feedback "
            "corrects the biased sparsifiers (topk, randk)"
        )
    if momentum is not None and feedback != "ef21-sgdm":
        return "config key ef_momentum: EF21-SGDM's eta; give it with --error-feedback ef21-sgdm"
    return None


@dataclass(frozen=True)
class Pending:
    """A compressed round awaiting the server's verdict: the cohort rows that sent (`sent`),
    their upload, and the metrics entry's `upload` report."""

    sent: torch.Tensor
    upload: Upload
    report: dict


# --- in a run --------------------------------------------------------------------------------


def delta_rows(u: ClientUpdate, n_params: int) -> torch.Tensor:
    """A cohort's deltas as the [K, P] matrix compression encodes; an error when the algorithm
    uploads more than the delta or less than the whole model's."""
    if u.extras or u.buffers:
        what = ", ".join([*u.extras, *(["batch-norm statistics"] if u.buffers else [])])
        raise ValueError(
            f"compression encodes the model delta only, and this algorithm also uploads "
            f"{what}: use fedavg, fedprox or the fedopt family, without batch norm"
        )
    flat = T.flat_rows(u.delta) if u.delta else None
    if flat is None or flat.shape[1] != n_params:
        got = 0 if flat is None else flat.shape[1]
        raise ValueError(
            f"compression encodes the whole model's delta ({n_params} values) and "
            f"this algorithm uploads {got}: use fedavg, fedprox or the fedopt family"
        )
    return flat


@dataclass
class Compression:
    """A run's compressor and its state (checkpointed with the run). `round` compresses a
    cohort's uploads after the engine; `commit` keeps the memory of the clients the server
    accepted, once it has screened and applied their updates."""

    compressor: Compressor
    n_clients: int
    n_params: int  # the model's: what every client's delta must hold
    dtype: torch.dtype
    device: str = "cpu"
    state: dict = dataclasses.field(init=False)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        """A fresh state: empty memories, DAdaQuant back at its starting levels."""
        self.state = self.compressor.init(self.n_clients, self.n_params, self.dtype, self.device)

    def round(
        self, u: ClientUpdate, clients: torch.Tensor, withheld: list[int], round_idx: int
    ) -> tuple[ClientUpdate, Pending]:
        """`u` with each sending client's delta replaced by what the server decodes from its
        payload. Rows in `withheld` (rejected by the engine) and rows that are not finite are
        not sent: they keep their delta, for screening to reject."""
        flat = delta_rows(u, self.n_params)
        ok = torch.isfinite(flat).all(dim=1)
        ok[list(withheld)] = False
        sent = torch.nonzero(ok).flatten()
        up = self.compressor.upload(
            self.state, flat[sent], clients[sent], u.weight[sent], round_idx
        )
        flat = flat.clone()
        flat[sent] = up.rows
        report = up.report(flat.shape[1], flat.element_size())
        return dataclasses.replace(u, delta=T.unflat(flat, u.delta)), Pending(sent, up, report)

    def commit(
        self, pending: Pending, clients: torch.Tensor, keep: torch.Tensor, loss: float
    ) -> None:
        """After a round the server applied: the accepted senders keep their new memory
        (`keep`: [K] bool over the cohort), and DAdaQuant's schedule sees the round's loss."""
        kept = torch.nonzero(keep[pending.sent]).flatten()
        self.compressor.keep(self.state, clients[pending.sent], pending.upload, kept)
        self.compressor.observe(self.state, loss)
