# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Study tasks built offline: real digits from installed wheels + dSprites-style.

Every task returns the demo layout (`losa_jax.datasets.digits`) with uint8
images [N, 28, 28, 1] and int32 labels; all are seeded pure numpy, identical
on every machine. docs/study.md's task table says what each task is and how
far it is from the shipped backbone's pretraining (4,500 MNIST-5k digits).
The dSprites tasks are VTAB's "structured" ones re-rendered at 28x28
(dSprites itself is 64x64 and needs a download).
"""
from typing import Callable, Dict, Sequence

import numpy as np

from losa_jax.datasets import digits as demo_data

IMAGE_SIZE = demo_data.IMAGE_SIZE        # 28
SUPERSAMPLE = 4                          # anti-aliasing of the rendered shapes
DSPRITES_TRAIN = 1000                    # VTAB-1k-sized training sets
DSPRITES_TEST = 500
NUM_BINS = 8      # VTAB uses 16; at 28 px a 16-way x-bin is under one pixel.
SHAPES = ("square", "ellipse", "heart", "arrow")
# Range of the shape centre, in pixels: keeps every shape inside the frame
# (the largest shape reaches ~1.35 * scale = 6 px from its centre).
CENTER_RANGE = (6.0, 22.0)
SCALE_RANGE = (2.5, 4.5)                 # half-size in pixels
# Orientation needs bigger shapes: at 2.5 px a heart is a blob whose
# orientation is not recoverable at 28 px.
ORI_SCALE_RANGE = (4.0, 6.0)
ORI_CENTER_RANGE = (8.5, 19.5)


# --- dSprites-style rendering -------------------------------------------------


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether shape-local points (u right, v down, unit half-size) are inside.

  At orientation 0 the heart's lobes and the arrow's point face up.
  """
  if shape == "square":
    return (np.abs(u) <= 1) & (np.abs(v) <= 1)
  if shape == "ellipse":    # dSprites' ellipse is elongated about 2:1
    return u**2 + (v / 0.5)**2 <= 1
  if shape == "heart":      # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y up
    x, y = u * 1.1, -v * 1.1 + 0.1
    return (x**2 + y**2 - 1)**3 - x**2 * y**3 <= 0
  if shape == "arrow":      # isosceles triangle, apex up, 2.2 tall
    return (v <= 0.9) & (v >= -1.3) & (np.abs(u) <= 0.7 * (v + 1.3) / 2.2)
  raise ValueError(f"Unknown shape {shape!r}; available: {SHAPES}.")


def render_shapes(shape_ids: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                  scale: np.ndarray, angle: np.ndarray,
                  shapes: Sequence[str] = SHAPES,
                  size: int = IMAGE_SIZE) -> np.ndarray:
  """Renders one white shape per image on black, anti-aliased.

  Args:
    shape_ids: int [N], index into `shapes`.
    cx, cy: float [N], shape centre in pixels (x right, y down).
    scale: float [N], half-size in pixels.
    angle: float [N], orientation in radians (counter-clockwise on screen).
    shapes: shape names.
    size: canvas size.

  Returns:
    uint8 [N, size, size, 1]; a pixel's value is the fraction of its
    SUPERSAMPLE x SUPERSAMPLE sub-pixel centres inside the shape, times 255.
  """
  ss = SUPERSAMPLE
  grid = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss
  gy, gx = np.meshgrid(grid, grid, indexing="ij")
  out = np.zeros((len(shape_ids), size, size, 1), np.uint8)
  for i in range(len(shape_ids)):
    dx, dy = gx - cx[i], gy - cy[i]
    c, s = np.cos(angle[i]), np.sin(angle[i])
    # Rotate the points by -angle (screen y points down, so counter-clockwise
    # on screen is a negative angle in these coordinates).
    u = (c * dx - s * dy) / scale[i]
    v = (s * dx + c * dy) / scale[i]
    mask = _inside(shapes[shape_ids[i]], u, v).astype(np.float64)
    frac = mask.reshape(size, ss, size, ss).mean(axis=(1, 3))
    out[i, ..., 0] = np.rint(frac * 255).astype(np.uint8)
  return out


