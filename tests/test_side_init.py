# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The side network's init values for a fixed seed (golden values).

Documented training results depend on them: how the params are declared
(`side.Mixer.spec`) and how their init RNGs are derived must not move them.
Recorded as (sum, sum |x|, first entry) per random leaf of
`jax.jit(model.init)(jax.random.key(0), zeros [2, 32, 32, 3])` for
conftest's tiny_config (the video mixer: `Mixer.init(jax.random.key(1),
zeros [2, 16, 8])`); every other leaf holds its constant init exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.models import side as side_lib
from losa_jax.utils import tree as tree_lib

GOLDEN = {
    "default": {
        "channel_0/mlp/down/kernel": (3.61696374, 37.2787098, 0.00634828024),
        "token_1/mlp/down/kernel": (0.822298895, 29.5944022, 0.104962461),
    },
    "share_weights": {
        "channel_0/mlp/down/kernel": (-0.878337331, 19.5083616, 0.158850327),
        "token_1/mlp/down/kernel": (-5.28722941, 15.96903, -0.0840969533),
    },
    "no_zero_init": {
        "channel_0/mlp/down/kernel": (3.61696374, 37.2787098, 0.00634828024),
        "channel_0/mlp/up/kernel": (0.0143208072, 0.201067273, 0.0010872205),
        "token_1/mlp/down/kernel": (0.822298895, 29.5944022, 0.104962461),
        "token_1/mlp/up/kernel": (-0.00573353028, 0.114088115,
                                  -0.000175092704),
    },
    "token_channel_2_pairs": {
        "channel_1/mlp/down/kernel": (1.85291842, 37.430495, 0.25611195),
        "channel_3/mlp/down/kernel": (-2.84072267, 36.455019, 0.190644801),
        "token_0/mlp/down/kernel": (-2.30607465, 26.6723514, -0.141238332),
        "token_2/mlp/down/kernel": (5.4307347, 29.8741257, 0.185107648),
    },
    "video_mixer": {
        "channel_0/mlp/down/kernel": (-0.608457267, 9.13916846, -0.129223377),
        "space_1/mlp/down/kernel": (0.273502577, 9.57804607, -0.399071425),
        "time_2/mlp/down/kernel": (0.472594783, 1.67091699, 0.435585022),
    },
}
LOSA = {"default": {}, "share_weights": dict(share_weights=True),
        "no_zero_init": dict(zero_init=False),
        "token_channel_2_pairs": dict(mixer_order="token_channel",
                                      num_pairs=2),
        "combine_concat": dict(combine="concat"),
        "combine_gated": dict(combine="gated"),
        "autodiff": dict(fused=False)}
# Options that leave the mixers' RNGs alone: their values are the default's.
SAME_AS_DEFAULT = ("combine_concat", "combine_gated", "autodiff")


def _side_init(losa):
  model = build.model_from_config(tiny_config(losa=losa))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  return tree_lib.flatten(params["params"]["side"])


def _check(flat, golden, prefix=""):
  for name, value in flat.items():
    value = np.asarray(value, np.float64)
    key = name[len(prefix):]
    if key in golden:
      np.testing.assert_allclose(
          (value.sum(), np.abs(value).sum(), value.ravel()[0]), golden[key],
          rtol=1e-6, err_msg=name)
    elif name.endswith(("scale", "gate")):
      np.testing.assert_array_equal(value, 1.0, err_msg=name)
    elif name.endswith("combine/kernel"):
      d = value.shape[-1]
      np.testing.assert_array_equal(value, np.broadcast_to(
          np.tile(np.eye(d), (2, 1)), value.shape), err_msg=name)
    else:
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
  assert {prefix + k for k in golden} <= set(flat)


@pytest.mark.parametrize("case", sorted(LOSA))
def test_side_network_init_values(case):
  golden = GOLDEN["default" if case in SAME_AS_DEFAULT else case]
  _check(_side_init(LOSA[case]), golden, prefix="layers/mixer/")


def test_video_mixer_init_values():
  mixer = side_lib.Mixer(rank_channel=3, rank_token=4, rank_time=2,
                         grid=(2, 8))
  params = mixer.init(jax.random.key(1), jnp.zeros((2, 16, 8)))["params"]
  _check(tree_lib.flatten(params), GOLDEN["video_mixer"])
