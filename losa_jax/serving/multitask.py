# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Many adapted tasks served on one backbone pass (docs/serving.md).

Side methods (`model.SIDE_METHODS`) and the linear probe share ONE backbone
forward per batch (taps once per distinct `Model.tap_key()`); LoRA,
adapters and full fine-tuning run their own model each (LoRA optionally
merged, `vit.merge_lora`).

  mt = multitask.load(["/tmp/digits", "/tmp/parity"])
  logits = mt(images)        # {"digits": [B, 10], "parity": [B, 2]}

`mt.fn` compiles once per batch size; `serving.export` writes the same
function with a symbolic batch. TensorFlow-free: the image-bytes path lives
in `serving.export`.
"""
import dataclasses
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import build
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.checkpointing import resume
from losa_jax.config import schema as config_lib
from losa_jax.config import workdir as workdir_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.utils import tree as tree_lib

# Methods whose features are the frozen backbone's: they share its pass.
SHARED_METHODS = model_lib.SIDE_METHODS + ("linear",)
# Task names become CSV columns, TF signature outputs and file names.
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclasses.dataclass
class Task:
  """One served task.

  name: output key. model: the model it runs (a merged LoRA task runs a
  plain `full` model). group: the shared backbone pass it reads (a key of
  params["backbones"]), None for an own-model task (params["tasks"][name]
  then holds the whole model, backbone included). method: as trained
  (default: the model's).
  """
  name: str
  model: model_lib.Model
  group: Optional[str]
  method: Optional[str] = None
  workdir: Optional[str] = None
  config: Any = None
  step: Optional[int] = None
  merged_lora: bool = False

  def __post_init__(self):
    if self.method is None:
      self.method = self.model.method
    if self.group is not None and self.method not in SHARED_METHODS:
      raise ValueError(f"Task {self.name!r}: method {self.method!r} changes "
                       f"the backbone; only {SHARED_METHODS} share a pass.")


def make_apply(tasks: Sequence[Task]) -> Callable:
  """The pure multi-task function.

  Returns:
    apply(params, images [B, *image_shape] float32) -> {name: logits
    [B, C_name]}, where params = {"backbones": {group: backbone params},
    "tasks": {name: {side?, head} (shared) | whole model params (own)}}.
    Each group's backbone runs once; own-model tasks run their model.
  """
  groups: Dict[str, List[Task]] = {}
  for t in tasks:
    if t.group is not None:
      groups.setdefault(t.group, []).append(t)

  def apply(params, images):
    out = {}
    for key, members in groups.items():
      bb = params["backbones"][key]
      model0 = members[0].model
      backbone = model0.backbone_module()(**model0.backbone_kwargs())
      pre_logits, enc = backbone.apply({"params": bb}, images, train=False)
      feats = {}
      depth = model0.depth()
      for t in members:
        p = params["tasks"][t.name]
        if t.method == "linear":
          # Model._head on the backbone's pre-logits, exactly.
          out[t.name] = nn.Dense(t.model.num_classes).apply(
              {"params": p["head"]}, pre_logits)
          continue
        # The task's own taps (`Model.tap_key`), as its `predict` computes
        # them: computed once per distinct key.
        tap = t.model.tap_key()
        if tap not in feats:
          feats[tap] = model_lib.backbone_features(
              enc["encoder"], tap, depth=depth, backbone_params=bb)
        out[t.name], _ = t.model.apply({"params": {**p, "backbone": bb}},
                                       None, precomputed=feats[tap])
    for t in tasks:
      if t.group is None:
        out[t.name], _ = t.model.apply({"params": params["tasks"][t.name]},
                                       images, train=False)
    return {t.name: out[t.name] for t in tasks}

  return apply


class MultiTask:
  """N tasks, each distinct backbone run once per batch.

  `__call__(images [B, *image_shape] float32) -> {name: logits [B, C]}`
  (numpy); `probs` gives softmaxes. `apply` / `fn` / `params` (see
  `make_apply`) are the pure, jitted and parameter parts (what
  `serving.export` serialises). pp: the tasks' eval pp (None when built from
  parts). backbone: {"path", "sha256"} of the shared backbone file.
  """

  def __init__(self, tasks: Sequence[Task], params, *,
               image_shape: Tuple[int, ...], pp: Optional[str] = None,
               backbone: Optional[Dict[str, Optional[str]]] = None):
    names = [t.name for t in tasks]
    if len(set(names)) != len(names) or not names:
      raise ValueError(f"Task names must be unique and non-empty: {names}.")
    self.tasks = list(tasks)
    self.params = params
    self.image_shape = tuple(image_shape)
    self.pp = pp
    self.backbone = backbone or {"path": None, "sha256": None}
    self.apply = make_apply(self.tasks)
    self.fn = jax.jit(self.apply)

  @property
  def names(self) -> List[str]:
    return [t.name for t in self.tasks]

  @property
  def num_backbone_passes(self) -> int:
    """Backbone forwards per batch: one per shared group + one per own task."""
    return (len({t.group for t in self.tasks if t.group is not None}) +
            sum(t.group is None for t in self.tasks))

  def param_counts(self) -> Dict[str, Any]:
    """{"backbones": shared backbone params, "tasks": {name: params},
    "resident": everything the service holds}."""
    bb = tree_lib.count(self.params["backbones"])
    per = {n: tree_lib.count(p) for n, p in self.params["tasks"].items()}
    return {"backbones": bb, "tasks": per, "resident": bb + sum(per.values())}

  def _check(self, images):
    shape = tuple(np.shape(images))
    if len(shape) != len(self.image_shape) + 1 or \
        shape[1:] != self.image_shape:
      raise ValueError(
          f"images have shape {shape}; the tasks {self.names} take "
          f"[batch, {', '.join(map(str, self.image_shape))}] float32 "
          f"(preprocessed by {self.pp!r}).")

  def __call__(self, images) -> Dict[str, np.ndarray]:
    self._check(images)
    out = self.fn(self.params, jnp.asarray(images, jnp.float32))
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

  def probs(self, images) -> Dict[str, np.ndarray]:
    """Softmax of each task's logits (float32), like `predict.Predictor`."""
    return {k: np.asarray(jax.nn.softmax(v.astype(np.float32), -1))
            for k, v in self(images).items()}


