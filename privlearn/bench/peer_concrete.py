"""Concrete ML's encrypted training of a logistic regression, for `privlearn bench transfer`.

Runs in Concrete ML's own virtual environment (``make peer-concrete``), never imported by
privlearn: ``python peer_concrete.py DATA.npz MAX_ITER`` prints one JSON line.
"""

import json
import sys
import time

import numpy as np
from sklearn.preprocessing import MinMaxScaler


def main(path: str, max_iter: int) -> None:
    # Imported here, so that the API reference (pdoc) can import this module without Concrete.
    from concrete.ml.sklearn import SGDClassifier

    d = np.load(path)
    scaler = MinMaxScaler(feature_range=(-1, 1)).fit(d["x"])  # Concrete ML's documented range
    x, xt = scaler.transform(d["x"]), np.clip(scaler.transform(d["xt"]), -1, 1)
    out = {
        "peer": "concrete-ml",
        "model": "SGDClassifier(fit_encrypted=True)",
        "train": int(len(x)),
        "test": int(len(xt)),
        "max_iter": max_iter,
    }
    for mode in ("disable", "execute"):  # same model in the clear, then under TFHE
        model = SGDClassifier(
            random_state=0, max_iter=max_iter, fit_encrypted=True, parameters_range=(-1.0, 1.0)
        )
        t = time.perf_counter()
        model.fit(x, d["y"], fhe=mode)
        out[f"fit_{mode}_s"] = time.perf_counter() - t
        out[f"accuracy_{mode}"] = float(np.mean(model.predict(xt) == d["yt"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
