# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Helpers shared by the config files."""
import ast


def parse_arg(arg, lazy=False, **spec):
  """'method=lora,rank=4,runlocal' -> dict with types taken from `spec`.

  A bare word sets a bool to True; the first spec entry may be given
  unnamed ('lora' == 'method=lora'). Unknown keys are refused by name.
  """
  out = dict(spec)
  if not arg:
    return out
  first = next(iter(spec)) if spec else None
  for item in (s for s in arg.split(",") if s.strip()):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      if isinstance(spec.get(key), bool):
        out[key] = True
        continue
      if first is None:
        raise ValueError(f"Config arg {item!r} has no '='.")
      key, value = first, item
    if key not in spec:
      if lazy:
        out[key] = value
        continue
      raise ValueError(f"Unknown config arg {key!r}; valid: {sorted(spec)}.")
    default = spec[key]
    if isinstance(default, bool):
      out[key] = value.strip().lower() in ("1", "true", "yes", "y")
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
      out[key] = type(default)(ast.literal_eval(value.strip()))
    else:
      out[key] = value.strip()
  return out


def model(method: str, backbone: dict, rank: int, **losa) -> dict:
  """`config.model`: `method` on `backbone`, with `rank` sizing every method
  alike (LoSA and LoRA rank, adapter bottleneck), so that method= alone
  switches between them; `losa` adds LoSA's other options."""
  return dict(method=method, backbone=backbone, losa=dict(rank=rank, **losa),
              lora=dict(rank=rank), adapter=dict(dim=rank))


def side_dtype(name: str) -> dict:
  """LoSA's `dtype` option from a config arg: {} (the library default,
  docs/method.md) for an empty string, else {"dtype": name}."""
  return {"dtype": name} if name else {}


def adamw_cosine(c, *, lr: float, warmup: dict, log_every: int,
                 ckpt_every: int, wd: float = 1e-4, grad_clip_norm=None,
                 eval_every=None, keep_ckpts=None) -> None:
  """Sets the training fields the config files share on ConfigDict `c`.

  AdamW at `lr` with decoupled weight decay `wd`, a cosine schedule after
  `warmup` (dict(warmup_steps=n) or dict(warmup_percent=p)), the logging and
  checkpoint cadence, and a data-parallel mesh over every device.
  grad_clip_norm, eval_every, keep_ckpts: set when given; None leaves the
  trainer's default (losa_jax.config.schema.SCHEMA).
  """
  c.optax_name = "adamw"
  c.lr = lr
  c.wd = wd
  c.schedule = dict(warmup, decay_type="cosine")
  c.log_every = log_every
  c.ckpt_every = ckpt_every
  c.mesh = [("data", -1)]
  for key, value in (("grad_clip_norm", grad_clip_norm),
                     ("eval_every", eval_every), ("keep_ckpts", keep_ckpts)):
    if value is not None:
      c[key] = value


# `population=<kind>` of the config files: the search spaces of
# losa_jax.population (members.py documents the keys).
POPULATIONS = ("default", "random", "mixed")


def population(kind: str, seed: int = 0, runlocal: bool = False):
  """The `config.population` of `population=<kind>` ('' or None: none).

  default: a grid of 3 lr x 2 wd x 3 LoSA ranks (18 members, 3 structures).
  random: 8 members sampled from lr log-uniform in [3e-4, 3e-2], wd and rank
  from short lists (seeded, so every run draws the same members).
  mixed: 3 lr x the side methods LoSA, LST and LAST at their default options
  (9 members, 3 groups on one backbone pass).
  Members keep the config's init seed: the search varies only these values.
  runlocal (smoke tests): 2 lr x 2 ranks, 3 random members, or 2 lr x 3
  methods.
  """
  if not kind:
    return None
  if kind == "default":
    if runlocal:
      return dict(grid=dict(lr=[1e-3, 1e-2]), losa=dict(rank=[2, 4]),
                  seeds=[seed])
    return dict(grid=dict(lr=[1e-3, 3e-3, 1e-2], wd=[0.0, 1e-4]),
                losa=dict(rank=[4, 8, 16]), seeds=[seed])
  if kind == "random":
    return dict(random=dict(budget=3 if runlocal else 8, seed=0,
                            lr=("loguniform", 3e-4, 3e-2),
                            wd=("choice", [0.0, 1e-5, 1e-4, 1e-3]),
                            rank=("choice", [2, 4] if runlocal else
                                  [4, 8, 16])),
                seeds=[seed])
  if kind == "mixed":
    return dict(method=["losa", "lst", "last"], seeds=[seed],
                grid=dict(lr=[1e-3, 1e-2] if runlocal else [1e-3, 3e-3, 1e-2]))
  raise ValueError(f"population={kind!r}: use one of {list(POPULATIONS)} "
                   "(or leave it empty for a single run).")
