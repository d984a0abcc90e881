"""`make demo`: encrypted fine-tuning on real data, end to end, at 128-bit security.

A client holds scikit-learn's breast-cancer data (569 tumours, 30 measurements, 2 classes) and
the only secret key. It encrypts features and labels under CKKS (OpenFHE, preset ``n15-d11``,
128-bit) and sends them with a public bundle to a server, which trains a softmax head on the
ciphertexts: HETAL's algorithm with our matrix products and softmax, Nesterov steps, early
stopping on an encrypted validation loss. Exhausted ciphertexts are refreshed by the client
(``client`` mode). The same training runs in plaintext beside it, with the exact softmax and
with the approximation, so the accuracies can be compared.
"""

from __future__ import annotations

from rich.console import Console

from privlearn.transfer.experiment import TASK_DEFAULTS, run_task, with_epochs
from privlearn.transfer.report import print_result


def run_demo(
    backend: str = "openfhe",
    preset: str = "n15-d11",
    task: str = "cancer",
    epochs: int | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console()
    console.print(
        f"[bold]privlearn demo[/]: encrypted fine-tuning of a softmax head on "
        f"'{task}', {backend}, preset {preset}, client refresh"
    )
    result = run_task(
        task,
        refresh="client",
        preset=preset,
        backend=backend,
        config=with_epochs(TASK_DEFAULTS[task], epochs),
        out_dir="results",
    )
    print_result(result, console)
    console.print(f"figures: results/transfer-{task}-client-{backend}.json and .png")
    return result
