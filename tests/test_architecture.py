"""Import rules of the package, read from the source (lazy and TYPE_CHECKING imports included).

The sub-packages are layers in the order data flows (LAYERS); each imports only layers before it,
so there is no cycle between folders, and none between files. On top of that, the rules the
layering implies are spelled out one by one (only engine/ imports deepspeed, config/ only core/,
...), and cli.py imports no torch at module level.
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


# The layers, in the order data flows; a layer imports only the ones before it. Layers on one
# line are siblings: they do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("config",),
    ("model", "balance", "engine"),
    ("data",),
    ("curriculum",),
    ("rundir",),
    ("distill",),
    ("gradients",),
    ("checkpoint",),
    ("train",),
    ("evaluation", "export"),
    ("report",),
    ("launch",),
    ("cli",),
    ("__main__",),
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def folder(module: str) -> str:
    """The layer a module belongs to: its sub-package, or the top-level file's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def folder_graph(g: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in g.items():
        out.setdefault(folder(m), set()).update(folder(t) for t in targets if folder(t) != folder(m))
    return out


def test_no_import_cycle_between_files():
    assert cycles(graph()) == []


def test_no_import_cycle_between_folders():
    assert cycles(folder_graph(graph())) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_in_a_layer():
    assert sorted({folder(m) for m in graph()} - set(RANK) - {""}) == []


def test_each_layer_imports_only_the_layers_before_it():
    wrong = sorted(f"{m} -> {t}" for m, targets in graph().items() for t in targets
                   if folder(m) and folder(t) and folder(t) != folder(m) and RANK[folder(t)] >= RANK[folder(m)])
    assert wrong == []


def test_the_layer_check_finds_an_upward_import():
    g = {"pipeline.data.batches": {"pipeline.train.trainer"}, "pipeline.train.trainer": set()}
    assert [m for m, ts in g.items() for t in ts if RANK[folder(t)] >= RANK[folder(m)]] == ["pipeline.data.batches"]


def importers_of(prefix: str) -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                  if any(t == prefix or t.startswith(prefix + ".") for t in imports(p)))


def test_only_the_engine_imports_deepspeed():
    assert {folder(m) for m in importers_of("deepspeed")} == {"engine"}


def folders_imported_by(layer: str) -> set[str]:
    return folder_graph(graph()).get(layer, set())


def test_the_rules_of_the_issue_one_by_one():
    for helper in ("balance", "curriculum", "gradients", "checkpoint"):
        assert "train" not in folders_imported_by(helper), helper
    assert not folders_imported_by("data") & {"model", "balance", "engine"}
    assert folders_imported_by("config") <= {"core"}
    assert not folders_imported_by("train") & {"evaluation", "report", "launch"}
    assert folders_imported_by("core") == set()


def test_cli_imports_no_torch_at_module_level():
    top = imports(PACKAGE / "cli.py", top_level_only=True)
    assert not any(t == "torch" or t.startswith("torch.") for t in top)
    # nor anything of ours that would (typed_yaml is plain Python)
    assert {t for t in top if t.startswith("pipeline")} <= {"pipeline.core.typed_yaml",
                                                           "pipeline.core.typed_yaml.ConfigError"}


def test_evaluation_translation_and_reports_load_no_deepspeed():
    import subprocess
    import sys

    code = ("import sys, pipeline.evaluation.run_eval, pipeline.evaluation.commands, pipeline.checkpoint.weights, "
            "pipeline.report.stage_report, pipeline.report.compare, pipeline.report.stage_end; "
            "print('deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False", out.stderr


def test_building_the_command_line_parser_loads_no_torch():
    """`mmtc --help` and every command's argument errors answer at once: the parser's modules
    (cli, launch.slurm, report.commands) leave torch, DeepSpeed and matplotlib unloaded."""
    import subprocess
    import sys

    code = ("import sys; from pipeline.cli import _parser; _parser(); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stderr
