"""Config plumbing: nested dataclasses <-> plain dicts <-> YAML, and validation of every field.

Every config in semrec is a dataclass; a run writes its full config next to its outputs
(``config.yaml``) and can be re-run from it.

Validation (:func:`from_dict` while loading, :func:`validate` on a built config) raises
:class:`ConfigError` naming the dotted field, the value and what is allowed:

* types come from the type hints (``int``, ``float``, ``str``, ``bool``, ``Optional[...]``,
  ``Tuple[int, ...]``, nested dataclasses); ``codebook_size: "sixteen"`` is refused before any
  ``__post_init__`` runs, and a ``__post_init__`` error is re-raised with the field's path;
* ranges and allowed values come from field metadata (:func:`setting`: ``min``, ``max``, ``choices``,
  ``min_exclusive``/``max_exclusive``);
* sizes without metadata follow one convention: integer fields (or integer tuples) named ``epochs``,
  ``num_*``, ``*_size``, ``*_dim``, ``*_dims``, ``*_length``, ``*budget*``, ``top_k``, ``ks`` or
  ``cluster_ks`` whose default is >= 1 must be >= 1 (a default of 0 or None means "off" and is kept legal).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Type, TypeVar

T = TypeVar("T")

_SIZE_NAME = re.compile(r"^(epochs|num_.*|.*_size|.*_dims?|.*_length|.*budgets?|top_k|ks|cluster_ks)$")


class ConfigError(ValueError):
  """A bad config value. The message starts with the dotted field name (``sid.model.codebook_size``)."""


def setting(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, min=None, max=None,  # noqa: A002
            min_exclusive: bool = False, max_exclusive: bool = False, choices=None):
  """A dataclass field whose range / allowed values :func:`validate` checks.

  Args:
    default / default_factory: as in ``dataclasses.field``.
    min, max: Bounds of a number, or of every number of a tuple (inclusive unless ``*_exclusive``).
    choices: Allowed values of a string, or of every element of a tuple.
  """
  meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
          "choices": tuple(choices) if choices is not None else None}
  return dataclasses.field(default=default, default_factory=default_factory, metadata={"semrec": meta})


def to_dict(config) -> dict:
  """A plain (YAML-safe) dict of a possibly nested dataclass config."""
  def conv(v):
    if dataclasses.is_dataclass(v):
      return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
      return [conv(x) for x in v]
    if isinstance(v, dict):
      return {k: conv(x) for k, x in v.items()}
    return v
  return conv(config)


def from_dict(cls: Type[T], data: dict | None, _path: str = "") -> T:
  """Builds ``cls`` from a dict, recursing into nested dataclass fields and checking every value's type.

  A config class may list keys that moved into a sub-config in a class attribute ``MOVED_KEYS``
  (``{"old_key": "sub.new_key"}``): an old file's value is used at the new place (unless that is set too).

  Raises:
    ConfigError: an unknown key, a value of the wrong type, or a value its ``__post_init__`` refuses,
      naming the dotted field.
  """
  if data is not None and not isinstance(data, dict):
    raise ConfigError(f"{_path or cls.__name__}: expected a mapping of fields, got {data!r}")
  data = _relocate_moved_keys(cls, dict(data or {}))
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ConfigError(f"{_path or cls.__name__}: unknown config key(s) {unknown}; known: {sorted(names)}")
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      continue
    v, hint, where = data[f.name], hints.get(f.name), _join(_path, f.name)
    sub = _dataclass_in(hint)
    if sub is not None and isinstance(v, dict):
      v = from_dict(sub, v, where)
    else:
      v = _checked(v, hint, where)
    kwargs[f.name] = v
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{_path or cls.__name__}: {e}") from e


def validate(config, _path: str = ""):
  """Checks a built config recursively: types (hints), ranges and choices (:func:`setting`), sizes (convention).

  Raises:
    ConfigError: naming the dotted field, the value and what is allowed.
  """
  hints = typing.get_type_hints(type(config))
  for f in dataclasses.fields(config):
    v, where = getattr(config, f.name), _join(_path, f.name)
    if dataclasses.is_dataclass(v):
      validate(v, where)
      continue
    _checked(v, hints.get(f.name), where)
    _check_range(v, f, where)


def _join(path: str, name: str) -> str:
  return f"{path}.{name}" if path else name


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _checked(v, hint, where: str):
  """``v`` converted to ``hint`` (lists -> tuples, ints -> floats), or ConfigError naming ``where``."""
  if hint is None or hint is Any or isinstance(hint, TypeVar):
    return v
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin is typing.Union:
    if v is None and type(None) in args:
      return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for a in options:
      try:
        return _checked(v, a, where)
      except ConfigError as e:
        errors.append(e)
    raise errors[0]
  if dataclasses.is_dataclass(hint):
    if dataclasses.is_dataclass(v):
      return v
    raise ConfigError(f"{where}: expected a mapping of {hint.__name__} fields, got {v!r}")
  if hint in _TYPE_NAMES:
    ok = isinstance(v, bool) if hint is bool else (
        isinstance(v, hint) or (hint is float and isinstance(v, int))) and not isinstance(v, bool)
    if not ok:
      raise ConfigError(f"{where}: expected {_TYPE_NAMES[hint]}, got {v!r} ({type(v).__name__})")
    return float(v) if hint is float else v
  if _is_tuple(hint) or origin in (list, tuple):
    if not isinstance(v, (list, tuple)):
      raise ConfigError(f"{where}: expected a list, got {v!r} ({type(v).__name__})")
    elem = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None
    return tuple(_checked(x, elem, f"{where}[{i}]") if elem is not None else
                 (tuple(x) if isinstance(x, list) else x) for i, x in enumerate(v))
  if origin is dict or hint is dict:
    if not isinstance(v, dict):
      raise ConfigError(f"{where}: expected a mapping, got {v!r} ({type(v).__name__})")
  return v


def _check_range(v, f: dataclasses.Field, where: str):
  meta = dict(f.metadata.get("semrec") or {})
  if not meta and _SIZE_NAME.match(f.name) and _positive_default(f):
    meta = {"min": 1}
  values = v if isinstance(v, (list, tuple)) else (v,)
  for i, x in enumerate(values):
    at = f"{where}[{i}]" if isinstance(v, (list, tuple)) else where
    if meta.get("choices") is not None and x not in meta["choices"]:
      raise ConfigError(f"{at}: {x!r} is not one of {list(meta['choices'])}")
    if not isinstance(x, (int, float)) or isinstance(x, bool):
      continue
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(x, float) and not math.isfinite(x):
      raise ConfigError(f"{at}: {x!r} is not a finite number")
    if lo is not None and (x <= lo if meta.get("min_exclusive") else x < lo):
      raise ConfigError(f"{at}: {x!r} must be {'>' if meta.get('min_exclusive') else '>='} {lo}{_span(meta)}")
    if hi is not None and (x >= hi if meta.get("max_exclusive") else x > hi):
      raise ConfigError(f"{at}: {x!r} must be {'<' if meta.get('max_exclusive') else '<='} {hi}{_span(meta)}")


def _positive_default(f: dataclasses.Field) -> bool:
  """True when the field's default is a positive integer (or integers): 0 / None defaults mean "off"."""
  d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
  values = d if isinstance(d, (list, tuple)) else (d,)
  return bool(values) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in values)


