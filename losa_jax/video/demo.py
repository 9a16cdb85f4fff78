# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Video LoSA demo, offline: does the side network's temporal mixing matter?

  python -m losa_jax.video.demo                 # the table in docs/video.md
  python -m losa_jax.video.demo --steps 20      # a quick smoke run

Task: `losa_jax.video.moving_digits` (8 frames of 28x28; the label is the
direction a real MNIST digit moves in: right / left / down / up; 1,000
training clips, 500 test clips from held-out digits). Backbone: the shipped
MNIST ViT (losa_jax/assets/vit_mnist5k_tiny.npz) inflated to a ViViT with
2x4x4 tubelets (4 x 49 tokens + CLS), average-frame 3-D kernels and the
position embedding tiled over time. Every run goes through the normal
trainer (`losa_jax.train.train_and_evaluate`) with
configs/video_moving_digits.py, one config arg per row:

  losa, space+time   mixing=space_time   factorised spatial + temporal MLPs
  losa, space only   mixing=space        same, without the temporal MLP
  losa, space+time,  pool=tok            pools CLS, which factorised mixing
    CLS pooled                           never updates (docs/video.md)
  linear probe       method=linear       head on the frozen CLS feature

Why average-frame inflation here: with central-frame kernels a tubelet sees
only its second frame, which makes the frames a clip shows depend on the
direction (a leak a frame-order-blind model could exploit); averaging the
two frames is symmetric in time.

LoSA rows train from the trainer's in-memory backbone feature cache
(config arg `cache`; the demo's pp has no random op, so every epoch feeds the
backbone the same clips): the backbone runs once per clip instead of once
per step, about 4x faster here. `--no_cache` runs every step through the
backbone instead (same conclusions; both tables are in docs/video.md).

Prints a table (test accuracy, trainable params, wall time incl. compile and
cache building) and writes it as JSON next to the workdirs.
"""
import argparse
import json
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from losa_jax import demo as demo_pkg

CACHE_ENV = "LOSA_JAX_CACHE"
CLIP_SHAPE = (8, 28, 28)
TEMPORAL_PATCH = 2

# (row name, config arg)
RUNS = (
    ("LoSA, space+time mixing", "method=losa,mixing=space_time"),
    ("LoSA, space-only mixing", "method=losa,mixing=space"),
    ("LoSA, space+time, CLS pooled", "method=losa,mixing=space_time,pool=tok"),
    ("linear probe", "method=linear"),
)


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "losa_jax")


def video_backbone_kwargs() -> Dict:
  """`vivit.Model` kwargs: the shipped image backbone + tubelets of 2 frames."""
  return dict(kind="vivit", temporal_patch_size=TEMPORAL_PATCH,
              num_frames=CLIP_SHAPE[0], **demo_pkg.backbone_model_kwargs())


def inflated_backbone(method: str = "average",
                      out_dir: Optional[str] = None) -> str:
  """Path of the shipped backbone inflated to the demo's ViViT (made once).

  The file name carries the image npz's sha256 (from its JSON), so a new
  image asset gives a new file. Written atomically (npz.save_npz).
  """
  from losa_jax.models import vivit  # pylint: disable=g-import-not-at-top
  if not os.path.exists(demo_pkg.BACKBONE_NPZ):
    raise FileNotFoundError(
        f"The shipped image backbone {demo_pkg.BACKBONE_NPZ} is missing; "
        "produce it with `python -m losa_jax.demo.pretrain --config "
        "configs/pretrain_mnist.py`.")
  sha = demo_pkg.backbone_info().get("sha256", "nosha")[:12]
  t, h, w = CLIP_SHAPE
  path = os.path.join(out_dir or cache_dir(),
                      f"vivit_mnist5k_tiny_{sha}_{method}_t{TEMPORAL_PATCH}_"
                      f"{t}x{h}x{w}.npz")
  if not os.path.exists(path):
    vivit.inflate_checkpoint(demo_pkg.BACKBONE_NPZ, path,
                             video_backbone_kwargs(), method,
                             clip_shape=CLIP_SHAPE)
  return path


def run(steps: Optional[int] = None, runs: Sequence = RUNS,
        root: Optional[str] = None, extra_arg: str = "cache"
        ) -> List[Dict]:
  """Trains each row with the trainer; returns one result dict per row."""
  from configs import video_moving_digits  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  root = root or tempfile.mkdtemp(prefix="losa_video_demo_")
  rows = []
  for name, arg in runs:
    full_arg = ",".join(a for a in (arg, f"steps={steps}" if steps else "",
                                    extra_arg) if a)
    config = video_moving_digits.get_config(full_arg)
    workdir = os.path.join(root, arg.replace(",", "_").replace("=", "-"))
    t0 = time.time()
    res = train.train_and_evaluate(config, workdir)["results"]
    rows.append({"run": name, "config_arg": full_arg,
                 "test_accuracy": res["test/accuracy"],
                 "trainable_params": res["trainable_params"],
                 "steps": res["steps"], "time_s": time.time() - t0})
    print(f"-> {name}: test accuracy {res['test/accuracy']:.3f}", flush=True)
  with open(os.path.join(root, "video_demo_results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  return rows


def table(rows: Sequence[Dict]) -> str:
  lines = ["| run | test accuracy | trainable params | steps | time (s) |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['run']} | {r['test_accuracy']:.3f} | "
                 f"{r['trainable_params']:,} | {r['steps']} | "
                 f"{r['time_s']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description="Video LoSA demo (moving digits).")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per run (default: the config's)")
  p.add_argument("--root", default=None, help="where the workdirs go")
  p.add_argument("--only", default="",
                 help="comma-separated row numbers to run (0-based)")
  p.add_argument("--no_cache", action="store_true",
                 help="run the backbone at every LoSA step (no feature cache)")
  args = p.parse_args(argv)
  runs = RUNS
  if args.only:
    runs = [RUNS[int(i)] for i in args.only.split(",")]
  rows = run(args.steps, runs, args.root,
             extra_arg="" if args.no_cache else "cache")
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