# --- loading finished workdirs ------------------------------------------------


def serving_pp(config) -> Optional[str]:
  """The pp that turns a raw image into model input: the first eval's pp
  (config.input.pp when there is no eval)."""
  for entry in (config.get("evals") or {}).values():
    if entry.get("pp"):
      return entry["pp"]
  return (config.get("input") or {}).get("pp")


def _norm_pp(pp) -> str:
  pp = "|".join(pp) if isinstance(pp, (list, tuple)) else str(pp)
  return "".join(pp.split())


def _names(workdirs, names) -> List[str]:
  names = list(names) if names else [
      os.path.basename(os.path.normpath(w)) for w in workdirs]
  if len(names) != len(workdirs):
    raise ValueError(f"{len(names)} names {names} for {len(workdirs)} "
                     f"workdirs {list(workdirs)}: give one name per workdir.")
  for n, w in zip(names, workdirs):
    if not NAME_RE.fullmatch(n):
      raise ValueError(f"Task name {n!r} (of {w}) must match "
                       f"{NAME_RE.pattern}: pass names (--names) explicitly.")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"Task name(s) {dup} occur twice ({list(workdirs)}): "
                     "pass distinct names (--names a,b,...).")
  return names


def _config_of(workdir: str, given):
  if given is None:
    config = workdir_lib.read_config(workdir)
  elif isinstance(given, str):
    config = config_lib.load_config(given)
  else:
    config = given
  config_lib.validate(config)
  return config_lib.with_defaults(config)


