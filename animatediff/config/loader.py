"""YAML presets -> nested frozen dataclasses, dotted overrides, and back to plain data.

    cfg = load_config("configs/tiny.yaml", ["train.max_steps=20", "model.motion.num_layers=2"])

Unknown keys are errors, never silently ignored; a value of the wrong type is an error naming the
option (``train.lr: expected a number, got 'fast'``). ``Literal`` annotations are enforced here,
so sections only validate what types cannot say (ranges, relations between fields).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from animatediff.config.errors import ConfigError
from animatediff.config.root import Config

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML with the floats a Python user writes: ``1e-4``, ``5E-5`` and ``.5`` are numbers.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent (``1.0e-4``), so
    ``train.lr=1e-4`` would arrive as the string ``'1e-4'``."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text -> Python data, with Python's float syntax (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, option: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; raise ``ConfigError`` naming ``option``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{option}: invalid value {value!r}")
    if origin is Literal:
        # Equal and of the same type: 0.0 or False must not pass for the option 0.
        if not any(type(value) is type(arg) and value == arg for arg in args):
            raise ConfigError(f"{option}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{option}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{option}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{option}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{option}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{option}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{option}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{option}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=option)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{option}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{option}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{option}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{option}: expected a string, got {value!r}")
    raise ConfigError(f"{option}: unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys raise ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown option (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        option = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], option)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from error


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def flatten(config: Any) -> dict[str, Any]:
    """``{"model.motion.num_layers": 1, ...}``: for MLflow params and printing."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{prefix}.{key}" if prefix else key)
        else:
            flat[prefix] = value

    walk(to_dict(config), "")
    return flat


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested mapping; values are parsed as YAML scalars."""
    data = _deep_copy(data)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"{override}: overrides look like key.sub=value")
        key, raw = override.split("=", 1)
        key = key.strip().removeprefix("--")
        if not key:
            raise ConfigError(f"{override}: empty option name")
        value = parse_yaml(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), cls: type[T] = Config
) -> T:
    """Load a YAML preset (or the defaults when ``path`` is None) and apply dotted overrides.

    A ``Config`` loaded from a file whose YAML sets no ``preset`` gets the file's stem."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = parse_yaml(text)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
        if cls is Config and "preset" not in data:
            data = {**data, "preset": Path(path).stem}
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Documentation: the docstring under each field, for --help and the docs test.
# ---------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` of a config dataclass: the string literal under each field,
    read from the class source (Python keeps no attribute docstrings at run time)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


@dataclasses.dataclass(frozen=True)
class OptionDoc:
    """One leaf option of a config, as ``--help`` lists it."""

    name: str
    """Dotted name, e.g. ``train.max_steps``."""
    type: str
    """The field's type as ``--help`` prints it (a Literal as its values joined by ``|``)."""
    default: Any
    """The default as plain data (``to_dict``), None where the field has none."""
    doc: str
    """The docstring under the field, cleaned (``field_docs``); empty where it has none."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def option_docs(cls: type = Config, prefix: str = "") -> list[OptionDoc]:
    """Every leaf option below ``cls`` with its type, default and docstring, in field order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            options += option_docs(tp, name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        options.append(OptionDoc(name, _type_name(tp), to_dict(default), docs.get(f.name, "")))
    return options
