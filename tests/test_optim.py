# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Freezing rules, schedules and the optimizer's treatment of frozen params."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from losa_jax.assembly import optim


def _params():
  return {"backbone": {"w": jnp.ones((3, 3)), "lora": {"up": jnp.ones((2,))}},
          "side": {"kernel": jnp.ones((3,))}, "head": {"kernel": jnp.ones((3,))}}


def test_rules_first_match_and_full_coverage():
  c = tiny_config(schedule=[("backbone/.*", None), ("side/.*", {})])
  with pytest.raises(ValueError, match="head/kernel"):
    optim.make(c, _params(), 10)


def test_bad_pattern_is_named():
  c = tiny_config(schedule=[("/backbone/.*", None), (".*", {})])
  with pytest.raises(ValueError, match="starts with '/'"):
    optim.make(c, _params(), 10)


def test_frozen_params_get_no_state_no_update_no_decay():
  c = tiny_config(optax_name="adamw", wd=0.5,
                  wd_mults=[(".*", 1.0)],
                  schedule=[("backbone/.*", None), (".*", {})])
  p = _params()
  tx, _, mask = optim.make(c, p, 10)
  assert mask == {"backbone/w": False, "backbone/lora/up": False,
                  "side/kernel": True, "head/kernel": True}
  state = tx.init(p)
  sizes = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
  assert sizes == 2 * (3 + 3)     # Adam moments only for side + head
  grads = jax.tree.map(jnp.ones_like, p)
  updates, _ = tx.update(grads, state, p)
  assert not np.any(updates["backbone"]["w"])
  # Decoupled decay reaches trained params: update = -lr * (adam + wd * p).
  assert np.all(np.asarray(updates["side"]["kernel"]) < -c.lr)


def test_method_default_rules():
  assert optim.default_rules("losa", {})[0] == ("backbone/.*", None)
  assert optim.default_rules("full", {}) == [(".*", {})]
  assert optim.default_rules("lora", {})[0][0] == "backbone/.*_lora/.*"
  with pytest.raises(ValueError, match="Unknown method"):
    optim.default_rules("prompt", {})


def test_lr_mults_and_zero_mult_rejected():
  c = tiny_config(lr_mults=[("head/.*", 10.0)],
                  schedule=[("backbone/.*", None), (".*", {})])
  tx, fns, _ = optim.make(c, _params(), 10)
  lrs = sorted(float(f(0)) for f in fns.values())
  np.testing.assert_allclose(lrs, [c.lr, 10 * c.lr], rtol=1e-6)
  c.lr_mults = [("head/.*", 0.0)]
  with pytest.raises(ValueError, match="None schedule"):
    optim.make(c, _params(), 10)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warmup_then_decay(decay):
  fn = optim.create_schedule(1.0, 100, warmup_steps=10, decay_type=decay)
  assert float(fn(0)) == pytest.approx(0.1)
  assert float(fn(9)) == pytest.approx(1.0)
  assert float(fn(100)) == pytest.approx(0.0, abs=1e-6)
  assert float(fn(55)) == pytest.approx(0.5, abs=1e-6)


def test_clip_only_reads_trainable_grads():
  c = tiny_config(grad_clip_norm=1.0, optax_name="sgd", lr=1.0,
                  schedule=[("backbone/.*", None), (".*", {})])
  p = _params()
  tx, _, _ = optim.make(c, p, 10)
  grads = jax.tree.map(jnp.zeros_like, p)
  grads["backbone"]["w"] = jnp.full((3, 3), 1e6)   # must not shrink the rest
  grads["head"]["kernel"] = jnp.full((3,), 0.1)
  updates, _ = tx.update(grads, tx.init(p), p)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.1, rtol=1e-6)