def _refuse_mix(ref, other, what: str, a, b, advice: str):
  raise ValueError(
      f"Cannot serve {other['workdir']} with {ref['workdir']} on one "
      f"backbone pass: {ref['workdir']} {what} {a}, {other['workdir']} "
      f"{what} {b}. {advice}")


def restore_checked(config, workdir: str, step: Optional[int], *,
                    advice: str):
  """(built, trainable params, step): `workdir`'s params restored read-only
  (replicated), checked against `config` (backbone record, fingerprint).

  step: None is the newest intact one (damaged ones are skipped with a
  warning). The kept steps are looked at first, so a mistyped workdir fails
  fast, creating nothing; `advice` ends that error.
  """
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    read_only=True)
  try:
    kept = ckpt.all_steps()
    if not kept or (step is not None and step not in kept):
      raise FileNotFoundError(
          f"No checkpoint {'' if step is None else f'step {step} '}in "
          f"{ckpt.directory} (kept steps: {kept}): {advice}")
    built = build.build(config, total_steps=int(
        config.get("total_steps") or 10**9))
    # From shapes alone: nothing is initialised to be replaced.
    rep = sharding_lib.replicated(built.mesh)
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
        jax.eval_shape(lambda s: checkpointing.trainable_state(s, built.mask),
                       built.state_shape))
    expected = {"backbone": build.backbone_record(config),
                "config": resume.config_fingerprint(config)}
    check = lambda meta: resume.check_meta(meta, expected, ckpt.directory)
    if step is None:
      step, restored, _ = ckpt.restore_newest(abstract, check=check)
    else:
      restored, _ = ckpt.restore(step, abstract, check=check)
  finally:
    ckpt.close()
  return built, restored["params"], step


def _frozen_backbone(config, built, cache: Dict[str, Any]):
  """The frozen leaves of params["backbone"], read from config.model_init
  once per distinct (file, backbone tree, dtype, load options)."""
  shape = built.state_shape["params"]["backbone"]
  method = config.model.method
  # Side methods and the linear probe read the same tree; LoRA / adapters
  # add leaves.
  peft = (dict(config.model.get(method) or {})
          if method in ("lora", "adapter") else None)
  key = json.dumps([config.model_init, dict(config.model.backbone),
                    method if peft is not None else "shared", peft,
                    dict(config.get("model_load") or {})],
                   sort_keys=True, default=str)
  if key not in cache:
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shape)
    loaded = build.load_backbone({"backbone": zeros}, config)["backbone"]
    mask = {n[len("backbone/"):]: m for n, m in built.mask.items()
            if n.startswith("backbone/")}
    dont_load = tuple((config.get("model_load") or {}).get("dont_load", ()))
    random = [n for n in tree_lib.flatten(loaded) if not mask[n] and any(
        re.fullmatch(p, n) for p in dont_load)]
    if random:
      raise ValueError(
          f"config.model_load.dont_load={list(dont_load)} keeps frozen "
          f"backbone params at their random init (e.g. {random[:3]}): they "
          "cannot be served reproducibly. Serve a model whose frozen "
          "backbone comes entirely from config.model_init.")
    frozen, _ = tree_lib.partition(loaded, {n: not m for n, m in mask.items()})
    cache[key] = jax.device_put(frozen)
  return cache[key]


