"""The error each CKKS operation adds, as measured on a real backend.

The simulator adds noise of these sizes, and the client's noise flooding
(:mod:`privlearn.transfer.flooding_bound`) sizes its sigma from simulated runs with them, so
this model is what real decryptions rely on, not a detail of the simulator. The figures are
OpenFHE's, measured per preset by ``python -m privlearn.he.calibrate`` and stored in
``noise_calibration.json``; a backend with a different error would bring its own table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from privlearn.he.params import PRESETS, CKKSParams

CALIBRATION_FILE = "noise_calibration.json"


@dataclass(frozen=True)
class NoiseModel:
    """Standard deviation of the error each operation adds, per real and imaginary part of a
    slot, in absolute units (for slot values of order 1)."""

    fresh: float
    rescale: float
    keyswitch: float
    bootstrap: float
    source: str

    @classmethod
    def for_params(cls, params: CKKSParams) -> NoiseModel:
        """The calibration measured for this preset, or one scaled from the nearest preset
        (error grows as sqrt(N) and shrinks as the scale 2^scale_bits)."""
        table = _calibration()
        entry = table.get(params.name)
        if entry and entry["fingerprint"] == params.fingerprint():
            return cls(**entry["sigma"], source=f"calibrated on {entry['measured_on']}")
        ref_name = "n16-boot" if params.bootstrappable else "n16-d24"
        if ref_name not in table:
            raise RuntimeError(
                f"noise calibration for {ref_name} is missing; "
                "run `python -m privlearn.he.calibrate`"
            )
        ref, ref_p = table[ref_name], PRESETS[ref_name]
        f = np.sqrt(params.ring_dim / ref_p.ring_dim) * 2.0 ** (
            ref_p.scale_bits - params.scale_bits
        )
        s = ref["sigma"]
        return cls(
            s["fresh"] * f,
            s["rescale"] * f,
            s["keyswitch"] * f,
            s["bootstrap"],
            source=f"scaled from {ref_name}'s calibration",
        )


_CALIBRATION: dict | None = None


def _calibration() -> dict:
    global _CALIBRATION
    if _CALIBRATION is None:
        text = resources.files("privlearn.he").joinpath(CALIBRATION_FILE).read_text()
        _CALIBRATION = json.loads(text)
    return _CALIBRATION
