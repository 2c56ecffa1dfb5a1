"""Configuration: one TOML file plus ``CHARGECTL_*`` environment overrides, into frozen dataclasses.

The file is found from ``--config`` or ``CHARGECTL_CONFIG``. Environment variables override keys:
``CHARGECTL_BACKEND=gcp`` sets the top-level ``backend``; a double underscore descends into a table,
so ``CHARGECTL_AGENT__POLL_INTERVAL_S=3`` sets ``[agent] poll_interval_s``. Only the CLI entrypoint
reads the environment; it passes the mapping in.

Each component declares its own frozen dataclass (validated in ``__post_init__``) and builds it with
:func:`build`, which converts and checks every value and names the key on any error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from chargectl.common.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "Config",
    "build",
    "default_config_dir",
    "default_state_dir",
    "load_config",
    "load_raw",
    "suggest",
]

ENV_PREFIX = "CHARGECTL_"
# Variables that are read elsewhere (not config keys) and must not be treated as overrides.
_NOT_KEYS = {"CHARGECTL_CONFIG", "CHARGECTL_SHELLY_PASSWORD"}

T = TypeVar("T")


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chargectl"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chargectl"


def _parse_env_value(text: str) -> Any:
    """Read an environment value as a TOML value when it is one (numbers, booleans, arrays), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_raw(path: Path | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The merged configuration mapping: the TOML file (if any) overlaid with environment overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    for name, value in (env or {}).items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_KEYS:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name} descends into {part!r}, which is not a table")
            node = child
        node[parts[-1]] = _parse_env_value(value)
    return data


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
        return build(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                # nan passes every "must be > 0" check and inf means never (a poll, a timeout): refused.
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value).expanduser()
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def suggest(name: str, known: Iterable[str], what: str = "known keys") -> str:
    """``did you mean 'x'?`` for the nearest of ``known`` (a misspelling), else the list of them."""
    import difflib

    options = sorted(known)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"{what}: {', '.join(options)}"


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys and bad values name the key."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass")
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]!r}; {suggest(unknown[0], fields)}")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(data[name], hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Config:
    """The root configuration: which backend set, where state lives, and each component's table."""

    backend: Literal["local", "gcp"] = "local"
    project: str = "chargectl-local"
    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    config_dir: Path = dataclasses.field(default_factory=default_config_dir)
    sections: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: Path | None = None

    def section(self, name: str, cls: type[T]) -> T:
        """The table ``[name]`` built as ``cls`` (defaults when the table is absent)."""
        raw = self.sections.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{name}: expected a table, got {type(raw).__name__}")
        return build(cls, raw, prefix=name)


_ROOT_KEYS = ("backend", "project", "state_dir", "config_dir")


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the root config from ``path`` (or ``CHARGECTL_CONFIG`` in ``env``) plus overrides."""
    env = dict(env or {})
    if path is None and env.get("CHARGECTL_CONFIG"):
        path = Path(env["CHARGECTL_CONFIG"]).expanduser()
    raw = load_raw(path, env)
    root = {k: raw[k] for k in _ROOT_KEYS if k in raw}
    sections = {k: v for k, v in raw.items() if k not in _ROOT_KEYS}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"unknown config key {key!r}; {suggest(key, _ROOT_KEYS, 'top-level keys')}")
    cfg = build(Config, root)
    return dataclasses.replace(cfg, sections=sections, source=path)
