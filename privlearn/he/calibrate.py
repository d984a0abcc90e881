"""Measure OpenFHE's noise per operation, for the noise model (:mod:`privlearn.he.noise`).

    python -m privlearn.he.calibrate [PRESET ...]

For each preset: encrypt random complex slots in [-1, 1], then measure the error each step adds
beyond what the exact arithmetic propagates: fresh encryption, a product's rescale (with its
relinearisation), a rotation's key switch, and a bootstrap. Writes the standard deviations (per
real and imaginary part) into ``privlearn/he/noise_calibration.json``. Bootstrappable presets at
N=2^16 need ~10 GB of memory and a few minutes.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from privlearn.he import ClientContext, Evaluator, get_params
from privlearn.he.noise import CALIBRATION_FILE

OUT = Path(__file__).with_name(CALIBRATION_FILE)


def _std(err: np.ndarray) -> float:
    return float(np.sqrt((np.var(err.real) + np.var(err.imag)) / 2))


def measure(preset: str) -> dict:
    params = get_params(preset, insecure_for_testing=True)
    client = ClientContext.create(params, "openfhe", insecure_for_testing=True)
    with tempfile.TemporaryDirectory() as tmp:  # bootstrapping keys go through disk
        bundle = client.public_bundle([1], bootstrap=params.bootstrappable, path=tmp)
        ev = Evaluator.from_bundle(bundle, insecure_for_testing=True)
    rng = np.random.default_rng(0)
    n = params.slots

    def rand():
        return rng.uniform(-1, 1, n) + 1j * rng.uniform(-1, 1, n)

    x, y = rand(), rand()
    cx, cy = client.encrypt(x), client.encrypt(y)
    ex, ey = client.decrypt(cx) - x, client.decrypt(cy) - y
    prod = client.decrypt(ev.mul(cx, cy)) - x * y
    rot = client.decrypt(ev.rotate(cx, 1)) - np.roll(x, -1)
    sigma = {
        "fresh": _std(ex),
        "rescale": _std(prod - (x * ey + y * ex + ex * ey)),
        "keyswitch": _std(rot - np.roll(ex, -1)),
        "bootstrap": 0.0,
    }
    if params.bootstrappable:
        z = 0.5 * rand()
        cz = ev.level_down(client.encrypt(z), 1)
        sigma["bootstrap"] = _std(client.decrypt(ev.bootstrap(cz)) - z)
    return {
        "fingerprint": params.fingerprint(),
        "sigma": sigma,
        "precision_bits": {k: round(-float(np.log2(v)), 1) for k, v in sigma.items() if v},
        "measured_on": f"OpenFHE, {platform.machine()}, {date.today().isoformat()}",
    }


def main(presets: list[str]) -> None:
    table = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in presets:
        print(f"calibrating {name} ...", flush=True)
        table[name] = measure(name)
        print(json.dumps(table[name], indent=1), flush=True)
        OUT.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["toy-n12", "toy-n12-boot", "n16-d24", "n16-d28", "n16-boot"])