def _span(meta: dict) -> str:
  if meta.get("min") is None or meta.get("max") is None:
    return ""
  return (f" (allowed: {'(' if meta['min_exclusive'] else '['}{meta['min']}, {meta['max']}"
          f"{')' if meta['max_exclusive'] else ']'})")


def _relocate_moved_keys(cls, data: dict) -> dict:
  for old, new in getattr(cls, "MOVED_KEYS", {}).items():
    if old in data:
      value = data.pop(old)
      *parents, leaf = new.split(".")
      node = data
      for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
      node.setdefault(leaf, value)
  return data


def _dataclass_in(hint) -> Any:
  if dataclasses.is_dataclass(hint):
    return hint
  for arg in typing.get_args(hint):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def _is_tuple(hint) -> bool:
  """Tuple-like hints (``tuple``, ``Tuple[...]``, ``Sequence[...]``): YAML lists come back as tuples."""
  import collections.abc
  seqs = (tuple, collections.abc.Sequence)
  return hint in seqs or typing.get_origin(hint) in seqs or any(
      a in seqs or typing.get_origin(a) in seqs for a in typing.get_args(hint))


def save_yaml(config, path: str):
  """Writes ``config`` as YAML, atomically."""
  import yaml
  from semrec.atomic import write_text
  write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def load_yaml(cls: Type[T], path: str) -> T:
  """Reads a YAML config; a YAML syntax error or a bad value is a ConfigError naming the file."""
  data = read_yaml(path)
  try:
    return from_dict(cls, data)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from e


def read_yaml(path: str) -> dict:
  """The raw mapping of a YAML config file (ConfigError if it is not valid YAML or not a mapping)."""
  import yaml
  try:
    with open(path) as f:
      data = yaml.safe_load(f)
  except (OSError, yaml.YAMLError) as e:
    raise ConfigError(f"{path}: cannot be read as YAML ({e})") from e
  if data is not None and not isinstance(data, dict):
    raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
  return data or {}


def merge_dicts(base: dict, override: dict) -> dict:
  """``base`` with ``override`` applied recursively (override's values win; nested mappings merge)."""
  out = dict(base)
  for k, v in override.items():
    out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out
