# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A population step: K side networks trained on one frozen backbone pass.

The backbone runs once per distinct data order and feeds its taps to every
member; members of one structure form a group whose params, optimizer
states and hyper-parameters (`HP_KEYS`, arrays of the state) are stacked
and vmapped through the trainer's own step (docs/population.md, "How the
step works", and what is guaranteed).

State (a pytree; sharded like the trainer's: batch over the data axes, the
backbone by `config.sharding_strategy`, members replicated):

    {"params": {"backbone": ...},        # frozen, shared, never updated
     "step": int32 [],
     "groups": [{"params": {side, head} [K_g, ...],
                 "opt": stacked optimizer state,
                 "rng": uint32 [K_g, 2]  (key data),
                 "hp": {"lr", "wd", "label_smoothing", "grad_clip_norm"}
                       float32 [K_g] each (clip inf = off),
                 "alive": bool [K_g]}, ...]}

Batches: {"image": [S, B, ...], "label": [S, B]} with one slot per distinct
data seed (`PopulationBuilt.data_seeds`), S = 1 in the usual case.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from losa_jax.assembly import build as build_lib
from losa_jax.assembly import optim
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.assembly import steps
from losa_jax.config import schema as config_lib
from losa_jax.utils import tree as tree_lib
from losa_jax.models import model as model_lib
from losa_jax.models import side as side_lib
from losa_jax.population import members as members_lib

HP_KEYS = ("lr", "wd", "label_smoothing", "grad_clip_norm")


@dataclasses.dataclass
class Group:
  """Members that share one structure and one data order (one vmap)."""
  index: int
  members: List[members_lib.Member]
  slot: int                       # batch slot (index into data_seeds)
  config: ml_collections.ConfigDict   # the structure config (see _structure)
  model: model_lib.Model
  tap: model_lib.TapKey           # (tap, tap_every, dtype): its taps
  params_shape: Any               # one member's {side, head}
  num_params: int                 # trainable params of one member


@dataclasses.dataclass
class PopulationBuilt:
  """What `build` returns; the population analogue of `build.Built`."""
  members: List[members_lib.Member]
  groups: List[Group]
  data_seeds: List[int]
  mesh: Any
  image_shape: Tuple[int, ...]
  state_shape: Any
  state_sharding: Any
  init: Callable          # (backbone params) -> state, placed in shardings
  train_step: Callable    # (state, batch) -> (state, metrics)
  eval_step: Callable     # (state, batch) -> [group][{loss_sum, correct,
                          #   count} [K_g]]
  features: Callable      # (backbone params, images [B, ...]) -> taps dict

  @property
  def num_members(self) -> int:
    return len(self.members)

  def member_order(self) -> List[Tuple[int, int]]:
    """(group index, position in group) of every member, in the order of
    `members` (sorted by member index)."""
    where = {}
    for g in self.groups:
      for j, m in enumerate(g.members):
        where[m.index] = (g.index, j)
    return [where[m.index] for m in self.members]


def _structure(group_members: Sequence[members_lib.Member]):
  """One config whose optimizer *structure* fits every member of a group.

  Weight decay exists if any member decays, clipping if any member clips;
  members without them get wd 0 / clip norm inf, which change nothing.
  """
  c = ml_collections.ConfigDict(group_members[0].config.to_dict())
  wds = [m.hparams["wd"] for m in group_members]
  c.wd = max(wds) if any(wds) else 0.0
  clips = [m.hparams["grad_clip_norm"] for m in group_members
           if m.hparams["grad_clip_norm"]]
  c.grad_clip_norm = max(clips) if clips else None
  c.label_smoothing = max(m.hparams["label_smoothing"] for m in group_members)
  return c


class _SharedBackbone:
  """`Model.apply` look-alike: member params + the shared frozen backbone,
  fed precomputed taps (so `steps.train_step_fn` runs unchanged).

  layer_axis: of the taps, 0 for a backbone pass's [L', B, N, D], 1 for a
  feature cache's [B, L', N, D] (read in place); static, so it is given
  here rather than in the traced features.
  """

  def __init__(self, model, backbone, layer_axis: int = 0):
    self.model, self.backbone = model, backbone
    self.layer_axis = layer_axis

  def apply(self, variables, features, **kw):
    params = {**variables["params"], "backbone": self.backbone}
    return self.model.apply(
        {"params": params}, None,
        precomputed={**features, "layer_axis": self.layer_axis}, **kw)


