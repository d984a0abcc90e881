"""`privlearn bench fuzz`: every format a peer or a file can hand privlearn, mutated.

One module per format family (:mod:`.fl_formats`, :mod:`.he_formats`,
:mod:`.transfer_formats`; each imports torch or OpenFHE only when a case needs it);
:mod:`.runner` forks, limits, times and classifies each case; :mod:`.mutate` draws the
mutations; :mod:`.report` writes the JSON and the Markdown table.
"""

from __future__ import annotations

from privlearn.bench.fuzz import fl_formats, he_formats, transfer_formats

PRESET = "toy-n12"  # insecure_for_testing: small keys, the same code paths as n16

FORMATS = {
    "yaml-config": fl_formats.YamlConfig,
    "fl-checkpoint": fl_formats.Checkpoint,
    "ciphertext": he_formats.CiphertextFormat,
    "client-reply": transfer_formats.ClientReply,
    "server-request": transfer_formats.ServerRequest,
    "bundle-bytes": he_formats.BundleBytes,
    "bundle-dir": he_formats.BundleDir,
}
