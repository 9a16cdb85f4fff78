# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Parity with timm: the same big_vision-layout npz gives the same logits."""
import functools

import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from losa_jax.utils import npz
from losa_jax.models import layouts
from losa_jax.models import porting

try:
  from tests import helpers_ckpt as h
except ImportError:  # tests/ run as a rootdir-relative module path
  import helpers_ckpt as h  # pylint: disable=g-import-not-at-top

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
from timm.models import vision_transformer as timm_vit  # pylint: disable=g-import-not-at-top,g-bad-import-order

D = 32
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _small_torch():
  # Tiny models: one thread is fastest and avoids oversubscribing the CPU.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _timm_model(img_size=32, no_embed_class=True, exact_gelu=False):
  """timm twin of `h.tiny_vit()`.

  tanh-GELU and LayerNorm eps 1e-6 as in flax. `no_embed_class=True` adds the
  posemb to the patches only, before the cls token, as big_vision does; the
  2020 layout (`False`) adds a posemb row to the cls token too.
  """
  torch.manual_seed(0)
  act = torch.nn.GELU if exact_gelu else functools.partial(
      torch.nn.GELU, approximate="tanh")
  m = timm_vit.VisionTransformer(
      img_size=img_size, patch_size=8, embed_dim=D, depth=2, num_heads=2,
      mlp_ratio=4, class_token=True, global_pool="token", num_classes=10,
      no_embed_class=no_embed_class,
      act_layer=act,
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
  return m.eval()


def _timm_logits(model, images):
  with torch.no_grad():
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return model(x).numpy()


@pytest.fixture(scope="module")
def ckpt():
  # Weights large enough that activations leave GELU's near-linear range,
  # so a tanh-vs-erf GELU mismatch shows up above TOL (checked below).
  return h.random_params(h.tiny_vit(), seed=0, scale=0.5)


@pytest.mark.parametrize("layout", ["big_vision", "big_vision_scan",
                                    "old_cls_row", "old_cls_zero"])
def test_logits_match_timm(tmp_path, ckpt, layout):
  model = h.tiny_vit()
  tree, no_embed_class = ckpt, True
  if layout == "big_vision_scan":
    tree = layouts.loop_to_scan(ckpt)
  elif layout.startswith("old"):
    # timm reads the 2020 layout from Transformer/posembed_input (cls slot).
    tree = h.to_old_naming(ckpt, posemb_at="posembed_input",
                           cls_zero=layout == "old_cls_zero")
    no_embed_class = False
  path = str(tmp_path / "vit.npz")
  npz.save_npz(tree, path)

  ours = porting.load(h.random_params(model, seed=1), path)
  tm = _timm_model(no_embed_class=no_embed_class)
  timm_vit._load_weights(tm, path)  # pylint: disable=protected-access
  x = h.images(3)
  want = _timm_logits(tm, x)
  assert np.abs(want).max() > 0.1  # a real signal, not all-zero logits
  got = h.logits(model, ours, x)
  np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
  if layout == "big_vision":
    # The comparison is sharp enough to see timm's default (erf) GELU.
    erf = _timm_model(exact_gelu=True)
    timm_vit._load_weights(erf, path)  # pylint: disable=protected-access
    assert np.abs(got - _timm_logits(erf, x)).max() > 2 * TOL


def test_bf16_checkpoint_matches_timm(tmp_path, ckpt):
  """timm's bf16 reader (ml_dtypes) reads the bf16 that save_npz writes."""
  bf16 = {k: np.asarray(v).astype(ml_dtypes.bfloat16)
          for k, v in npz.flatten(ckpt).items()}
  path = str(tmp_path / "vit_bf16.npz")
  porting.save_vit(npz.unflatten(bf16), path)
  model = h.tiny_vit()
  ours = porting.load(h.random_params(model, seed=1), path)
  tm = _timm_model()
  timm_vit._load_weights(tm, path, load_bfloat16=True)  # pylint: disable=protected-access
  x = h.images(3)
  np.testing.assert_allclose(h.logits(model, ours, x), _timm_logits(tm, x),
                             rtol=0, atol=TOL)


@pytest.mark.parametrize("hw,grid", [((48, 48), (6, 6)), ((32, 48), (4, 6))])
def test_other_resolution(tmp_path, ckpt, hw, grid):
  """A 4x4-grid checkpoint run at another resolution, by us and by timm.

  The resamplers differ by design: big_vision (and we) use
  `scipy.ndimage.zoom(order=1)`, which aligns the grid corners; timm uses
  `F.interpolate(mode="bilinear", align_corners=False)`, which aligns the
  cell edges. So we check that ours is exactly scipy's zoom (== torch's
  corner-aligned bilinear), that timm's differs only in that convention, and
  that the rest of the model agrees once both use the same posemb.
  """
  path = str(tmp_path / "vit.npz")
  npz.save_npz(ckpt, path)
  model = h.tiny_vit()
  ours = porting.load(h.random_params(model, hw=hw, seed=1), path,
                      posemb_grid=grid)
  pe = ours["pos_embedding"]
  old = np.asarray(ckpt["pos_embedding"]).reshape(4, 4, D)
  zoomed = scipy.ndimage.zoom(old, (grid[0] / 4, grid[1] / 4, 1), order=1)
  np.testing.assert_array_equal(pe, zoomed.reshape(1, -1, D))

  def torch_bilinear(align_corners):
    t = torch.from_numpy(old).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=grid, mode="bilinear",
                                        align_corners=align_corners)
    return t[0].permute(1, 2, 0).reshape(1, -1, D).numpy()

  np.testing.assert_allclose(pe, torch_bilinear(True), rtol=0, atol=1e-6)
  tm = _timm_model(img_size=hw)
  timm_vit._load_weights(tm, path)  # pylint: disable=protected-access
  timm_pe = tm.pos_embed.detach().numpy()
  np.testing.assert_allclose(timm_pe, torch_bilinear(False), rtol=0,
                             atol=1e-6)
  assert np.abs(timm_pe - pe).max() > 1e-2  # the conventions really differ

  with torch.no_grad():
    tm.pos_embed.copy_(torch.from_numpy(pe))
  x = h.images(3, hw=hw)
  np.testing.assert_allclose(h.logits(model, ours, x), _timm_logits(tm, x),
                             rtol=0, atol=TOL)