def _check(config, members) -> str:
  """The population's `loop`, after checking it and the members' method."""
  loop = dict(config.get("population") or {}).get("loop", "vmap")
  if loop not in members_lib.LOOPS:
    raise ValueError(f"config.population.loop={loop!r}: use one of "
                     f"{members_lib.LOOPS}.")
  methods = {m.config.model.get("method", "losa") for m in members}
  if not methods <= set(model_lib.SIDE_METHODS):
    raise ValueError(f"A shared-backbone population needs side methods, "
                     f"model.method in {model_lib.SIDE_METHODS} (got "
                     f"{sorted(methods)}): other methods change the backbone, "
                     "so their members train one after another "
                     "(losa_jax.trainers.population does that).")
  if any(m.config.model.method == "lst" and dict(
      m.config.model.get("lst") or {}).get("init") == "prune"
         for m in members):
    raise ValueError("config.model.lst.init='prune' is not supported in a "
                     "population (it initialises from the loaded backbone "
                     "outside the jitted init); train those members alone.")
  return loop


def _groups(members, image_shape):
  """(groups with one member's trainable tree, the distinct data seeds that
  the groups' batch slots index, the backbone's param shapes)."""
  data_seeds: List[int] = []
  groups: List[Group] = []
  bb_shape = None
  for _, seed, ms in members_lib.group_members(members):
    if seed not in data_seeds:
      data_seeds.append(seed)
    cfg = _structure(ms)
    model = build_lib.model_from_config(cfg)
    shape = jax.eval_shape(_init_fn(model, image_shape), jax.random.key(0))
    params_shape = {k: v for k, v in shape.items() if k != "backbone"}
    # Every member's backbone is the same (only side networks differ).
    bb_shape = shape["backbone"] if bb_shape is None else bb_shape
    groups.append(Group(len(groups), ms, data_seeds.index(seed), cfg, model,
                        model.tap_key(), params_shape,
                        tree_lib.count(params_shape)))
  return groups, data_seeds, bb_shape


def _init_fn(model, image_shape):
  """rng -> the full model's initial params."""
  return lambda r: model.init(
      r, jnp.zeros((1, *image_shape), jnp.float32))["params"]


