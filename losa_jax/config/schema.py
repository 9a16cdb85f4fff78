# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The trainer config's schema: every key with its type, default, check, help.

`SCHEMA` lists every key of a trainer config (an `ml_collections.ConfigDict`,
see configs/*.py) by dotted path ("evals.*.data": the data of any named
eval). A dict key with keys of its own in SCHEMA takes only those; the other
dicts (input.data, schedule, optax, ...) are free-form. The table drives
`validate` (before any compilation), `with_defaults`, and the `--config`
flag's override checks and --help (`losa_jax.config.flags`, `describe`).
It also loads config files (`load_config`).
"""
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import math
import numbers
import os
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional
from typing import Sequence, Tuple

import ml_collections

from losa_jax.parallel import distributed as distributed_lib
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit

REQUIRED = "<required>"      # the default of a key every config must set


class Key(NamedTuple):
  """One config key.

  type: what the value is (object: several forms, see the help).
  default: what the trainer uses when the config leaves the key out (None:
    nothing, or a default set where the key is read); REQUIRED.
  check: `check(value, "config.<path>", hint=" (<help>)")` raises ValueError
    naming the key; called when the config sets the key.
  help: what the key means, for --help and the check's errors.
  member: a population may give each member its own value
    (`losa_jax.population.members.HPARAMS`).
  """
  type: Any
  default: Any = None
  check: Optional[Callable[..., None]] = None
  help: str = ""
  member: bool = False


def did_you_mean(name: str, valid) -> str:
  """" (did you mean 'rank'?)" for the closest valid key, else ""."""
  close = difflib.get_close_matches(name, [str(v) for v in valid], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _check_real(value, name: str, *, minimum: float = 0.0,
                exclusive: bool = False, maximum: Optional[float] = None,
                optional: bool = False, hint: str = "") -> None:
  """Raises ValueError unless `value` is a number in the stated range.

  The range is [minimum, maximum) ((minimum, maximum) if exclusive). NaN
  passes: a NaN learning rate is the trainer's to report, with the step.
  """
  if value is None and optional:
    return
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if ok and not math.isnan(value):
    ok = ((value > minimum if exclusive else value >= minimum) and
          (maximum is None or value < maximum))
  if not ok:
    allowed = f"{'>' if exclusive else '>='} {minimum}"
    if maximum is not None:
      allowed = f"in {'(' if exclusive else '['}{minimum}, {maximum})"
    raise ValueError(f"{name}={value!r}: must be a number {allowed}"
                     f"{' or None' if optional else ''}{hint}.")


def as_dict(x) -> dict:
  """A ConfigDict, mapping or None as a plain dict ({} for None)."""
  if x is None:
    return {}
  return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else dict(x)


def _int(minimum: int = 1, optional: bool = False):
  return functools.partial(model_lib.check_int, minimum=minimum,
                           optional=optional)


def _real(**kwargs):
  return functools.partial(_check_real, **kwargs)


def _choice(choices):
  return lambda value, name, hint="": model_lib.check_choice(value, name,
                                                             choices, hint)


def _call(fn: Callable[[Any], Any]):
  """A check that hands the value to a validator of its own."""
  return lambda value, name, hint="": fn(value)


def _options(fn: Callable[[Optional[dict], str], dict]):
  """A check of a method's options dict (`model_lib.*_options`)."""
  return lambda value, name, hint="": fn(as_dict(value), name)


def _check_patch(patch, name: str, hint: str = "") -> None:
  if (not isinstance(patch, (list, tuple)) or len(patch) != 2 or
      not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
              and p > 0 for p in patch)):
    raise ValueError(f"{name}={patch!r}: must be a pair of positive integers "
                     f"(height, width), e.g. (16, 16){hint}.")


# A backbone dict without a field gets the model's dataclass default.
_BACKBONE_DEFAULTS = {f.name: f.default
                      for kind in model_lib.BACKBONE_KINDS.values()
                      for f in dataclasses.fields(kind)}
_EVERY = "every n steps; 0 = only at the end"


def _backbone_key(name: str, check=None, help_: str = "") -> Key:
  default = _BACKBONE_DEFAULTS.get(name)
  return Key(int if default is None else type(default), default, check, help_)


# config.feature_cache's defaults, applied where the cache reads them
# (losa_jax.feature_cache.options); here so that --help shows them.
FEATURE_CACHE_DEFAULTS = dict(enabled=False, dir=None, dtype="bfloat16",
                              memory_budget_mb=2048, storage="auto",
                              batch_size=None)

SCHEMA: Dict[str, Key] = {
    "seed": Key(int, 0, _int(0), "the init seed", member=True),
    # Members that differ in init seed but share data_seed share the backbone
    # pass (one data order).
    "data_seed": Key(int, None, _int(0, optional=True),
                     "the data order's seed; None: seed", member=True),
    "num_classes": Key(int, REQUIRED, _int(), "classes of the new head; "
                       "labels are 0..num_classes-1"),
    "image_size": Key(object, 224, None, "an int or (height, width); "
                      "(num_frames, height, width) for a ViViT backbone"),
    "total_steps": Key(int, None, _int(optional=True),
                       "None: train for config.total_epochs"),
    "total_epochs": Key(float, None, _real(exclusive=True, optional=True),
                        "None: train for config.total_steps"),
    "input": Key(dict, REQUIRED, None, "the training data"),
    "input.data": Key(dict, REQUIRED, None, "the source: losa_jax.datasets"),
    "input.batch_size": Key(int, REQUIRED, _int(), "examples per step, over "
                            "all devices and hosts"),
    "input.pp": Key(str, REQUIRED, None, "the preprocessing: losa_jax.pp"),
    "input.shuffle": Key(bool, True, None, "False: every epoch in order"),
    "evals": Key(dict, None, None, "named evaluations"),
    "evals.*": Key(dict, None, None, "one evaluation"),
    "evals.*.data": Key(dict, REQUIRED, None, "the source"),
    "evals.*.pp": Key(str, None, None, "the preprocessing"),
    "evals.*.batch_size": Key(int, None, _int(optional=True),
                              "None uses config.input.batch_size"),
    "evals.*.every": Key(int, None, _int(0, optional=True),
                         "0 = only at the end; None uses config.eval_every"),
    "evals.*.type": Key(str, "classification", None,
                        "the evaluator: losa_jax.evaluators"),
    "evals.*.average": Key(str, "logits", None,
                           "video_multiview: 'logits' or 'probs'"),
    "model": Key(dict, REQUIRED, None, "the model: losa_jax.models.model"),
    "model.method": Key(str, "losa", _choice(model_lib.METHODS),
                        "what is trained"),
    "model.backbone": Key(dict, None, None, "the frozen ViT or ViViT"),
    "model.backbone.kind": Key(str, "vit", _choice(sorted(
        model_lib.BACKBONE_KINDS)), "'vivit' takes clips"),
    "model.backbone.variant": Key(str, None, _call(vit.decode_variant),
                                  "e.g. 'B/16': sets the sizes below"),
    **{f"model.backbone.{k}": _backbone_key(k, _int()) for k in (
        "width", "depth", "num_heads")},
    "model.backbone.mlp_dim": _backbone_key(
        "mlp_dim", _int(optional=True), "None: 4 * width"),
    "model.backbone.patch_size": _backbone_key("patch_size", _check_patch),
    "model.backbone.dropout": _backbone_key("dropout", _real(maximum=1.0)),
    "model.backbone.pool_type": _backbone_key("pool_type",
                                              _choice(vit.POOL_TYPES)),
    **{f"model.backbone.{k}": _backbone_key(k) for k in (
        "posemb", "rep_size", "head_zeroinit", "scan", "remat_policy",
        "dtype_mm")},
    "model.backbone.temporal_patch_size": _backbone_key(
        "temporal_patch_size", _int(), "frames per tubelet"),
    "model.backbone.num_frames": _backbone_key("num_frames",
                                               _int(optional=True)),
    # Every method's options are checked, not only the chosen one's: a config
    # file that switches methods by an arg keeps them all.
    "model.losa": Key(dict, None, _options(model_lib.losa_options),
                      "LoSA's options: losa_jax.models.model.LOSA_DEFAULTS"),
    **{f"model.losa.{k}": Key(type(v), v)
       for k, v in model_lib.LOSA_DEFAULTS.items()},
    "model.lora": Key(dict, None, _options(model_lib.lora_options)),
    **{f"model.lora.{k}": Key(type(v), v)
       for k, v in model_lib.LORA_DEFAULTS.items()},
    "model.adapter": Key(dict, None, _options(model_lib.adapter_options)),
    **{f"model.adapter.{k}": Key(type(v), v)
       for k, v in model_lib.ADAPTER_DEFAULTS.items()},
    "model.st_adapter": Key(dict, None, _options(
        model_lib.st_adapter_options), "ST-Adapter's options (video "
                            "backbones): models.model.ST_ADAPTER_DEFAULTS"),
    **{f"model.st_adapter.{k}": Key(object if v is None else type(v), v)
       for k, v in model_lib.ST_ADAPTER_DEFAULTS.items()},
    **{f"model.{method}": Key(dict, None, _options(functools.partial(
        model_lib.side_options, method)), f"{method.upper()}'s options: "
                              f"losa_jax.models.{mod.__name__.split('.')[-1]}")
       for method, mod in model_lib.SIDE_MODULES.items()},
    **{f"model.{method}.{k}": Key(type(v), v, None, mod.HELP[k])
       for method, mod in model_lib.SIDE_MODULES.items()
       for k, v in mod.DEFAULTS.items()},
    "model_init": Key(str, "", None, "the backbone's params file (npz)"),
    "model_load": Key(dict, None, None, "how model_init is read"),
    "model_load.dont_load": Key(tuple, (), None, "param regexes not loaded"),
    "model_load.param_dtype": Key(str, None, _choice(
        (None, "", "float32", "bfloat16", "float16")), "the backbone's"),
    "model_load.inflate": Key(str, None, None, "'central' or 'average': an "
                              "image model_init into a ViViT"),
    "optax_name": Key(str, "adamw", None, "the optimizer"),
    "optax": Key(dict, None, None, "the optimizer's arguments"),
    "lr": Key(float, 1e-3, _real(), "the schedule's peak", member=True),
    "wd": Key(float, 0.0, _real(), "decoupled weight decay", member=True),
    "wd_mults": Key(object, None, None, "[(param regex, wd multiplier)]"),
    "lr_mults": Key(object, None, None, "[(param regex, lr multiplier)]"),
    "schedule": Key(dict, None, None, "the learning-rate schedule"),
    "grad_clip_norm": Key(float, None, _real(optional=True),
                          "0 or None: no clipping", member=True),
    "label_smoothing": Key(float, 0.0, _real(maximum=1.0), "", member=True),
    "log_every": Key(int, 10, _int(), "log every n steps"),
    "eval_every": Key(int, 0, _int(0), _EVERY),
    "ckpt_every": Key(int, 0, _int(0), _EVERY),
    "keep_ckpts": Key(int, 3, _int(optional=True),
                      "checkpoints kept; None keeps all"),
    # Sizes are checked against the devices when the mesh is built.
    "mesh": Key(object, None, _call(sharding_lib.check_mesh),
                "[(axis, size)], one size may be -1; None: [('data', -1)]; "
                "batches split over 'data' and 'fsdp'"),
    "sharding_strategy": Key(
        object, sharding_lib.DEFAULT_STRATEGY,
        lambda v, name, hint="": v is None or sharding_lib.check_strategy(v),
        "[(param regex, rule)], first match wins; the default FSDP-shards the "
        "backbone over an 'fsdp' mesh axis if there is one"),
    "distributed": Key(dict, None, _call(distributed_lib.validate),
                       "multi-process launch (losa_jax.parallel.distributed):"
                       " None: from the environment"),
    "feature_cache": Key(dict, None, None, "backbone features computed once "
                         "per example (losa_jax.feature_cache)"),
    **{f"feature_cache.{k}": Key(object if v is None else type(v), v)
       for k, v in FEATURE_CACHE_DEFAULTS.items() if k != "batch_size"},
    "feature_cache.batch_size": Key(int, None, _int(optional=True)),
    "pp_modules": Key(object, None, None, "extra pp op modules to import "
                      "(family names or dotted paths)"),
    "population": Key(dict, None, None, "many side networks on one backbone "
                      "pass: losa_jax.population"),
}
MEMBER_KEYS = tuple(k for k, key in SCHEMA.items() if key.member)


def _pattern(path: Sequence[str]) -> str:
  """("evals", "val", "pp") -> "evals.*.pp": the path's SCHEMA entry."""
  out = []
  for p in path:
    out.append("*" if ".".join([*out, "*"]) in SCHEMA else str(p))
  return ".".join(out)


def schema_keys(path: Sequence[str]) -> Optional[Tuple[str, ...]]:
  """Valid keys of the config dict at `path` (() = root); None: free-form."""
  prefix = _pattern(path) + "." if path else ""
  keys = tuple(k[len(prefix):] for k in SCHEMA if k.startswith(prefix) and
               "." not in k[len(prefix):])
  return keys or None


def _check_dict(node: Mapping[str, Any], path: Tuple[str, ...]) -> None:
  """Checks a dict whose keys SCHEMA fixes, and the fixed dicts inside it."""
  where = ".".join(("config", *path))
  valid = schema_keys(path)
  if valid == ("*",):                   # named entries (config.evals)
    for name, entry in node.items():
      _check_dict(as_dict(entry), (*path, name))
    return
  bad = sorted(set(node) - set(valid))
  if bad:
    hint = "; ".join(repr(b) + did_you_mean(b, valid) for b in bad)
    raise ValueError(f"Unknown config field(s) in {where}: {hint}. Valid: "
                     f"{sorted(valid)}.")
  for k in valid:
    key, value, name = SCHEMA[_pattern((*path, k))], node.get(k), f"{where}.{k}"
    if value is None and key.default is REQUIRED:
      raise ValueError(f"{name} is required.")
    if k in node and key.check is not None:
      key.check(value, name, hint=f" ({key.help})" if key.help else "")
    # A dict with a check of its own (model.losa: model_lib.losa_options)
    # checks its keys there, with the model's messages.
    if value is not None and schema_keys((*path, k)) and key.check is None:
      _check_dict(as_dict(value), (*path, k))


def validate(config) -> None:
  """Raises ValueError naming the first bad key; cheap (no compilation)."""
  _check_dict(as_dict(config), ())
  if config.get("total_steps") is None and config.get("total_epochs") is None:
    raise ValueError("Set config.total_steps or config.total_epochs.")
  model = as_dict(config.model)
  _check_heads(as_dict(model.get("backbone")))
  input_shape(config)          # config.image_size against the backbone kind
  method = model.get("method", "losa")
  if method == "lora":
    vit.lora_targets(as_dict(model.get("lora")).get("targets", "qv"))
  kind = as_dict(model.get("backbone")).get("kind", "vit")
  if method in model_lib.VIDEO_ONLY_METHODS and kind != "vivit":
    raise ValueError(f"config.model.method={method!r} needs a video backbone, "
                     f"config.model.backbone.kind='vivit' (got {kind!r}).")
  if (as_dict(config.get("feature_cache")).get("enabled")
      and method not in model_lib.SIDE_METHODS):
    raise ValueError(f"config.feature_cache.enabled needs a side method, "
                     f"model.method in {model_lib.SIDE_METHODS} (got "
                     f"{method!r}): other methods change the backbone's "
                     "features, so there is nothing fixed to cache.")


def _check_heads(backbone: Dict[str, Any]) -> None:
  """Attention splits the width evenly over the heads."""
  where = "config.model.backbone"
  dims = {**_BACKBONE_DEFAULTS, **vit.decode_variant(backbone.get("variant")),
          **{k: backbone[k] for k in ("width", "num_heads") if k in backbone}}
  if dims["width"] % dims["num_heads"]:
    source = {k: (f"{where}.{k}" if k in backbone else
                  f"{where}.variant={backbone['variant']!r}"
                  if backbone.get("variant") else "the default")
              for k in ("width", "num_heads")}
    divisors = [h for h in range(1, min(dims["width"], 64) + 1)
                if dims["width"] % h == 0]
    raise ValueError(
        f"{where}: width={dims['width']} (from {source['width']}) is not "
        f"divisible by num_heads={dims['num_heads']} (from "
        f"{source['num_heads']}): each head gets width / num_heads channels. "
        f"Pick num_heads among {divisors} or change the width.")


def input_shape(config) -> Tuple[int, ...]:
  """The per-example input the model is built for, from config.image_size.

  Returns (H, W, 3) for an image backbone (image_size an int or (H, W)) and
  (T, H, W, 3) for a video one (config.model.backbone.kind="vivit",
  image_size (num_frames, H, W)); the model always takes 3 channels.
  Raises ValueError naming config.image_size when it does not fit.
  """
  size = config.get("image_size", SCHEMA["image_size"].default)
  backbone = as_dict((config.get("model") or {}).get("backbone"))
  video = backbone.get("kind", "vit") == "vivit"
  want = ("(num_frames, height, width), e.g. (8, 224, 224): a ViViT backbone "
          "(config.model.backbone.kind='vivit') takes clips" if video else
          "a positive int or (height, width), e.g. 224 or (224, 224)")
  if isinstance(size, numbers.Integral) and not isinstance(size, bool):
    dims = () if video else (size,) * 2   # an int gives no frame count
  else:
    dims = tuple(size) if isinstance(size, (list, tuple)) else ()
  ok = len(dims) == (3 if video else 2) and all(
      isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
      for d in dims)
  if not ok:
    raise ValueError(f"config.image_size={size!r}: must be {want}.")
  frames = backbone.get("num_frames")
  if video and frames is not None and frames != dims[0]:
    raise ValueError(f"config.image_size={size!r} gives {dims[0]} frames but "
                     f"config.model.backbone.num_frames={frames}: make them "
                     "agree.")
  return (*(int(d) for d in dims), 3)


def data_seed_of(config) -> int:
  """The data order's seed: config.data_seed, else config.seed."""
  ds = config.get("data_seed")
  return int(config.get("seed", 0) if ds is None else ds)


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy with every optional top-level key present.

  Only the top level: the nested defaults (e.g. model.losa's) apply where
  the keys are read, so that the checkpoint's config fingerprint stays that
  of the config as written.
  """
  c = ml_collections.ConfigDict(as_dict(config))
  for k, key in SCHEMA.items():
    if "." not in k and k not in c and key.default not in (None, REQUIRED):
      c[k] = key.default
  return c


def describe() -> str:
  """Every key, one a line: `path: type = default (help)`."""
  lines = []
  for path, key in SCHEMA.items():
    default = repr(key.default) if key.default is not REQUIRED else REQUIRED
    default = default if len(default) <= 30 else default[:26] + " ..."
    lines.append(f"{path}: {getattr(key.type, '__name__', key.type)} = "
                 f"{default}" + (f" ({key.help})" if key.help else ""))
  return "\n".join(lines)


# --- config files -------------------------------------------------------------

# The repo's configs/ folder (present in a source checkout, not in a wheel).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def config_path(name: str) -> str:
  """Path of a config file of the repo's configs/ folder, e.g. "default"."""
  path = os.path.join(CONFIGS_DIR, f"{name}.py")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No config file {path}: the configs/ folder ships with a source "
        "checkout of losa_jax, not with the wheel. Pass the path of a config "
        "file (--config path/to/config.py[:args]).")
  return path


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`"path/to/config.py[:arg]"` -> `get_config(arg)`, as `--config` does.

  Loads the file by path (like ml_collections' config_flags), so library
  code never imports the repo's `configs` package. Config files import
  `configs.common`, so the repo root must be importable: it is when a
  command runs from the repo root (`python -m ...`) or after
  `pip install -e .`.
  """
  path, _, arg = spec.partition(".py:")
  path = path if path.endswith(".py") else path + ".py"
  module = load_config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def load_config_module(path: str):
  """A config file as a module, loaded by path (its get_config and any
  constants it declares, e.g. AUTO_ARGS)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file not found: {path!r}.")
  name = "losa_config_" + hashlib.sha1(path.encode()).hexdigest()[:8]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} has no get_config(arg=None) function.")
  return module
