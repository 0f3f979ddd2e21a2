"""Config plumbing: dataclass configs <-> mappings <-> YAML on OmegaConf structured configs, and the one
validation path.

Every config in semrec is a dataclass; a run writes its full config next to its outputs (``config.yaml``)
and can be re-run from it.

* Loading (:func:`from_dict`, :func:`load_yaml`; a class may list keys of older files that moved into a
  sub-config in ``MOVED_KEYS = {"old_key": "sub.new_key"}``) and layering (:func:`merge`: defaults < file < flags) are
  OmegaConf's: a mapping is merged onto the dataclass's structured schema, which refuses an unknown key and
  converts or refuses a value of the wrong type (``codebook_size: "sixteen"``), naming the dotted key. Library
  configs whose type hints OmegaConf does not support (``Sequence[...]``) are built directly from the
  mapping (they are read back from manifests the library itself wrote).
* Validation (:func:`validate`) is one function: each field's type, the range / allowed values it declares
  with :func:`setting` (``min``, ``max``, ``choices``), then the class's own cross-field rules
  (``cross_checks()``, returning ``[(field, message)]``). Every error is a :class:`ConfigError` whose message
  starts with the dotted field (``ranking.budgets[0]: 0 must be >= 1``).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import typing
from typing import Any, Type, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A bad config value. The message starts with the dotted field name (``sid.codebook_size``)."""


def setting(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, min=None, max=None,  # noqa: A002
            min_exclusive: bool = False, max_exclusive: bool = False, choices=None):
  """A dataclass field with the range / allowed values :func:`validate` checks.

  Args:
    default / default_factory: as in ``dataclasses.field`` (a tuple default is fine: tuples are immutable).
    min, max: Bounds of a number, or of every number of a tuple (inclusive unless ``*_exclusive``).
    choices: Allowed values of a string, or of every element of a tuple.
  """
  meta = {"min": min, "max": max, "min_exclusive": min_exclusive, "max_exclusive": max_exclusive,
          "choices": tuple(choices) if choices is not None else None}
  return dataclasses.field(default=default, default_factory=default_factory, metadata={"semrec": meta})


# ------------------------------------------------------------------------------------------------------------
# dataclass <-> mapping <-> YAML
# ------------------------------------------------------------------------------------------------------------
def to_dict(config) -> dict:
  """A plain (YAML-safe) dict of a possibly nested dataclass config (tuples become lists)."""
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
  """Builds ``cls`` from a (partial) mapping: the defaults with ``data`` merged on top.

  Raises:
    ConfigError: an unknown key, a value of the wrong type, or a value the class's ``__post_init__``
      refuses, naming the dotted field.
  """
  return merge(cls, data)


def merge(cls: Type[T], *layers: dict | None) -> T:
  """``cls``'s defaults with each mapping of ``layers`` merged on top in order (later layers win; nested
  mappings merge key by key, lists are replaced whole). OmegaConf does the merge and the type checks.

  Raises:
    ConfigError: as :func:`from_dict`.
  """
  for layer in layers:
    if layer is not None and not isinstance(layer, dict):
      raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {layer!r}")
  layers = tuple(_relocate_moved_keys(cls, layer or {}) for layer in layers)
  schema = _schema(cls)
  if schema is None:  # hints OmegaConf cannot hold: build directly (library manifests)
    out = {}
    for layer in layers:
      out = _deep_update(out, layer or {})
    return _construct(cls, out, "")
  from omegaconf import OmegaConf
  from omegaconf.errors import OmegaConfBaseException
  try:
    merged = OmegaConf.merge(schema, *[layer or {} for layer in layers])
  except OmegaConfBaseException as e:
    raise _located(cls, schema, layers, e) from None
  try:
    return OmegaConf.to_object(merged)
  except OmegaConfBaseException as e:
    raise ConfigError(f"{e.full_key or cls.__name__}: {_first_line(e)}") from None
  except (TypeError, ValueError) as e:  # a __post_init__ (library configs) refused a value
    raise ConfigError(f"{cls.__name__}: {e}") from e


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