class _Program:
  """The population's traced functions (init, train and eval step) over its
  groups; `build` jits them."""

  def __init__(self, groups: List[Group], num_slots: int, bb_shape, *,
               total_steps: int, loop: str, cached: bool, base, image_shape):
    self.groups, self.num_slots = groups, num_slots
    self.total_steps, self.loop, self.cached = total_steps, loop, cached
    # The shared backbone: its kwargs are the same for every member (only
    # side networks differ), so any group's model names it.
    model0 = groups[0].model
    self.bb_module = model0.backbone_module()(**model0.backbone_kwargs())
    self.depth = model0.depth()
    self.bb_shape = build_lib.cast_floats(
        bb_shape, build_lib.frozen_param_dtype(base))
    self.feat_shape = jax.eval_shape(
        self.features, bb_shape,
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))

  def features(self, backbone, images):
    """One backbone pass -> {tap key: {"taps", "final"}}: the taps each
    group's single run computes, to the bit (`model.backbone_features`)."""
    _, out = self.bb_module.apply({"params": backbone}, images, train=False)
    feats = {}
    for g in self.groups:
      if g.tap not in feats:
        feats[g.tap] = model_lib.backbone_features(
            out["encoder"], g.tap, depth=self.depth, backbone_params=backbone)
    return feats

  def cached_features(self, batch, s: int):
    """Cached taps of every block -> each group's taps (subselected), kept
    batch-major [B, L', N, D] in the cache's dtype: the side network reads
    them in place, as the trainer's cached step does."""
    taps = batch["image"]["taps"][s]                          # [B, L, N, D]
    final = (batch["image"]["final"][s] if "final" in batch["image"]
             else taps[:, -1])
    feats = {}
    for g in self.groups:
      if g.tap not in feats:
        idx = side_lib.tap_indices(self.depth, g.tap[1])
        t = taps if len(idx) == taps.shape[1] else taps[:, jnp.asarray(idx)]
        feats[g.tap] = {"taps": t, "final": side_lib.as_float32(final)}
    return feats

  def _tx(self, g: Group, hp):
    return optim.make(g.config, g.params_shape, self.total_steps, hparams=hp,
                      log_rules=False)

  def _init_member(self, g: Group, seed, hp, backbone):
    """The trainer's init for one member: same rng splits, same values."""
    init_rng, state_rng = jax.random.split(jax.random.key(seed))
    dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         self.feat_shape[g.tap])
    _, variables = g.model.apply(
        {"params": {"backbone": backbone}}, None, precomputed=dummy,
        rngs={"params": init_rng}, mutable=["params"])
    params = {k: v for k, v in variables["params"].items() if k != "backbone"}
    tx, _, _ = self._tx(g, hp)
    return {"params": params, "opt": tx.init(params),
            "rng": jax.random.key_data(state_rng), "hp": hp,
            "alive": jnp.ones((), bool)}

  def init(self, backbone):
    state = {"params": {"backbone": backbone},
             "step": jnp.zeros((), jnp.int32), "groups": []}
    for g in self.groups:
      seeds = jnp.asarray([m.hparams["seed"] for m in g.members], jnp.uint32)
      # A member without clipping clips at inf.
      hp = {k: jnp.asarray(np.array(
          [(m.hparams[k] or np.inf) if k == "grad_clip_norm" else m.hparams[k]
           for m in g.members], np.float32)) for k in HP_KEYS}
      state["groups"].append(jax.vmap(
          lambda s, h, g=g: self._init_member(g, s, h, backbone))(seeds, hp))
    return state

  def _member_step(self, g: Group, backbone, mstate, step, feats, labels):
    hp = mstate["hp"]
    tx, sched_fns, mask = self._tx(g, hp)
    fn = steps.train_step_fn(
        _SharedBackbone(g.model, backbone, layer_axis=1 if self.cached else 0),
        tx, mask, label_smoothing=hp["label_smoothing"],
        schedule_fns=sched_fns)
    state = {"params": mstate["params"], "opt": mstate["opt"], "step": step,
             "rng": jax.random.wrap_key_data(mstate["rng"])}
    new, metrics = fn(state, {"image": feats, "label": labels})
    # The loss is that of the params *before* this update, so it cannot see
    # an update that is itself NaN/Inf (a NaN lr, an overflowing step): the
    # new params must be finite too, or the member would be frozen at
    # non-finite params.
    finite = jnp.isfinite(metrics["loss"])
    for leaf in jax.tree.leaves(new["params"]):
      finite = jnp.logical_and(finite, jnp.all(jnp.isfinite(leaf)))
    keep = jnp.logical_and(mstate["alive"], finite)
    # A dead member keeps its last finite state; the others go on.
    pick = lambda a, b: jnp.where(keep, a, b)
    out = dict(mstate)
    out["params"] = jax.tree.map(pick, new["params"], mstate["params"])
    out["opt"] = jax.tree.map(pick, new["opt"], mstate["opt"])
    out["alive"] = keep
    metrics = {k: v for k, v in metrics.items() if not k.startswith("lr/")}
    metrics["lr"] = next(iter(sched_fns.values()))(step)
    metrics["alive"] = keep.astype(jnp.float32)
    return out, metrics

  def train_step(self, state, batch):
    backbone = state["params"]["backbone"]
    if self.cached:
      feats = [self.cached_features(batch, s) for s in range(self.num_slots)]
    else:
      feats = [self.features(backbone, batch["image"][s])
               for s in range(self.num_slots)]
    new_groups, metrics = [], []
    for g, gstate in zip(self.groups, state["groups"]):
      fn = (lambda ms, g=g, f=feats[g.slot][g.tap]: self._member_step(
          g, backbone, ms, state["step"], f, batch["label"][g.slot]))
      # "vmap": members in parallel (fastest); "map": one member at a time
      # (peak memory of one member's backward; the backbone pass is still
      # shared).
      ng, m = (jax.vmap(fn)(gstate) if self.loop == "vmap" else
               jax.lax.map(fn, gstate))
      new_groups.append(ng)
      metrics.append(m)
    return {"params": state["params"], "step": state["step"] + 1,
            "groups": new_groups}, metrics

  def eval_step(self, state, batch):
    backbone = state["params"]["backbone"]
    # Eval batches come from one pass over a split: one slot.
    feats = self.features(backbone, batch["image"])
    out = []
    for g, gstate in zip(self.groups, state["groups"]):
      f = feats[g.tap]
      ev = steps.eval_step_fn(_SharedBackbone(g.model, backbone))
      out.append(jax.vmap(lambda p, f=f, ev=ev: ev(
          p, {"image": f, "label": batch["label"],
              "_mask": batch.get("_mask")}))(gstate["params"]))
    return out


