"""What every recipe section's check shares: the (key path, message) list it returns, and where
the package's bundled recipes are."""

from __future__ import annotations

from pathlib import Path

Check = list[tuple[str, str]]  # (key path, message) per problem; the loader reports them all together

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the repository (or install) root: stages/, ds_configs/


def key_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
