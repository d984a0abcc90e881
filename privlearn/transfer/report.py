"""Console rendering of a transfer-learning result (the figures live in the JSON)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_result(r: dict, console: Console) -> None:
    enc = "real encryption" if r["real_encryption"] else "SIMULATOR - NOT ENCRYPTION"
    source = "tabular" if r["encoder"] == "none" else r["encoder"]
    console.print(
        f"[bold]{r['task']}[/] ({r['features']} {source} features, {r['classes']} classes; "
        f"train/val/test {r['sizes']['train']}/{r['sizes']['val']}/"
        f"{r['sizes']['test']}): {r['backend']} ({enc}), preset {r['preset']}, "
        f"{r['security']}, refresh mode '{r['refresh']}'"
    )
    t = Table(title="test accuracy")
    for col in (
        "plaintext, exact softmax",
        "plaintext, approximate softmax",
        "encrypted",
        "encrypted − plaintext (points)",
        "same predictions as plaintext approx.",
    ):
        t.add_column(col, justify="right")
    a = r["accuracy"]
    t.add_row(
        f"{a['exact']:.4f}",
        f"{a['approx']:.4f}",
        f"{a['encrypted']:.4f}",
        f"{r['encrypted_minus_exact_points']:+.2f}",
        f"{100 * r['identical_predictions_vs_approx']:.2f} %",
    )
    console.print(t)
    far = r["rows_beyond_range"]
    if far["val"] or far["test"]:
        console.print(
            f"{far['val']} validation and {far['test']} test rows lay beyond the training "
            f"range: {'clipped onto it' if r['out_of_range'] == 'clip' else 'refused'}"
        )
    s = r["seconds"]
    console.print(
        f"epochs run {r['epochs_run']} (best {r['best_epoch']['encrypted']}), {r['steps']} "
        f"iterations at {r['seconds_per_iteration']:.1f} s each; total {s['total']:.0f} s "
        f"(keygen {s['keygen']:.1f}, encrypt+upload {s['encrypt_upload']:.1f}, train "
        f"{s['train']:.0f}, validate {s['validate']:.0f})"
    )
    console.print(
        f"per iteration: {r['server_key_switches_per_iteration']:.0f} server key switches, "
        f"{r['client_refreshes_per_iteration']:.1f} client refreshes, "
        f"{r['bootstraps_per_iteration']:.1f} bootstraps; peak memory "
        + ", ".join(f"{k} {v:.1f} GB" for k, v in r["peak_memory_gb"].items() if v)
    )
    if r["real_encryption"]:
        console.print(
            "the secret key lived in the client object only; the server was built from "
            "the public bundle and saw ciphertexts, the public spec and one continue/"
            "stop bit per epoch"
        )
    else:
        console.print("[bold red]simulator: NOT encryption[/] (the server saw slot values)")
