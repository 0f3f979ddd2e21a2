"""Config plumbing: nested dataclasses <-> plain dicts <-> YAML.

Every config in semrec is a dataclass; a run writes its full config next to its outputs
(``config.yaml``) and can be re-run from it.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Type, TypeVar

T = TypeVar("T")


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


def from_dict(cls: Type[T], data: dict | None) -> T:
  """Builds ``cls`` from a dict, recursing into nested dataclass fields; unknown keys are an error."""
  data = dict(data or {})
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown config key(s) {unknown}; known: {sorted(names)}")
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      continue
    v = data[f.name]
    hint = hints.get(f.name)
    sub = _dataclass_in(hint)
    if sub is not None and isinstance(v, dict):
      v = from_dict(sub, v)
    elif _is_tuple(hint) and isinstance(v, list):
      v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    kwargs[f.name] = v
  return cls(**kwargs)


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
  import yaml
  with open(path) as f:
    return from_dict(cls, yaml.safe_load(f) or {})
