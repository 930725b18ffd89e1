"""Bind YAML documents to typed dataclasses, collecting every error with its key path and line.

Recipes and corpus manifests are both loaded through here, so both get the same guarantees:
unknown keys are errors that list the valid keys, types are checked, and all problems are
reported together (a user fixing a recipe should not have to run it once per typo).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_BAD: set[str] = set()  # key paths whose value failed to bind during the current bind()


class ConfigError(ValueError):
    """One or more configuration problems; `errors` holds them all, each with its location."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        head = f"{len(errors)} configuration error(s)" + (f" in {source}" if source else "")
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in errors))


class Lines:
    """Maps key paths ("train.max_steps", "directions[2].src") to 1-based line numbers."""

    def __init__(self, source: str = "", table: dict[str, int] | None = None) -> None:
        self.source = source
        self.table = table or {}

    def at(self, path: str) -> str:
        where = path or "<top>"
        line = self.table.get(path)
        if line is None:
            return where
        return f"{self.source}:{line}: {where}" if self.source else f"line {line}: {where}"


def load_yaml_with_lines(text: str, source: str = "") -> tuple[Any, Lines]:
    """Parse YAML and remember the line of every key, so errors can point into the file."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"], source) from exc
    table: dict[str, int] = {}

    def walk(n: yaml.Node | None, path: str) -> None:
        if n is None:
            return
        table.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = str(k.value)
                child = f"{path}.{key}" if path else key
                table[child] = k.start_mark.line + 1
                walk(v, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{path}[{i}]")

    walk(node, "")
    data = yaml.safe_load(text) if node is not None else None
    return data, Lines(source, table)


def load_yaml_file(path: str | Path) -> tuple[Any, Lines]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"{p}: file not found"], str(p))
    return load_yaml_with_lines(p.read_text(encoding="utf-8"), str(p))


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` override; the value is parsed as YAML (so 5, true, [1,2] work)."""
    if "=" not in assignment:
        raise ConfigError([f"--set {assignment!r}: expected KEY=VALUE"])
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part, key)
        if nxt is None:
            nxt = {}
            _assign(node, part, nxt, key)
        elif not isinstance(nxt, (dict, list)):
            raise ConfigError([f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping"])
        node = nxt
    _assign(node, parts[-1], value, key)


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        try:
            return node[int(part)]
        except (ValueError, IndexError) as exc:
            raise ConfigError([f"--set {key}: {part!r} is not an index of a {len(node)}-item list"]) from exc
    return node.get(part)


def _assign(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, list):
        try:
            node[int(part)] = value
        except (ValueError, IndexError) as exc:
            raise ConfigError([f"--set {key}: {part!r} is not an index of a {len(node)}-item list"]) from exc
    else:
        node[part] = value


def bind(cls: type[T], data: Any, lines: Lines | None = None, path: str = "") -> T:
    """Build `cls` (a dataclass) from plain data; raise one ConfigError listing every problem.

    After binding, each dataclass's optional `check(path) -> list[str]` adds semantic errors.
    """
    lines = lines or Lines()
    errors: list[str] = []
    _BAD.clear()
    out = _bind_value(cls, data, path, lines, errors)
    _run_checks(out, path, lines, errors)
    _BAD.clear()
    if errors:
        raise ConfigError(errors, lines.source)
    return out  # type: ignore[return-value]


def _run_checks(obj: Any, path: str, lines: Lines, errors: list[str]) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            sub = f"{path}.{f.name}" if path else f.name
            _run_checks(getattr(obj, f.name), sub, lines, errors)
        check: Callable[[str], list[tuple[str, str]]] | None = getattr(obj, "check", None)
        if check is None:
            return
        try:
            found = check(path)
        except (TypeError, ValueError, AttributeError, KeyError):
            return  # a value of the wrong type, already reported by binding
        for key, msg in found:
            if key not in _BAD:  # its value was replaced by the default: the type error is the news
                errors.append(f"{lines.at(key)}: {msg}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _run_checks(v, f"{path}[{i}]", lines, errors)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _run_checks(v, f"{path}.{k}" if path else str(k), lines, errors)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _bind_value(tp: Any, value: Any, path: str, lines: Lines, errors: list[str]) -> Any:
    origin = get_origin(tp)
    where = lines.at(path)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _bind_value(non_none[0], value, path, lines, errors)
        for a in non_none:
            trial: list[str] = []
            got = _bind_value(a, value, path, lines, trial)
            if not trial:
                return got
        errors.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        if value not in get_args(tp):
            errors.append(f"{where}: must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        (item,) = get_args(tp)
        return [_bind_value(item, v, f"{path}[{i}]", lines, errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return {}
        _, vt = get_args(tp)
        return {str(k): _bind_value(vt, v, f"{path}.{k}" if path else str(k), lines, errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _bind_dataclass(tp, value, path, lines, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _bind_dataclass(cls: Any, value: Any, path: str, lines: Lines, errors: list[str]) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.append(f"{lines.at(path)}: expected a mapping, got {value!r}")
        return None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            valid = ", ".join(sorted(fields))
            errors.append(f"{lines.at(sub)}: unknown key {key!r}; valid keys here: {valid}")
            continue
        before = len(errors)
        bound = _bind_value(hints[key], v, sub, lines, errors)
        f = fields[key]
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if len(errors) > before and has_default and not dataclasses.is_dataclass(hints[key]) \
                and get_origin(hints[key]) not in (list, dict):
            # Reported; the default stands in, so this section's other checks still run (a list
            # or mapping keeps what did bind: its items' own checks still run too).
            _BAD.add(sub)
            continue
        kwargs[key] = bound
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            sub = f"{path}.{name}" if path else name
            errors.append(f"{lines.at(path)}: missing required key {sub!r}")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (for saving the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj

