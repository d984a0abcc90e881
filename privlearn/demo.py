"""`make demo`: encrypted linear scores on real data, client and server roles kept apart.

The client holds scikit-learn's digits (1797 images, 64 pixels) and the secret key; it
encrypts the data column by column (one ciphertext per pixel, one slot per image). The
server, built from the public bundle only, computes the scores S = X·Wᵀ + b for a given
weight matrix (a logistic regression fitted in the clear on public data stands in for a
trained model) as weighted sums of ciphertexts: one level, no rotation keys. The client
decrypts and compares with numpy.
"""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console

from privlearn.he import ClientContext, Evaluator, get_params


def run_linear_scores_demo(
    backend: str = "openfhe", preset: str = "n16-d24", console: Console | None = None
) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    console = console or Console()
    params = get_params(preset)  # demos refuse insecure presets: no opt-out here
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    model = LogisticRegression(max_iter=2000).fit(x[::2], y[::2])  # the "given" weights
    w, b = model.coef_, model.intercept_
    if x.shape[0] > params.slots:
        raise ValueError(f"{x.shape[0]} samples do not fit the {params.slots} slots of {preset}")

    timings = {}
    t0 = time.perf_counter()
    client = ClientContext.create(params, backend)
    bundle = client.public_bundle()  # the server needs no rotation keys for this packing
    timings["keygen_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    columns = [client.serialize(client.encrypt(x[:, j], level=1)) for j in range(x.shape[1])]
    timings["encrypt_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    server = Evaluator.from_bundle(bundle)  # public bytes only: no secret key, no decrypt
    cts = [server.deserialize(c) for c in columns]
    scores = []
    for c in range(w.shape[0]):
        acc = None
        for j, ct in enumerate(cts):
            if w[c, j] == 0:
                continue
            term = server.mul(ct, float(w[c, j]), rescale=False)
            acc = term if acc is None else server.add(acc, term)
        scores.append(server.serialize(server.add(server.rescale(acc), float(b[c]))))
    timings["server_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc = np.stack([client.decrypt(client.deserialize(s))[: x.shape[0]] for s in scores], 1)
    timings["decrypt_s"] = time.perf_counter() - t0

    plain = x @ w.T + b
    result = {
        "backend": backend,
        "real_encryption": client.is_real_encryption,
        "preset": preset,
        "security": "128-bit (HE standard, classic)" if params.secure else "INSECURE",
        "samples": int(x.shape[0]),
        "max_abs_error": float(np.max(np.abs(enc - plain))),
        "same_predictions": float(np.mean(enc.argmax(1) == plain.argmax(1))),
        "accuracy_encrypted": float(np.mean(enc.argmax(1) == y)),
        "accuracy_plaintext": float(np.mean(plain.argmax(1) == y)),
        "server_ops": server.cost.total.as_dict(),
        **{k: round(v, 3) for k, v in timings.items()},
    }
    console.print(
        f"[bold]privlearn demo[/]: encrypted linear scores on digits "
        f"({result['samples']} images x 64 pixels, 10 classes)"
    )
    console.print(
        f"  backend {backend}"
        + ("" if client.is_real_encryption else " [red](SIMULATOR: NOT ENCRYPTION)[/]")
        + f", preset {preset} (N=2^{params.ring_dim.bit_length() - 1}, "
        f"{result['security']})"
    )
    console.print(
        "  secret key: held by the client object only; the server was built from "
        f"{len(bundle) / 1e6:.1f} MB of public bundle bytes"
    )
    console.print(
        f"  keygen {timings['keygen_s']:.1f} s | encrypt 64 columns "
        f"{timings['encrypt_s']:.1f} s | server scores {timings['server_s']:.1f} s | "
        f"decrypt {timings['decrypt_s']:.1f} s"
    )
    console.print(
        f"  max |encrypted - numpy| = {result['max_abs_error']:.2e}; same argmax on "
        f"{100 * result['same_predictions']:.1f} % of images; accuracy "
        f"{100 * result['accuracy_encrypted']:.2f} % encrypted vs "
        f"{100 * result['accuracy_plaintext']:.2f} % plaintext"
    )
    return result