def _sample(n: int, rng: np.random.Generator, shapes: Sequence[str],
            center_range, scale_range):
  lo, hi = center_range
  return dict(shape_ids=rng.integers(0, len(shapes), n),
              cx=rng.uniform(lo, hi, n), cy=rng.uniform(lo, hi, n),
              scale=rng.uniform(*scale_range, n),
              angle=rng.uniform(0, 2 * np.pi, n))


def _bin(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
  return np.clip(((values - lo) / (hi - lo) * bins).astype(np.int64), 0,
                 bins - 1).astype(np.int32)


def _dsprites(label_of: Callable[[Dict[str, np.ndarray]], np.ndarray],
              shapes: Sequence[str], seed: int, num_train: int,
              num_test: int, center_range=CENTER_RANGE,
              scale_range=SCALE_RANGE) -> dict:
  rng = np.random.default_rng(seed)
  factors = _sample(num_train + num_test, rng, shapes, center_range,
                    scale_range)
  images = render_shapes(shapes=shapes, **factors)
  labels = label_of(factors)
  cut = lambda a, b: {"image": images[a:b], "label": labels[a:b]}
  return {"train": cut(0, num_train),
          "test": cut(num_train, num_train + num_test),
          "num_classes": NUM_BINS, "factors": factors}


def dsprites_loc_task(num_train: int = DSPRITES_TRAIN,
                      num_test: int = DSPRITES_TEST, seed: int = 1) -> dict:
  """x-position of a square / ellipse / heart, 8 bins (VTAB: dSprites-loc)."""
  return _dsprites(lambda f: _bin(f["cx"], *CENTER_RANGE, NUM_BINS),
                   ("square", "ellipse", "heart"), seed, num_train, num_test)


def dsprites_ori_task(num_train: int = DSPRITES_TRAIN,
                      num_test: int = DSPRITES_TEST, seed: int = 2) -> dict:
  """Orientation of a heart / arrow, 8 bins of 45 degrees (VTAB: dSprites-ori);
  a square's 4-fold or an ellipse's 2-fold symmetry would blur the label."""
  return _dsprites(lambda f: _bin(f["angle"], 0.0, 2 * np.pi, NUM_BINS),
                   ("heart", "arrow"), seed, num_train, num_test,
                   ORI_CENTER_RANGE, ORI_SCALE_RANGE)


# --- real digits --------------------------------------------------------------


def mnist_10shot_task(per_class: int = 10) -> dict:
  """10 labelled MNIST digits per class (100 train / 400 test) from the 500
  held out of pretraining, stratified with the demo's fixed split seed."""
  held_out = demo_data.mnist5k_task()["test"]     # 50 per class, never seen
  return demo_data.split_task(held_out, 10 * per_class)


TASKS: Dict[str, Callable[[], dict]] = {
    "digits": demo_data.digits_task,
    "mnist_10shot": mnist_10shot_task,
    "dsprites_loc": dsprites_loc_task,
    "dsprites_ori": dsprites_ori_task,
}

# One line per task for tables: (domain relative to the backbone, what).
TASK_INFO = {
    "digits": ("near-domain", "sklearn digits, 10 classes, 1000 train / 797 "
               "test"),
    "mnist_10shot": ("IN-DOMAIN", "MNIST, 10 labels per class, 100 train / "
                     "400 test (held out from pretraining)"),
    "dsprites_loc": ("structured", "dSprites-style x-position, 8 bins, "
                     "1000 train / 500 test"),
    "dsprites_ori": ("structured", "dSprites-style orientation, 8 bins, "
                     "1000 train / 500 test"),
}


def get_task(name: str) -> dict:
  return demo_data.lookup_task(TASKS, "study", name)


PP_MODULES = ("image",)


def make(task: str, split: str = "train"):
  """dict(name="study", task="dsprites_loc", split="train")."""
  from losa_jax.datasets import arrays  # pylint: disable=g-import-not-at-top
  return arrays.ArraySource(get_task(task), split, name=f"study:{task}")