def leaves(data: dict, prefix: str = "") -> dict:
  """{dotted key: value} of a nested mapping (lists are leaves)."""
  out = {}
  for k, v in data.items():
    if isinstance(v, dict) and v:
      out.update(leaves(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def nested(flat: dict) -> dict:
  """The nested mapping of {dotted key: value} (the inverse of :func:`leaves`)."""
  out: dict = {}
  for key, v in flat.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


@functools.lru_cache(maxsize=None)
def _schema(cls):
  """OmegaConf's structured schema of ``cls`` (read-only), or None when a type hint is not supported."""
  from omegaconf import OmegaConf
  from omegaconf.errors import OmegaConfBaseException
  try:
    schema = OmegaConf.structured(cls)
  except OmegaConfBaseException:
    return None
  OmegaConf.set_readonly(schema, True)
  return schema


def _located(cls, schema, layers, e) -> ConfigError:
  """A ConfigError naming the dotted key of an OmegaConf merge error. Some OmegaConf errors (a bad list
  element, a section given as a scalar) carry no key: each leaf is then merged alone to find it."""
  from omegaconf import OmegaConf
  from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
  if e.full_key is None:
    for layer in layers:
      for key, value in leaves(layer or {}).items():
        try:
          OmegaConf.merge(schema, nested({key: value}))
        except OmegaConfBaseException as inner:
          if inner.full_key is not None:
            return _located(cls, schema, [nested({key: value})], inner)
          return _misfit(cls, key, value, inner)
    return ConfigError(f"{cls.__name__}: {_first_line(e)}")
  key = str(e.full_key)
  if isinstance(e, ConfigKeyError):
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    known = sorted(f.name for f in dataclasses.fields(e.object_type)) if dataclasses.is_dataclass(
        e.object_type) else []
    return ConfigError(f"{parent or cls.__name__}: unknown config key {str(e.key)!r} (known: {', '.join(known)})")
  return ConfigError(f"{key}: {_first_line(e)}")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _misfit(cls, key: str, value, error) -> ConfigError:
  """The message of a value OmegaConf refused without naming it: a section given as a scalar, or a list
  element of the wrong type."""
  hint = cls
  for part in key.split("."):
    hint = typing.get_type_hints(_dataclass_in(hint) or hint).get(part) if dataclasses.is_dataclass(
        _dataclass_in(hint)) else None
  sub = _dataclass_in(hint)
  if sub is not None and not isinstance(value, dict):
    return ConfigError(f"{key}: expected a mapping of {sub.__name__} fields, got {value!r}")
  elem = [a for a in typing.get_args(hint) if a is not Ellipsis and a is not type(None)]
  while elem and typing.get_args(elem[0]):
    elem = [a for a in typing.get_args(elem[0]) if a is not Ellipsis and a is not type(None)]
  if isinstance(value, list) and elem and elem[0] in _TYPE_NAMES:
    for i, x in enumerate(value):
      ok = isinstance(x, bool) if elem[0] is bool else (isinstance(x, elem[0]) or (
          elem[0] is float and isinstance(x, int))) and not isinstance(x, bool)
      if not ok:
        return ConfigError(f"{key}[{i}]: expected {_TYPE_NAMES[elem[0]]}, got {x!r}")
  return ConfigError(f"{key}: {value!r} does not fit the field's type ({_first_line(error)})")


def _first_line(e) -> str:
  return (getattr(e, "msg", None) or str(e)).splitlines()[0].strip()


def _relocate_moved_keys(cls, data: dict) -> dict:
  """``data`` with the keys a config class lists in ``MOVED_KEYS`` (``{"old_key": "sub.new_key"}``: an older
  file's key that moved into a sub-config) at their new place, unless that is set too; nested configs too."""
  data = dict(data)
  for old, new in getattr(cls, "MOVED_KEYS", {}).items():
    if old in data:
      value = data.pop(old)
      *parents, leaf = new.split(".")
      node = data
      for p in parents:
        node[p] = dict(node[p]) if isinstance(node.get(p), dict) else {}
        node = node[p]
      node.setdefault(leaf, value)
  hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
  for k, v in data.items():
    sub = _dataclass_in(hints.get(k))
    if sub is not None and isinstance(v, dict):
      data[k] = _relocate_moved_keys(sub, v)
  return data


def _deep_update(base: dict, override: dict) -> dict:
  out = dict(base)
  for k, v in override.items():
    out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def _construct(cls, data: dict, path: str):
  """``cls(**data)`` with nested dataclass fields built from their mappings (lists -> tuples where the
  default is a tuple); unknown keys are refused by name."""
  names = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - set(names))
  if unknown:
    raise ConfigError(f"{path or cls.__name__}: unknown config key(s) {unknown} (known: {', '.join(sorted(names))})")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for k, v in data.items():
    sub = _dataclass_in(hints.get(k))
    if sub is not None and isinstance(v, dict):
      v = _construct(sub, v, _join(path, k))
    elif isinstance(v, list):
      v = tuple(v)
    kwargs[k] = v
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path or cls.__name__}: {e}") from e


def _dataclass_in(hint) -> Any:
  if dataclasses.is_dataclass(hint):
    return hint
  for arg in typing.get_args(hint):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def _join(path: str, name: str) -> str:
  return f"{path}.{name}" if path else name


