"""Import rules of the package, read from the source (lazy and TYPE_CHECKING imports included).

Held now: no import cycle between files; only engine.py imports deepspeed (and evaluation,
weights and reports load without it: collectives.py holds the plain torch.distributed ones); config.py imports
only typed_yaml; the sampler base knows no sampler or config; the trainer's helpers (probe,
surgery step, checkpointer) and the reports never import the training loop or the worker;
cli.py imports no torch at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (absolute names), at any depth of the file unless top_level_only."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {t for t in imports(p) if t in files and t != m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_engine_imports_deepspeed():
    users = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                   if any(t == "deepspeed" or t.startswith("deepspeed.") for t in imports(p)))
    assert users == ["pipeline.engine"]


def test_config_imports_only_typed_yaml_and_the_sampler_base_nothing_of_ours():
    g = graph()
    assert g["pipeline.config"] <= {"pipeline.typed_yaml"}
    assert g["pipeline.policies.base"] == set()


def test_helpers_and_reports_never_import_the_loop_or_the_worker():
    g = graph()
    for helper in ("pipeline.alignment", "pipeline.task_step", "pipeline.checkpointing", "pipeline.report",
                   "pipeline.report_html", "pipeline.rundata", "pipeline.compare", "pipeline.trainer_view"):
        assert not g[helper] & {"pipeline.train", "pipeline.worker"}, helper


def test_cli_imports_no_torch_at_module_level():
    top = imports(PACKAGE / "cli.py", top_level_only=True)
    assert not any(t == "torch" or t.startswith("torch.") for t in top)
    # nor anything of ours that would (typed_yaml is plain Python)
    assert {t for t in top if t.startswith("pipeline")} <= {"pipeline.typed_yaml", "pipeline.typed_yaml.ConfigError"}


def test_evaluation_translation_and_reports_load_no_deepspeed():
    import subprocess
    import sys

    code = ("import sys, pipeline.evaluation_run, pipeline.weights, pipeline.report, pipeline.compare, "
            "pipeline.stage_end; print('deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False", out.stderr
