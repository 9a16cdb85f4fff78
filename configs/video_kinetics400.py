# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""LoSA on Kinetics-400 with a ViViT backbone inflated from an image ViT.

The data must be prepared locally; nothing is downloaded. tensorflow-datasets
4.9.10 has no Kinetics builder, so the default source is a frame folder
`<frames_root>/<split>/<class>/<video_id>/*.jpg|png` (extract frames once,
e.g. `ffmpeg -i v.mp4 -vf scale=-2:256 -q:v 2 <video_id>/%05d.jpg` at the
native 25 fps), with splits `train` and `val`. A TFDS dataset you built
yourself (features `video` + `label`) works too: pass `tfds=<name>` and
`data_dir=...`.

Exact commands (the image checkpoint is your own file; any npz that
`losa_jax.models.porting` loads works):

  # 1. Inflate the image ViT to a ViViT once (central-frame 3-D kernels,
  #    posemb resampled to the 14x14 grid and tiled over 16 time steps).
  python -m losa_jax.tools.inflate_vivit --image_ckpt /ckpts/ViT-B_16.npz \
      --out /ckpts/vivit_B16_32f.npz --variant B/16 --pool_type tok \
      --num_frames 32 --image_size 224 --method central

  # 2. Train the side network (ViT-B/16, 32 frames at stride 2, 16x16x2
  #    tubelets: 16 x 196 tokens + CLS).
  python -m losa_jax.train --workdir /tmp/k400_losa_B16 \
      --config configs/video_kinetics400.py:variant=B/16,frames_root=/data/k400_frames,init=/ckpts/vivit_B16_32f.npz

  # 3. Multi-view test (4 temporal clips x 3 spatial crops, logits averaged):
  python -c "from losa_jax.serving import predict; \
  from configs import video_kinetics400 as c; \
  a = 'variant=B/16,frames_root=/data/k400_frames,init=/ckpts/vivit_B16_32f.npz'; \
  print(predict.multiview_eval(c.get_config(a), '/tmp/k400_losa_B16', \
                          pp=c.multiview_pp(a)))"

Args (`:k=v,...`): variant (B/16, L/16, H/14, g/14, e/14), method (losa |
linear | full | lora | adapter | st_adapter: ST-Adapter at its paper
defaults, model.st_adapter), frames, stride, tubelet (frames per
tubelet), res, rank, rank_time, mixing (space_time | time_space | joint |
space | time), pool_type (the checkpoint's: tok for the original ViT
release, gap/map for big_vision ViT-g/e), batch, epochs, lr, frames_root /
tfds + data_dir, init, clips x crops for multi-view (views="4x3"),
runlocal (a few steps with 1 frame-folder video per class for smoke tests).

Memory-saving settings (all on by default): bf16 backbone compute
(`dtype_mm="bfloat16"`), frozen backbone params stored in bf16
(`model_load.param_dtype`), `scan=True` with per-block remat (matters only
for methods that backpropagate through the backbone), the side network's
per-layer remat (`losa.remat`). Batch sizes per variant are starting points
sized from the XLA memory estimates in docs/video.md, not measured on a GPU.

