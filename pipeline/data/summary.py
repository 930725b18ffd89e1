"""The data summary as the console shows it: pairs kept per direction and split, drops by reason."""

from __future__ import annotations

from typing import Any

SPLITS = ("train", "dev", "test")


def format_summary(summary: dict[str, Any]) -> str:
    rows = ["data summary (pairs kept; dropped by reason):"]
    for name, entry in summary["directions"].items():
        cells = []
        for split in SPLITS:
            if split in entry:
                e = entry[split]
                drop = ", ".join(f"{k} {v}" for k, v in sorted(e["dropped"].items()))
                fixed = ", ".join(f"{k} {v}" for k, v in sorted(e.get("stripped", {}).items()))
                cells.append(f"{split} {e['pairs']}" + (f" (dropped {drop})" if drop else "")
                             + (f" (stripped {fixed})" if fixed else ""))
        group = f" [{entry.get('group')}]" if entry.get("group") else ""
        rows.append(f"  {name}{group}: " + "; ".join(cells))
    return "\n".join(rows)
