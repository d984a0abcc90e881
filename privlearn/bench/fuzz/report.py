"""The fuzz document as a Markdown table, and its findings grouped by kind."""

from __future__ import annotations

import re

from privlearn.bench.fuzz.runner import CLASSES

COLUMNS = ("clean", "benign", "unclean", "crash", "hang", "silent_wrong", "code_exec")


def table(doc: dict) -> str:
    head = ["format", "cases", *COLUMNS, "cases/s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, part in doc["formats"].items():
        c = part["counts"]
        rows.append(
            "| "
            + " | ".join(
                [name, str(part["cases"]), *(str(c[k]) for k in COLUMNS), str(part["cases_per_s"])]
            )
            + " |"
        )
    env = (
        f"preset {doc['preset']}, backend {doc['backend']} (OpenFHE {doc['openfhe']}), "
        f"torch {doc['torch']}, Python {doc['python']}; {doc['machine']}; "
        f"timeout {doc['timeout_s']:.0f} s, address space +{doc['memory_limit_gb']:.0f} GiB"
    )
    return "\n".join(rows) + "\n\n" + env


def _kind(f: dict) -> tuple:
    """Findings of one kind: same class, same exception type, same raising frame (line
    numbers dropped), or for silent wrong answers the same mutation family and field."""
    detail = f["detail"]
    if f["class"] == "silent_wrong":
        family = f["mutation"].split(":")[0]
        return (f["class"], f["target"], family, detail.split(":")[0])
    if f["class"] in ("crash", "hang"):
        return (f["class"], f["target"], f["mutation"].split(":")[0], detail.split(";")[0][:40])
    exc = detail.split(":")[0]
    return (f["class"], exc, re.sub(r":\d+ in", " in", f.get("raised_at", "")))


def kinds(part: dict) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for f in part["findings"]:
        if f["class"] in ("clean", "benign"):
            continue
        groups.setdefault(_kind(f), []).append(f)
    order = {c: i for i, c in enumerate(CLASSES[::-1])}
    return sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -len(kv[1])))


def findings(doc: dict) -> str:
    """Per format: counts, then each distinct kind with one reproducer."""
    out = []
    for name, part in doc["formats"].items():
        c = part["counts"]
        out.append(f"## {name}: {part['cases']} cases (seed {part['seed']})\n")
        out.append(", ".join(f"{k} {v}" for k, v in c.items()) + "\n")
        for _, group in kinds(part):
            f = group[0]
            out.append(
                f"- **{f['class']}** x{len(group)}: case {f['case']} "
                f"(`privlearn bench fuzz --format {name} --case {f['case']} --seed {part['seed']}`)"
                f", target `{f['target']}`, mutation `{f['mutation'][:120]}`\n"
                f"  - {f['detail'][:300]}\n"
                + (f"  - raised at `{f['raised_at']}`" if f.get("raised_at") else "")
                + (
                    f"; privlearn frame `{f['privlearn_frame']}`"
                    if f.get("privlearn_frame") and f["privlearn_frame"] != f.get("raised_at")
                    else ""
                )
                + ("\n" if f.get("raised_at") else "")
            )
        out.append("")
    return "\n".join(out)