No LoSA video hyper-parameters were published; the recipe here (AdamW 1e-3,
cosine, 30 epochs, Scenic's ViViT-B K400 sampling) is the reimplementation's
default, not the paper's.
"""
import ml_collections

from configs import common

# variant: (default frames, default pool_type, LoSA batch size)
VARIANTS = {
    "B/16": (32, "tok", 64),
    "L/16": (32, "tok", 32),
    "H/14": (16, "tok", 16),
    "g/14": (16, "gap", 8),
    "e/14": (16, "gap", 4),
}
# Methods that backpropagate through the backbone need more memory.
_BATCH_DIVISOR = {"losa": 1, "linear": 1, "full": 4, "lora": 2, "adapter": 2,
                  "st_adapter": 2}


def make_config(arg, *, dataset: str, num_classes: int, train_split: str,
                eval_split: str, flip: bool, sample: str, default_stride: int,
                epochs: int, views: str):
  """The video config shared by Kinetics-400 and SSv2 (see module docs)."""
  arg = common.parse_arg(
      arg, variant="B/16", method="losa", frames=0, stride=default_stride,
      tubelet=2, res=224, rank=8, rank_time=0, mixing="space_time",
      pool_type="", batch=0, epochs=epochs, lr=1e-3, frames_root="", tfds="",
      data_dir="", init="", views=views, runlocal=False, seed=0)
  del views  # Only used by multiview_pp; accepted here so one arg fits both.
  if arg["variant"] not in VARIANTS:
    raise ValueError(f"{dataset}: variant={arg['variant']!r}: use one of "
                     f"{sorted(VARIANTS)}.")
  frames0, pool0, batch0 = VARIANTS[arg["variant"]]
  frames = arg["frames"] or frames0
  res = arg["res"]
  batch = arg["batch"] or max(1, batch0 // _BATCH_DIVISOR.get(
      arg["method"], 1))

  c = ml_collections.ConfigDict()
  c.seed = arg["seed"]
  c.num_classes = num_classes
  # (T, H, W): the trainer builds the model on [1, T, H, W, 3] clips.
  c.image_size = (frames, res, res)
  c.total_epochs = arg["epochs"]

  if arg["tfds"]:
    data = dict(name=arg["tfds"], data_dir=arg["data_dir"] or None,
                in_memory=False)
  else:
    data = dict(name="frames",
                root=arg["frames_root"] or f"/data/{dataset}_frames")
  sample_op = (f"video_sample({frames}, mode='uniform')" if sample == "uniform"
               else f"video_sample({frames}, stride={arg['stride']}, "
               "mode='random')")
  to_model = ("value_range(-1, 1, key='video')|copy('video', 'image')|"
              "keep('image', 'label')")
  train_pp = (f"{sample_op}|video_decode(channels=3)|"
              f"video_scale_jitter({res}, 1.0, 1.33)|"
              f"video_random_crop({res})|" +
              ("video_flip_lr|" if flip else "") + to_model)
  central = (f"video_sample({frames}, mode='uniform')" if sample == "uniform"
             else f"video_sample({frames}, stride={arg['stride']}, "
             "mode='central')")
  eval_pp = (f"{central}|video_decode(channels=3)|video_resize_small({res})|"
             f"video_central_crop({res})|{to_model}")
  c.input = dict(data=dict(data, split=train_split), batch_size=batch,
                 pp=train_pp, shuffle=True)
  # Single view per clip during training; the multi-view protocol is
  # `losa_jax.serving.predict.multiview_eval` (see the module docstring).
  c.evals = dict(val=dict(data=dict(data, split=eval_split), pp=eval_pp,
                          batch_size=batch))

  c.model_init = arg["init"]
  c.model_load = dict(dont_load=["head/.*"], param_dtype="bfloat16")
  c.model = common.model(
      arg["method"],
      dict(kind="vivit", variant=arg["variant"],
           temporal_patch_size=arg["tubelet"], num_frames=frames,
           pool_type=arg["pool_type"] or pool0, scan=True,
           remat_policy="nothing_saveable", dtype_mm="bfloat16"),
      # CLS is left out of factorised token mixing (docs/method.md 2.4), so
      # the side network pools the refined patch tokens (gap), not CLS.
      arg["rank"], rank_time=arg["rank_time"] or None,
      video_token_mixing=arg["mixing"], pool="gap", remat=True)

  common.adamw_cosine(
      c, lr=arg["lr"] if arg["method"] != "full" else arg["lr"] / 10,
      warmup=dict(warmup_percent=0.05), grad_clip_norm=1.0, log_every=50,
      eval_every=0, ckpt_every=1000, keep_ckpts=2)
  c.label_smoothing = 0.1
  if arg["runlocal"]:
    c.total_epochs = None
    c.total_steps = 4
    c.input.batch_size = 2
    c.evals.val.batch_size = 2
    c.log_every = 1
    c.ckpt_every = 2
  return c


def make_multiview_pp(arg, *, sample: str, default_stride: int,
                      views: str) -> str:
  """The multi-view test pp: [V, T, res, res, 3] per example, V = clips x crops.

  "uniform" datasets (SSv2) spread the frames over the whole video once, so
  their views differ only spatially (views "1x3").
  """
  arg = common.parse_arg(arg, lazy=True, frames=0, stride=default_stride,
                         res=224, views=views, variant="B/16")
  frames = arg["frames"] or VARIANTS.get(arg["variant"], (32,))[0]
  try:
    clips, crops = (int(v) for v in str(arg["views"]).lower().split("x"))
  except ValueError:
    raise ValueError(f"views={arg['views']!r}: write <clips>x<crops>, e.g. "
                     "'4x3'.") from None
  res = arg["res"]
  head = (f"video_sample({frames}, mode='uniform')|" if sample == "uniform"
          else "")
  stride = 1 if sample == "uniform" else arg["stride"]
  return (f"{head}video_decode(channels=3)|video_resize_small({res})|"
          f"video_multiview({frames}, {stride}, {clips}, {res}, {crops})|"
          "value_range(-1, 1, key='video')|copy('video', 'image')|"
          "keep('image', 'label')")


def multiview_pp(arg=None) -> str:
  """Kinetics-400 test views: 4 clips x 3 crops by default (`views=4x3`)."""
  return make_multiview_pp(arg, sample="random", default_stride=2,
                           views="4x3")


def get_config(arg=None):
  """Kinetics-400 (400 classes), splits train / val (see module docs)."""
  return make_config(arg, dataset="kinetics400", num_classes=400,
                     train_split="train", eval_split="val", flip=True,
                     sample="random", default_stride=2, epochs=30,
                     views="4x3")
