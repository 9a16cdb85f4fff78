# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Config schema and validation: fail before any compilation, name the key.

A trainer config is an `ml_collections.ConfigDict` (see configs/*.py). The
schema below lists every field the trainer reads; anything else is a typo
and is refused with the list of valid keys.

* `validate(config)`: names, ranges and shapes of every field, before any
  compilation (errors read `config.<path>=<value>: <what is allowed>`).
* `define_config_flag()`: the `--config` flag of the CLIs; a
  `--config.<path>=...` override of a key the config lacks fails with the
  full key, the valid keys at that level and a did-you-mean.
* `check_batch(batch, config)`: the first batch of the data against the
  input the model is built for (image shape, channels, label range).
"""
import dataclasses
import difflib
import hashlib
import importlib.util
import math
import numbers
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import flags
import ml_collections
from ml_collections.config_flags import config_flags as ml_config_flags
from ml_collections.config_flags import config_path as ml_config_path

from losa_jax.parallel import distributed as distributed_lib
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit

# field -> default (None: required or optional without default).
TOP_LEVEL: Dict[str, Any] = dict(
    seed=0,
    num_classes=None,
    image_size=224,
    total_steps=None,
    total_epochs=None,
    input=None,
    evals=None,
    model=None,
    model_init="",
    model_load=None,
    optax_name="adamw",
    optax=None,
    lr=1e-3,
    wd=0.0,
    wd_mults=None,
    lr_mults=None,
    schedule=None,
    grad_clip_norm=None,
    label_smoothing=0.0,
    log_every=10,
    eval_every=0,
    ckpt_every=0,
    keep_ckpts=3,
    # [(axis, size)], one size may be -1; None = [("data", -1)]. Batches are
    # split over "data" and "fsdp"; see losa_jax.parallel.sharding.
    mesh=None,
    # [(regex over param names, rule)], first match wins; the default
    # FSDP-shards the frozen backbone over a "fsdp" mesh axis if there is one.
    sharding_strategy=sharding_lib.DEFAULT_STRATEGY,
    # Multi-process launch (losa_jax.parallel.distributed): None = from the
    # environment (LOSA_* variables, or a TPU pod / SLURM / Open MPI cluster);
    # or dict(coordinator_address="host:port", num_processes=N, process_id=i,
    # local_device_ids=[...]), dict(auto=True) or dict(auto=False).
    distributed=None,
    feature_cache=None,
    # Extra pp op modules to import (family names such as "video" or dotted
    # module paths); the built-in families load on demand anyway.
    pp_modules=None,
    # The data order's seed (default: seed). A population's members may
    # differ in init seed yet share the data order, and so the backbone pass.
    data_seed=None,
    # Many side networks on one backbone pass: see losa_jax.population.
    population=None,
)
INPUT_KEYS = ("data", "batch_size", "pp", "shuffle")
EVAL_KEYS = ("data", "pp", "batch_size", "every", "type", "average")
MODEL_KEYS = ("method", "backbone", "losa", "lora", "adapter")
# inflate: "central" | "average" inflates an image model_init into a ViViT.
MODEL_LOAD_KEYS = ("dont_load", "param_dtype", "inflate")
# config.feature_cache: see losa_jax.feature_cache.DEFAULTS.
FEATURE_CACHE_KEYS = ("enabled", "dir", "dtype", "memory_budget_mb",
                      "storage", "batch_size")
BACKBONE_KEYS = ("variant", "width", "depth", "mlp_dim", "num_heads",
                 "patch_size", "posemb", "rep_size", "dropout", "pool_type",
                 "head_zeroinit", "scan", "remat_policy", "dtype_mm",
                 # Video (model.backbone.kind="vivit", losa_jax.models.vivit).
                 "kind", "temporal_patch_size", "num_frames")


def _did_you_mean(name: str, valid) -> str:
  """" (did you mean 'rank'?)" for the closest valid key, else ""."""
  close = difflib.get_close_matches(name, [str(v) for v in valid], n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(keys, valid, where):
  bad = sorted(set(keys) - set(valid))
  if bad:
    hint = "; ".join(repr(b) + _did_you_mean(b, valid) for b in bad)
    raise ValueError(f"Unknown config field(s) in {where}: {hint}. Valid: "
                     f"{sorted(valid)}.")


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


def _as_dict(x):
  if x is None:
    return {}
  return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else dict(x)


def validate(config) -> None:
  """Raises ValueError naming the first bad field; cheap (no compilation)."""
  _unknown(config.keys(), TOP_LEVEL, "config")
  for key in ("num_classes", "input", "model"):
    if config.get(key) is None:
      raise ValueError(f"config.{key} is required.")
  if config.get("total_steps") is None and config.get("total_epochs") is None:
    raise ValueError("Set config.total_steps or config.total_epochs.")
  inp = _as_dict(config.input)
  _unknown(inp, INPUT_KEYS, "config.input")
  for key in ("data", "batch_size", "pp"):
    if key not in inp:
      raise ValueError(f"config.input.{key} is required.")
  for name, ev in _as_dict(config.get("evals")).items():
    _unknown(_as_dict(ev), EVAL_KEYS, f"config.evals.{name}")
    if "data" not in ev:
      raise ValueError(f"config.evals.{name}.data is required.")
  model = _as_dict(config.model)
  _unknown(model, MODEL_KEYS, "config.model")
  method = model.get("method", "losa")
  if method not in model_lib.METHODS:
    raise ValueError(f"config.model.method={method!r} is not a method; "
                     f"choose one of {list(model_lib.METHODS)}.")
  backbone = _as_dict(model.get("backbone"))
  _unknown(backbone, BACKBONE_KEYS, "config.model.backbone")
  vit.decode_variant(backbone.get("variant"))
  if backbone.get("pool_type", "gap") not in vit.POOL_TYPES:
    raise ValueError(f"config.model.backbone.pool_type="
                     f"{backbone['pool_type']!r}: use one of {vit.POOL_TYPES}.")
  _check_backbone(backbone)
  input_shape(config)          # config.image_size against the backbone kind
  # Every method's options are checked, not only the chosen one's: a config
  # file that switches methods by an arg keeps them all.
  model_lib.losa_options(_as_dict(model.get("losa")), "config.model.losa")
  model_lib.lora_options(_as_dict(model.get("lora")), "config.model.lora")
  model_lib.adapter_options(_as_dict(model.get("adapter")),
                            "config.model.adapter")
  if method == "lora":
    vit.lora_targets(_as_dict(model.get("lora")).get("targets", "qv"))
  model_load = _as_dict(config.get("model_load"))
  _unknown(model_load, MODEL_LOAD_KEYS, "config.model_load")
  if model_load.get("param_dtype") not in (None, "", "float32", "bfloat16",
                                           "float16"):
    raise ValueError(f"config.model_load.param_dtype="
                     f"{model_load['param_dtype']!r}: use 'float32', "
                     "'bfloat16' or 'float16'.")
  cache = _as_dict(config.get("feature_cache"))
  _unknown(cache, FEATURE_CACHE_KEYS, "config.feature_cache")
  if cache.get("enabled") and method != "losa":
    raise ValueError(f"config.feature_cache.enabled needs model.method='losa' "
                     f"(got {method!r}): other methods change the backbone's "
                     "features, so there is nothing fixed to cache.")
  _check_numbers(config)
  # Scale-out fields: their form only; sizes are checked against the devices
  # when the mesh is built.
  sharding_lib.check_mesh(config.get("mesh"))
  if config.get("sharding_strategy") is not None:
    sharding_lib.check_strategy(config.sharding_strategy)
  distributed_lib.validate(config.get("distributed"))


def _check_numbers(config) -> None:
  """Counts, sizes and schedule numbers: type and range, named by key."""
  check_int = model_lib.check_int
  check_int(config.num_classes, "config.num_classes",
            hint=" (classes of the new head; labels are 0..num_classes-1)")
  check_int(config.get("seed", 0), "config.seed", minimum=0)
  # Either may be left None (total_steps wins when both are set).
  check_int(config.get("total_steps"), "config.total_steps", optional=True,
            hint=" (None: train for config.total_epochs)")
  _check_real(config.get("total_epochs"), "config.total_epochs",
              exclusive=True, optional=True,
              hint=" (None: train for config.total_steps)")
  check_int(config.get("log_every", TOP_LEVEL["log_every"]),
            "config.log_every", hint=" (log every n steps)")
  for key in ("eval_every", "ckpt_every"):
    check_int(config.get(key, TOP_LEVEL[key]), f"config.{key}", minimum=0,
              hint=" (every n steps; 0 = only at the end)")
  check_int(config.get("keep_ckpts", TOP_LEVEL["keep_ckpts"]),
            "config.keep_ckpts", optional=True,
            hint=" (checkpoints kept; None keeps all)")
  for key in ("lr", "wd"):
    _check_real(config.get(key, TOP_LEVEL[key]), f"config.{key}")
  _check_real(config.get("grad_clip_norm"), "config.grad_clip_norm",
              optional=True, hint=" (0 or None: no clipping)")
  _check_real(config.get("label_smoothing", 0.0), "config.label_smoothing",
              maximum=1.0)
  check_int(config.input.batch_size, "config.input.batch_size",
            hint=" (examples per step, over all devices and hosts)")
  for name, ev in _as_dict(config.get("evals")).items():
    check_int(ev.get("batch_size"), f"config.evals.{name}.batch_size",
              optional=True, hint=" (None uses config.input.batch_size)")
    check_int(ev.get("every"), f"config.evals.{name}.every", minimum=0,
              optional=True, hint=" (0 = only at the end; None uses "
              "config.eval_every)")
  cache = _as_dict(config.get("feature_cache"))
  check_int(cache.get("batch_size"), "config.feature_cache.batch_size",
            optional=True)


def _check_backbone(backbone: Dict[str, Any]) -> None:
  """The backbone's sizes; the variant's values are valid by construction."""
  where = "config.model.backbone"
  check_int = model_lib.check_int
  kind = backbone.get("kind", "vit")
  if kind not in model_lib.BACKBONE_KINDS:
    raise ValueError(f"{where}.kind={kind!r}: use one of "
                     f"{sorted(model_lib.BACKBONE_KINDS)}.")
  for key in ("width", "depth", "num_heads"):
    if key in backbone:
      check_int(backbone[key], f"{where}.{key}")
  check_int(backbone.get("mlp_dim"), f"{where}.mlp_dim", optional=True,
            hint=" (None: 4 * width)")
  if "patch_size" in backbone:
    patch = backbone["patch_size"]
    if (not isinstance(patch, (list, tuple)) or len(patch) != 2 or
        not all(isinstance(p, numbers.Integral) and not isinstance(p, bool)
                and p > 0 for p in patch)):
      raise ValueError(f"{where}.patch_size={patch!r}: must be a pair of "
                       "positive integers (height, width), e.g. (16, 16).")
  check_int(backbone.get("temporal_patch_size", 2),
            f"{where}.temporal_patch_size", hint=" (frames per tubelet)")
  check_int(backbone.get("num_frames"), f"{where}.num_frames", optional=True)
  _check_real(backbone.get("dropout", 0.0), f"{where}.dropout", maximum=1.0)
  # Attention splits the width evenly over the heads.
  dims = {**_VIT_FIELD_DEFAULTS, **vit.decode_variant(backbone.get("variant")),
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


# vit._Model's field defaults (what a backbone dict without them gets).
_VIT_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(
    vit._Model) if f.name in ("width", "num_heads")}  # pylint: disable=protected-access


def input_shape(config) -> Tuple[int, ...]:
  """The per-example input the model is built for, from config.image_size.

  Returns (H, W, 3) for an image backbone (image_size an int or (H, W)) and
  (T, H, W, 3) for a video one (config.model.backbone.kind="vivit",
  image_size (num_frames, H, W)); the model always takes 3 channels.
  Raises ValueError naming config.image_size when it does not fit.
  """
  size = config.get("image_size", TOP_LEVEL["image_size"])
  backbone = _as_dict((config.get("model") or {}).get("backbone"))
  video = backbone.get("kind", "vit") == "vivit"
  want = ("(num_frames, height, width), e.g. (8, 224, 224): a ViViT backbone "
          "(config.model.backbone.kind='vivit') takes clips" if video else
          "a positive int or (height, width), e.g. 224 or (224, 224)")
  if isinstance(size, numbers.Integral) and not isinstance(size, bool):
    dims = (size,) * 2
    if video:
      dims = ()       # an int gives no frame count: refused below
  elif isinstance(size, (list, tuple)):
    dims = tuple(size)
  else:
    dims = ()
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


def total_steps_of(config, num_examples: int) -> int:
  """config.total_steps, or total_epochs over `num_examples` examples."""
  if config.get("total_steps"):
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_examples /
                       config.input.batch_size))


def data_seed_of(config) -> int:
  """The data order's seed: config.data_seed, else config.seed."""
  ds = config.get("data_seed")
  return int(config.get("seed", 0) if ds is None else ds)


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy with every optional top-level field present."""
  c = ml_collections.ConfigDict(_as_dict(config))
  for k, v in TOP_LEVEL.items():
    if k not in c and v is not None:
      c[k] = v
  return c


# --- config files ----------------------------------------------------------------

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


# --- command-line overrides ---------------------------------------------------

# The keys of the config dicts that the schema fixes, by path from the config
# root ("*": any name, e.g. an eval split). The other dicts (input.data,
# schedule, optax, ...) are free-form: they take the keys their file sets.
_SCHEMA: Dict[Tuple[str, ...], Tuple[str, ...]] = {
    (): tuple(TOP_LEVEL),
    ("input",): INPUT_KEYS,
    ("evals", "*"): EVAL_KEYS,
    ("model",): MODEL_KEYS,
    ("model", "backbone"): BACKBONE_KEYS,
    ("model", "losa"): tuple(model_lib.LOSA_DEFAULTS),
    ("model", "lora"): tuple(model_lib.LORA_DEFAULTS),
    ("model", "adapter"): tuple(model_lib.ADAPTER_DEFAULTS),
    ("model_load",): MODEL_LOAD_KEYS,
    ("feature_cache",): FEATURE_CACHE_KEYS,
}


def schema_keys(path: Sequence[str]) -> Optional[Tuple[str, ...]]:
  """Valid keys of the config dict at `path` (() = root); None: free-form."""
  path = tuple(path)
  if len(path) == 2 and path[0] == "evals":
    path = ("evals", "*")
  return _SCHEMA.get(path)


class ConfigOverrideError(flags.Error, ValueError):
  """A `--config.<path>=...` override names a key the config does not hold.

  A flags.Error, so that `absl.app.run` reports it as a flag error (one line
  and exit status 1) instead of a traceback.
  """


def check_override(config, override: str, flag_name: str = "config") -> None:
  """Raises ConfigOverrideError unless the dotted `override` is in `config`.

  ml_collections looks each override up in the locked config and fails on a
  missing key with a bare `AttributeError: "'key'"`; this names the full key
  (`config.model.losa.bogus`), the valid keys at that level and the closest
  one. A key that the schema allows but the config file does not set cannot
  be added from the command line either (the config is locked): the error
  says so.

  Args:
    config: the config as loaded from the file, before the overrides.
    override: the path after `--<flag_name>.`, e.g. "model.losa.rank".
    flag_name: the config flag's name, the root of the paths in messages.
  """
  walked = []
  node = config
  for field in ml_config_path.split(override):
    where = ".".join([flag_name, *walked])
    full = f"{where}.{field}"
    if not isinstance(field, str):
      return                # a list index: ml_collections checks those
    if node is None:
      raise ConfigOverrideError(
          f"--{full}: {where} is None in this config file, so it has no "
          f"field {field!r} to override; set {where} to a dict in the config "
          "file.")
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)):
      raise ConfigOverrideError(
          f"--{full}: {where}={node!r} is a {type(node).__name__}, not a "
          f"dict, so it has no field {field!r}; override --{where} itself.")
    if field in node:
      node = node[field]
      walked.append(field)
      continue
    schema = schema_keys(walked)
    if schema is not None and field in schema:
      raise ConfigOverrideError(
          f"--{full}: {full} is a valid key, but this config file does not "
          "set it, and only the keys a config sets can be overridden on the "
          "command line (the config is locked). Set "
          f"{full.split('.', 1)[1]} in the config file (or through its :args).")
    valid = sorted(set(node.keys()) | set(schema or ()))
    raise ConfigOverrideError(
        f"--{full}: unknown config key {full}{_did_you_mean(field, valid)}. "
        f"Valid keys in {where}: {valid}.")


class _CheckedConfigFlag(ml_config_flags._ConfigFlag):  # pylint: disable=protected-access
  """ml_collections' config-file flag whose overrides are checked first.

  `_initialize_missing_parent_fields` is the first step of
  `_ConfigFlag._parse` that sees both the loaded config and the override
  paths, before their types are looked up (where a missing key fails).
  tests/test_config_validation.py pins this hook.
  """

  def _initialize_missing_parent_fields(self, config, overrides):
    if isinstance(config, (ml_collections.ConfigDict, Mapping)):
      for override in overrides:
        check_override(config, override, self.name)
    super()._initialize_missing_parent_fields(config, overrides)


# The --config flag that define_config_flag() makes belongs to its caller
# (train, predict): their --helpshort lists it.
flags.disclaim_key_flags()


def define_config_flag(
    name: str = "config",
    help_string: str = "Training config file (configs/*.py[:args]).",
    flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file(name, lock_config=True)`, checked.

  Same flag (`--config path.py[:args]`, `--config.a.b=value` overrides of a
  locked config), except that an override of a key the config lacks fails
  as a flag error naming the full key and the valid keys (`check_override`).
  """
  flag = _CheckedConfigFlag(
      parser=ml_config_flags.ConfigFileFlagParser(name=name, lock_config=True),
      serializer=flags.ArgumentSerializer(), name=name, default=None,
      help_string=help_string, flag_values=flag_values)
  return flags.DEFINE_flag(flag, flag_values)


# --- data against the model ---------------------------------------------------