def load(workdirs: Sequence[str], names: Optional[Sequence[str]] = None, *,
         configs: Optional[Sequence[Any]] = None,
         steps: Optional[Sequence[Optional[int]]] = None,
         merge_lora: bool = False) -> MultiTask:
  """One inference function for N finished training workdirs.

  Args:
    workdirs: training workdirs (any mix of methods; all trained on the same
      backbone file, image size and eval pp).
    names: output keys (default: each workdir's base name).
    configs: per workdir, None (read `<workdir>/config.json`), a config
      file spec ("configs/default.py:task=digits") or a ConfigDict.
    steps: per workdir, the checkpoint step (None: the newest intact).
    merge_lora: serve LoRA tasks with the delta merged into the weights
      (a plain ViT's cost; logits equal to float rounding).

  Raises:
    ValueError: names clash, or workdirs that cannot share a backbone pass
      (another backbone sha256, image size or eval pp), naming both.
    FileNotFoundError / integrity.CheckpointError: as `predict`.
  """
  workdirs = list(workdirs)
  if not workdirs:
    raise ValueError("multitask.load needs at least one workdir.")
  names = _names(workdirs, names)
  configs = list(configs) if configs else [None] * len(workdirs)
  steps = list(steps) if steps else [None] * len(workdirs)
  infos = []
  for w, given in zip(workdirs, configs):
    config = _config_of(w, given)
    if not config.get("model_init"):
      raise ValueError(
          f"{w}: config.model_init is empty (a random backbone): multi-task "
          "serving needs the backbone file the tasks were trained on.")
    infos.append({"workdir": w, "config": config,
                  "shape": config_lib.input_shape(config),
                  "pp": serving_pp(config),
                  "backbone": build.backbone_record(config)})
  ref = infos[0]
  for info in infos[1:]:
    if info["backbone"]["sha256"] != ref["backbone"]["sha256"]:
      _refuse_mix(ref, info, "was trained on backbone",
                  f"{ref['backbone']['path']} (sha256 "
                  f"{ref['backbone']['sha256']})",
                  f"{info['backbone']['path']} (sha256 "
                  f"{info['backbone']['sha256']})",
                  "Serve each backbone's tasks as their own multi-task "
                  "model, or retrain the odd task on the shared backbone.")
    if info["shape"] != ref["shape"]:
      _refuse_mix(ref, info, "takes images of shape", ref["shape"],
                  info["shape"], "One batch cannot feed both: serve them "
                  "separately or retrain at one config.image_size.")
    if _norm_pp(info["pp"]) != _norm_pp(ref["pp"]):
      _refuse_mix(ref, info, "preprocesses images with", repr(ref["pp"]),
                  repr(info["pp"]), "The tasks would read differently "
                  "preprocessed images: serve them separately or retrain "
                  "with one eval pp.")

  tasks, params = [], {"backbones": {}, "tasks": {}}
  cache: Dict[str, Any] = {}
  group_names: Dict[str, str] = {}
  for name, info, step in zip(names, infos, steps):
    config = info["config"]
    built, trainable, step = restore_checked(
        config, info["workdir"], step,
        advice="train it first or pick another step.")
    model = built.model
    frozen = (_frozen_backbone(config, built, cache)
              if model.method != "full" else {})
    merged = False
    if model.method in SHARED_METHODS:
      # The backbone pass a shared task reads: its backbone's kwargs + dtype.
      key = json.dumps({"kind": (model.backbone or {}).get("kind", "vit"),
                        **model.backbone_kwargs(), "param_dtype": str(
                            build.frozen_param_dtype(config))},
                       sort_keys=True, default=str)
      if key not in group_names:
        group_names[key] = f"backbone{len(group_names)}"
        params["backbones"][group_names[key]] = frozen
      group = group_names[key]
      p = {k: v for k, v in trainable.items() if k != "backbone"}
    else:
      group = None
      p = tree_lib.combine(trainable, {"backbone": frozen})
      if model.method == "lora" and merge_lora:
        lo = model_lib.lora_options(model.lora)
        p["backbone"] = vit.merge_lora(p["backbone"], rank=lo["rank"],
                                       alpha=lo["alpha"])
        model = model_lib.Model(model.num_classes, method="full",
                                backbone=model.backbone)
        merged = True
    params["tasks"][name] = jax.device_put(p)
    tasks.append(Task(name, model, group, method=config.model.method,
                      workdir=info["workdir"], config=config, step=step,
                      merged_lora=merged))
  return MultiTask(tasks, params, image_shape=ref["shape"], pp=ref["pp"],
                   backbone=ref["backbone"])