# ------------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------------
def validate(config, _path: str = ""):
  """The one validation path of a built config, recursively: each field's type (OmegaConf's schema), its
  declared range / choices (:func:`setting`), then the class's ``cross_checks()``.

  Raises:
    ConfigError: naming the dotted field, the value and what is allowed.
  """
  if not _path and _schema(type(config)) is not None:
    _check_types(config)
  for f in dataclasses.fields(config):
    v, where = getattr(config, f.name), _join(_path, f.name)
    if dataclasses.is_dataclass(v):
      validate(v, where)
      continue
    _check_range(v, f, where)
  for field, message in (config.cross_checks() if hasattr(config, "cross_checks") else ()):
    raise ConfigError(f"{_join(_path, field)}: {message}")


def _check_types(config):
  """A config built in Python (``RunConfig(seed="a")``) goes through the schema as a loaded one does."""
  from omegaconf import OmegaConf
  from omegaconf.errors import OmegaConfBaseException
  schema = _schema(type(config))
  try:
    OmegaConf.merge(schema, to_dict(config))
  except OmegaConfBaseException as e:
    raise _located(type(config), schema, [to_dict(config)], e) from None


def _check_range(v, f: dataclasses.Field, where: str):
  meta = f.metadata.get("semrec") or {}
  values = v if isinstance(v, (list, tuple)) else (v,)
  for i, x in enumerate(values):
    at = f"{where}[{i}]" if isinstance(v, (list, tuple)) else where
    if isinstance(x, float) and not math.isfinite(x):
      raise ConfigError(f"{at}: {x!r} is not a finite number")
    if not meta or x is None:
      continue
    if meta.get("choices") is not None and x not in meta["choices"]:
      raise ConfigError(f"{at}: {x!r} is not one of {list(meta['choices'])}")
    if not isinstance(x, (int, float)) or isinstance(x, bool):
      continue
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (x <= lo if meta.get("min_exclusive") else x < lo):
      raise ConfigError(f"{at}: {x!r} must be {'>' if meta.get('min_exclusive') else '>='} {lo}{_span(meta)}")
    if hi is not None and (x >= hi if meta.get("max_exclusive") else x > hi):
      raise ConfigError(f"{at}: {x!r} must be {'<' if meta.get('max_exclusive') else '<='} {hi}{_span(meta)}")


def _span(meta: dict) -> str:
  if meta.get("min") is None or meta.get("max") is None:
    return ""
  return (f" (allowed: {'(' if meta['min_exclusive'] else '['}{meta['min']}, {meta['max']}"
          f"{')' if meta['max_exclusive'] else ']'})")


# ------------------------------------------------------------------------------------------------------------
# reference docs
# ------------------------------------------------------------------------------------------------------------
def field_docs(cls) -> dict:
  """{field: description} from the ``Attributes:`` section of ``cls``'s docstring (continuation lines
  joined)."""
  doc = inspect.getdoc(cls) or ""
  out, current, inside = {}, None, False
  for line in doc.splitlines():
    if line.strip() == "Attributes:":
      inside = True
      continue
    if not inside:
      continue
    if line and not line.startswith(" "):
      break
    stripped = line.strip()
    head = stripped.split(":", 1)
    if line.startswith("  ") and not line.startswith("   ") and len(head) == 2 and head[0].replace("_", "").isalnum():
      current = head[0]
      out[current] = head[1].strip()
    elif current and stripped:
      out[current] += " " + stripped
  return out


def reference_markdown(cls, _path: str = "") -> list:
  """Rows ``| key | default | meaning |`` of every leaf of ``cls`` (nested dataclasses expanded), from the
  fields and the ``Attributes:`` docstrings: the reference table of docs/config.md."""
  docs, rows = field_docs(cls), []
  instance = cls()
  for f in dataclasses.fields(cls):
    where = _join(_path, f.name)
    value = getattr(instance, f.name)
    if dataclasses.is_dataclass(value):
      rows.append(f"| **`{where}`** | | {docs.get(f.name, '').replace('``', '`')} |")
      rows += reference_markdown(type(value), where)
      continue
    shown = to_dict({"v": value})["v"]
    meta = f.metadata.get("semrec") or {}
    allowed = ""
    if meta.get("choices") is not None:
      allowed = (" Each of " if isinstance(value, tuple) or value is None and "Tuple" in str(f.type) else
                 " One of ") + ", ".join(f"`{c}`" for c in meta["choices"]) + "."
    elif meta.get("min") is not None or meta.get("max") is not None:
      allowed = f" Allowed: {_span_text(meta)}."
    text = docs.get(f.name, "").replace("``", "`")
    rows.append(f"| `{where}` | `{json.dumps(shown)}` | {text}{allowed} |")
  return rows


def _span_text(meta: dict) -> str:
  lo, hi = meta.get("min"), meta.get("max")
  if lo is not None and hi is not None:
    return (f"{'(' if meta['min_exclusive'] else '['}{lo}, {hi}{')' if meta['max_exclusive'] else ']'}")
  if lo is not None:
    return f"{'>' if meta['min_exclusive'] else '>='} {lo}"
  return f"{'<' if meta['max_exclusive'] else '<='} {hi}"