def build(config, *, total_steps: int, mesh=None, donate: bool = True,
          members=None, cached: bool = False) -> PopulationBuilt:
  """Compiles the population of `config.population` (side methods only).

  Args:
    config: a trainer config with a `population` entry (see
      losa_jax.population.members).
    total_steps: the schedules' length (every member trains as long).
    mesh: default from config.mesh.
    donate: donate the state to the step.
    members: a subset of `members.expand(config)` to build (the survivors
      of a successive-halving rung); default all.
    cached: the train step takes backbone features from a feature cache
      ({"taps": [S, B, L, N, D] of every block (tap_every=1), optional
      "final": [S, B, N, D], "label": [S, B]}) instead of images: no
      backbone at all. Every group must use the same `tap` kind.
  """
  members = sorted(members if members is not None else
                   members_lib.expand(config), key=lambda m: m.index)
  loop = _check(config, members)
  image_shape = config_lib.input_shape(members[0].config)
  groups, data_seeds, bb_shape = _groups(members, image_shape)
  if cached and len({g.tap[0] for g in groups}) > 1:
    raise ValueError("A cached population needs one losa.tap kind for every "
                     f"member (got {sorted({g.tap[0] for g in groups})}): "
                     "the cache stores one kind of tap.")
  prog = _Program(groups, len(data_seeds), bb_shape, total_steps=total_steps,
                  loop=loop, cached=cached, base=members[0].config,
                  image_shape=image_shape)
  state_shape = jax.eval_shape(prog.init, prog.bb_shape)
  mesh, state_sharding = build_lib.mesh_and_state_sharding(
      config, state_shape, mesh)
  rep = sharding_lib.replicated(mesh)
  batch_sh = sharding_lib.batch_sharding(mesh)
  train_step = jax.jit(
      prog.train_step, in_shardings=(state_sharding, slot_sharding(mesh)),
      out_shardings=(state_sharding, rep),
      donate_argnums=(0,) if donate else ())
  eval_step = jax.jit(prog.eval_step, in_shardings=(state_sharding, batch_sh),
                      out_shardings=rep)
  init = jax.jit(prog.init,
                 in_shardings=(state_sharding["params"]["backbone"],),
                 out_shardings=state_sharding)
  return PopulationBuilt(members, groups, data_seeds, mesh, image_shape,
                         state_shape, state_sharding, init, train_step,
                         eval_step, prog.features)


def slot_sharding(mesh) -> jax.sharding.NamedSharding:
  """A train batch's sharding: [S, B, ...], B split as a trainer's batch."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      None, *sharding_lib.batch_sharding(mesh).spec))


def member_params(pop: PopulationBuilt, state, index: int):
  """{side, head} of the member whose `Member.index` is `index` (numpy)."""
  pos = [m.index for m in pop.members].index(index)
  gi, j = pop.member_order()[pos]
  return jax.tree.map(lambda x: np.asarray(x[j]),
                      jax.device_get(state["groups"][gi]["params"]))


def per_member(pop: PopulationBuilt, group_values) -> List[Dict[str, float]]:
  """[group][{name: [K_g]}] -> [{name: value}] in the order of `members`."""
  group_values = jax.device_get(group_values)
  return [{k: float(np.asarray(v)[j]) for k, v in group_values[gi].items()}
          for gi, j in pop.member_order()]


def eval_members(pop: PopulationBuilt, eval_step, state,
                 batches) -> List[Dict[str, float]]:
  """`eval_step(state, batch)`'s sums over `batches`, per member in the
  order of `members`: [{"loss_sum", "correct", "count"}]."""
  totals = None
  for batch in batches:
    sums = per_member(pop, eval_step(state, batch))
    totals = sums if totals is None else [
        {k: a[k] + b[k] for k in a} for a, b in zip(totals, sums)]
  return totals


def backbone_loader(config, pop: PopulationBuilt) -> Callable[[], Any]:
  """() -> the frozen backbone as each member's single run loads it, in the
  frozen param dtype, placed in the population's shardings.

  As `Built.init_loaded` does, config.model_init is loaded into the params'
  shapes first; only when it leaves backbone leaves unset (always, without
  a model_init) is the model initialised, from the first split of
  key(config.seed) (so the members whose seed is config.seed get their
  single run's random backbone). The init is jitted once for every call.
  """
  init = jax.jit(_init_fn(pop.groups[0].model, pop.image_shape))
  dtype = build_lib.frozen_param_dtype(config)
  is_shape = lambda x: isinstance(x, jax.ShapeDtypeStruct)

  def load():
    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    bb = build_lib.load_backbone(jax.eval_shape(init, init_rng),
                                 config)["backbone"]
    if any(is_shape(x) for x in jax.tree.leaves(bb)):
      bb = jax.tree.map(lambda x, fresh: fresh if is_shape(x) else x, bb,
                        init(init_rng)["backbone"])
    return jax.device_put(build_lib.cast_floats(bb, dtype),
                          pop.state_sharding["params"]["backbone"])
  return load


def restack(old: PopulationBuilt, old_state, new: PopulationBuilt):
  """The state of `new` (a subset of `old`'s members) taken from `old_state`:
  each surviving member keeps its params, optimizer state, rng and values."""
  where = {m.index: loc for m, loc in zip(old.members, old.member_order())}
  groups = []
  for g in new.groups:
    rows = [where[m.index] for m in g.members]
    parts = [jax.tree.map(lambda x, j=j: x[j], old_state["groups"][gi])
             for gi, j in rows]
    groups.append(jax.tree.map(lambda *xs: jnp.stack(xs), *parts))
  state = {"params": old_state["params"], "step": old_state["step"],
           "groups": groups}
  return jax.device_put(state, new.state_sharding)
