# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The benchmark sections: name -> function(options) -> rows (dicts).

Each names its function as "module:function", imported only when it runs
(listing, parsing and starting a child import no jax nor TensorFlow), the
options it reads with their defaults (their meaning: `OPTIONS`, once), the
sizes `--quick` shrinks them to, and the XLA flags it needs, for which
`python -m losa_jax.bench` starts a child process.
"""
import dataclasses
import importlib
import types
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence,
                    Union)

from losa_jax.bench import common

METHODS = ("losa", "linear", "full", "lora", "adapter", "lst", "last")
BIG_CONFIGS = (  # (label, method, remat of the scanned backbone)
    ("losa", "losa", True), ("losa f32", "losa", True),
    ("linear", "linear", True),
    ("lora+remat", "lora", True), ("lora", "lora", False),
    ("adapter+remat", "adapter", True), ("adapter", "adapter", False),
    ("full+remat", "full", True), ("full", "full", False),
    ("lst", "lst", True), ("last", "last", True))
BIG = tuple(label for label, _, _ in BIG_CONFIGS)
SYSTEMS = ("losa", "lora_merged", "full", "backbone")
ACCEL_PARTS = ("check", "timing", "vit_e", "memory", "maxbatch")
ACCEL_METHODS = ("forward", "losa", "lora", "adapter", "full")
FSDP_DEVICES = 8   # fake CPU devices of the fsdp section
COMPILE_ONLY = f"{common.LICM_OFF} {common.FAST_COMPILE}"


# What each option means. Its kind is its default's type (a list: a comma
# list); CHOICES are the values a str / strs option accepts.
OPTIONS: Dict[str, str] = {
    "variants": "ViT variants (224 px; 'tiny' is a 4-block width-32 ViT at "
                "32 px).",
    "variant": "ViT variant (224 px; 'tiny' as in --variants).",
    "batch": "Batch size.",
    "batches": "Batch sizes.",
    "methods": "Training methods.",
    "reps": "Timed interleaved rounds (every timed call once per round, the "
            "order rotated).",
    "warmup": "Untimed rounds after the compiling call.",
    "input_images": "JPEG images (4:3) of the input section's split.",
    "image_px": "Short side of the input section's images and frames.",
    "clips": "Clips (32 JPEG frames each) of the input section's video.",
    "video_batch": "Clips per batch of the input section's video pp.",
    "timed_batches": "Timed batches per pipeline and round.",
    "accel_images_per_s": "Images/s an accelerator runs LoSA at, for the "
                          "host cores that feed it.",
    "images": "Images of the synthetic task the feature cache caches and "
              "trains on.",
    "budget_gib": "Memory budget (GiB) the compiled peak must fit.",
    "multiple": "Batches tried are multiples of this.",
    "cap": "Largest batch tried.",
    "configs": "Big-backbone configs.",
    "linearity_variant": "Variant compiled at 1/8, 1/4, 1/2 depth to show "
                         "memory is linear in depth ('' skips).",
    "linearity_configs": "Configs of the linearity check.",
    "fsdp": f"Mesh sizes on the 'fsdp' axis, each <= {FSDP_DEVICES} (fake "
            "CPU devices).",
    "depths": "Depths to compile at (empty: the variant's own); several fit "
              "peak ~ a + b * depth.",
    "batch_per_device": "Images per device (the global batch is this times "
                        "the mesh size).",
    "licm": "Keep XLA's while-loop-invariant code motion (see "
            "common.LICM_OFF).",
    "config": "Video config file (path.py) whose get_config takes variant=, "
              "method=, frames=, batch=; empty: configs/video_kinetics400.py.",
    "arg": "Extra get_config args of the config file, e.g. rank=16.",
    "frames": "Frames per clip.",
    "depth_fracs": "Also compile at depth // k for these k.",
    "flops_depths": "Blocks of the unrolled models whose FLOPs are "
                    "extrapolated (empty: no FLOPs).",
    "tasks": "Numbers of served tasks N.",
    "systems": "Serving systems.",
    "rank": "LoSA / LoRA rank.",
    "num_classes": "Classes per task.",
    "max_copy_images": "N-copy cells with N x batch above this are scaled "
                       "from N=1, not run (0: run all).",
    "parts": "Parts of the accelerator section (they always run in this "
             "order).",
    "accel_methods": "Methods ('forward': the frozen backbone's inference "
                     "forward).",
    "scan": "Scanned backbone blocks (lax.scan) in the timing and memory "
            "parts: XLA then counts one block's FLOPs, so FLOP columns are "
            "left out (the guard always unrolls).",
    "remat": "Per-block remat of the scanned backbone (costs LoRA / adapters "
             "/ full a second forward).",
    "depth": "If > 0, overrides the depth of every variant but "
             "--vit_e_variant's.",
    "mem_cap_gib": "If > 0, a batch 'fits' when its compiled peak is at most "
                   "this (a simulated search; also where the backend reports "
                   "no memory, XLA:CPU, with 16 GiB if unset).",
    "resolution": "The batch search stops once the first failing batch is "
                  "within this fraction of the largest that ran.",
    "budget_s": "Wall-time budget of the whole section, seconds: each job "
                "gets a share of what is left, a batch search stops at its "
                "share, a job past the budget is killed.",
    "maxbatch_variants": "Variants whose largest batch is searched (2-5 "
                         "programs per method).",
    "maxbatch_methods": "Methods whose largest batch is searched.",
    "vit_e_variant": "Backbone of the vit_e part (scanned, per-block remat).",
    "vit_e_batch": "Batch of the vit_e part.",
    "vit_e_reps": "Timed steps of the vit_e part.",
    "guard_variant": "Variant of the cost guard.",
    "guard_batches": "Batches of the cost guard.",
    "guard_max_ratio": "The guard holds if LoSA step FLOPs <= this x the "
                       "backbone forward's.",
    "check_variant": "Variant of the accelerator vs CPU step (it runs on the "
                     "CPU too: keep it small).",
    "check_batch": "Batch of the accelerator vs CPU step.",
    "isolation": "Process per job: 'method' (memory / maxbatch: one per "
                 "variant and method, so each peak is that method's), "
                 "'section' (one per part and variant: peaks are running "
                 "maxima), 'none' (everything in this process).",
    "mem_fraction": "XLA_PYTHON_CLIENT_MEM_FRACTION of the job processes, "
                    "unless already set (jax's 0.75 would hide a quarter of "
                    "the GPU from the batch search).",
}
CHOICES: Dict[str, Sequence[str]] = {
    "methods": METHODS, "configs": BIG, "linearity_configs": BIG,
    "systems": SYSTEMS, "parts": ACCEL_PARTS, "accel_methods": ACCEL_METHODS,
    "maxbatch_methods": ACCEL_METHODS, "isolation": ("method", "section",
                                                     "none")}


@dataclasses.dataclass(frozen=True)
class Section:
  """target: "module:function" of the options, returning rows; xla_flags:
  the XLA flags it runs under (a string, or a function of the options)."""
  name: str
  target: str
  doc: str
  defaults: Mapping[str, Any]
  quick: Mapping[str, Any]
  xla_flags: Union[str, Callable[[Any], str]] = ""

  def function(self) -> Callable[[Any], List[Dict[str, Any]]]:
    module, fn = self.target.split(":")
    return getattr(importlib.import_module(module), fn)

  def flags_for(self, a) -> str:
    return self.xla_flags(a) if callable(self.xla_flags) else self.xla_flags

  def kind(self, key: str) -> str:
    """bool, int, float, str, or ints / strs (comma lists), from the
    default (or, for an empty list, the --quick value)."""
    v = self.defaults[key]
    if isinstance(v, list):
      item = (v or self.quick.get(key) or [""])[0]
      return "ints" if isinstance(item, int) else "strs"
    return type(v).__name__


def _fast_if_quick(a) -> str:
  # Timed sections run under default flags; --quick only smoke-tests them.
  return common.FAST_COMPILE if a.quick else ""


def _licm_fast(a) -> str:
  return " ".join(([] if a.licm else [common.LICM_OFF]) +
                  ([common.FAST_COMPILE] if a.quick else []))


_TIMED = dict(variants=["Ti/16", "S/16", "B/16"], batch=8, reps=5, warmup=1)
_TIMED_QUICK = dict(variants=["tiny"], batch=4, reps=2, warmup=0)
_S = "losa_jax.bench."
SECTIONS: Dict[str, Section] = {s.name: s for s in (
    Section("compiled", _S + "sections_compiled:section_compiled",
            "Per variant and method: params, XLA FLOPs, compiled memory and "
            "their ratios to the backbone forward (f32, unscanned).",
            dict(variants=["Ti/16", "S/16", "B/16", "L/16"], batch=32,
                 methods=list(METHODS)),
            dict(variants=["tiny"], batch=4), COMPILE_ONLY),
    Section("dtype", _S + "sections_compiled:section_dtype",
            "LoSA's compiled memory: f32 vs bf16 backbone, unrolled vs "
            "scanned, with and without state donation.",
            dict(variant="B/16", batch=32), dict(variant="tiny", batch=4),
            COMPILE_ONLY),
    Section("maxbatch", _S + "sections_compiled:section_maxbatch",
            "Per method, the largest batch whose compiled peak fits "
            "--budget_gib (compile only).",
            dict(variant="B/16", budget_gib=16.0, multiple=8, cap=16384,
                 methods=list(METHODS)),
            dict(variant="tiny", budget_gib=0.02, multiple=4,
                 methods=["losa"]), COMPILE_ONLY),
    Section("big", _S + "sections_compiled:section_big",
            "Compiled memory of big backbones (scanned, bf16) per config, "
            "which fit 16 / 40 / 80 GiB, and memory vs depth.",
            dict(variants=["H/14", "g/14", "G/14", "e/14"], batch=8,
                 configs=list(BIG), linearity_variant="e/14",
                 linearity_configs=["losa", "lora+remat", "full+remat"]),
            dict(variants=["tiny"], batch=4, configs=["losa", "full+remat"],
                 linearity_variant="tiny", linearity_configs=["losa"]),
            COMPILE_ONLY),
    Section("big_default", _S + "sections_compiled:section_big",
            "LoSA's big-backbone memory under XLA:CPU's default flags.",
            dict(variants=["H/14", "g/14", "G/14", "e/14"], batch=8,
                 configs=["losa"], linearity_variant="",
                 linearity_configs=["losa"]),
            dict(variants=["tiny"], batch=4), common.FAST_COMPILE),
    Section("measured", _S + "sections_measured:section_measured",
            "Median step time of every method, the backbone forward and "
            "LoSA from cached features, interleaved.",
            dict(_TIMED, methods=list(METHODS)),
            dict(_TIMED_QUICK, methods=["losa", "full"]), _fast_if_quick),
    Section("cache", _S + "sections_measured:section_cache",
            "LoSA epoch time with and without the feature cache, steps "
            "interleaved, and the cache's build cost.",
            dict(variant="B/16", batch=8, images=128),
            dict(variant="tiny", batch=4, images=16), _fast_if_quick),
    Section("population", _S + "sections_measured:section_population",
            "K side networks on one backbone pass: compiled FLOPs and peak "
            "for K = 1..16, interleaved step times.", _TIMED, _TIMED_QUICK,
            _fast_if_quick),
    Section("side", _S + "sections_measured:section_side",
            "Memory traffic and step time of the side network's "
            "implementations (autodiff, fused f32, fused bf16).",
            _TIMED, _TIMED_QUICK, _fast_if_quick),
    Section("side_backward", _S + "sections_measured:section_side_backward",
            "Compiled cost of the cached LoSA step: side_scan's hand-written "
            "backward vs autodiff of the folded forward (docs/side_fused.md).",
            dict(variants=["B/16"], batch=32), dict(variants=["tiny"], batch=2)),
    Section("fsdp", _S + "sections_compiled:section_fsdp",
            "Per-device compiled memory of a LoSA step under FSDP over 8 "
            "fake CPU devices (scanned, bf16), fit against depth.",
            dict(variant="e/14", fsdp=[1, 4, 8], depths=[],
                 batch_per_device=4, licm=False),
            dict(variant="Ti/16", fsdp=[1, 2], depths=[1, 2],
                 batch_per_device=1),
            lambda a: f"--xla_force_host_platform_device_count="
                      f"{FSDP_DEVICES} {_licm_fast(a)}"),
    Section("video", _S + "sections_compiled:section_video",
            "Compiled memory and FLOPs of one video train step: LoSA vs "
            "linear, adapters, ST-Adapters, full (ViViT, scanned, bf16).",
            dict(config="", variant="e/14", frames=16, batch=1,
                 batches=[2, 4], depth_fracs=[8, 4, 2], flops_depths=[2, 4],
                 arg="", licm=False),
            dict(variant="B/16", frames=2, arg="res=32", batches=[],
                 depth_fracs=[12], flops_depths=[1, 2]),
            _licm_fast),
    Section("input", _S + "sections_input:section_input",
            "Input images/s: the project's pipeline vs plain tf.data on the "
            "VTAB train pp and a 16-frame video pp, on 1 and all cores; "
            "bytes each of P = 1, 2, 4 processes reads.",
            dict(input_images=2048, image_px=256, clips=16, batch=64,
                 video_batch=4, timed_batches=8, reps=5,
                 accel_images_per_s=2000.0),
            dict(input_images=64, clips=2, batch=16, video_batch=2,
                 timed_batches=2, reps=1)),
    Section("inference", _S + "inference:section_inference",
            "Serving N tasks: one backbone pass + N side networks vs N "
            "merged LoRA / full models, interleaved.",
            dict(variants=["B/16", "S/16"], batches=[1, 64],
                 tasks=[1, 4, 16], systems=list(SYSTEMS), rank=8,
                 num_classes=100, reps=3, warmup=1, max_copy_images=0),
            dict(variants=["tiny"], batches=[1, 4], tasks=[1, 2], reps=2,
                 warmup=0), _fast_if_quick),
    Section("accelerator", _S + "accelerator:section_accelerator",
            "GPU/TPU: accelerator vs CPU step, precision, cost guard; step "
            "time, peak memory and largest batch per method; a real ViT-e "
            "step. Jobs in fresh processes, within --budget_s.",
            dict(parts=list(ACCEL_PARTS), variants=["B/16", "L/16"],
                 batches=[64, 256], accel_methods=list(ACCEL_METHODS),
                 reps=10, warmup=2, budget_s=420.0,
                 maxbatch_variants=["B/16"],
                 maxbatch_methods=list(ACCEL_METHODS), cap=16384,
                 multiple=8, resolution=0.05, mem_cap_gib=0.0,
                 vit_e_variant="e/14", vit_e_batch=8, vit_e_reps=5,
                 guard_variant="B/16", guard_batches=[64],
                 guard_max_ratio=1.05, check_variant="tiny", check_batch=4,
                 scan=True, remat=False, depth=0, isolation="method",
                 mem_fraction=0.9),
            dict(variants=["tiny"], batches=[4, 8], reps=2, warmup=0,
                 maxbatch_variants=["tiny"], maxbatch_methods=["losa", "full"],
                 cap=256, mem_cap_gib=0.004, vit_e_variant="tiny",
                 vit_e_batch=2, vit_e_reps=2, guard_variant="tiny",
                 guard_batches=[8], isolation="section", depth=2, scan=False,
                 budget_s=240.0), _fast_if_quick),
)}


def section(name: str) -> Section:
  if name not in SECTIONS:
    raise KeyError(f"unknown benchmark section {name!r}; choose from "
                   f"{sorted(SECTIONS)} (`python -m losa_jax.bench list`).")
  return SECTIONS[name]


def parse_value(name: str, text: str, kind: str) -> Any:
  """The value of option `name` of `kind` (Section.kind) from its
  command-line text; raises ValueError naming the option and the value."""
  try:
    if kind == "bool" and text.lower() not in ("1", "0", "true", "false"):
      raise ValueError(f"{text!r} is not true / false")
    value = {"int": int, "float": float, "ints": common.int_list,
             "strs": common.csv_list, "str": str,
             "bool": lambda t: t.lower() in ("1", "true")}[kind](text)
  except ValueError as e:
    raise ValueError(f"--{name}: {e}") from None
  choices = CHOICES.get(name, ())
  bad = [v for v in (value if kind == "strs" else [value])
         if choices and v not in choices]
  if bad:
    raise ValueError(f"--{name}: unknown value(s) {bad}; choose from "
                     f"{list(choices)}.")
  return value


def options(name: str, given: Mapping[str, Any], *, quick: bool = False,
            out: Optional[str] = None) -> types.SimpleNamespace:
  """Section `name`'s options: its defaults, then --quick's sizes, then the
  values `given` (already parsed), with `quick` and `out` (the --out
  folder, or None); rejects options it does not read."""
  s = section(name)
  unknown = sorted(set(given) - set(s.defaults))
  if unknown:
    raise ValueError(f"section {name!r} has no option(s) "
                     f"{['--' + k for k in unknown]}; its options are "
                     f"{['--' + k for k in s.defaults]}.")
  values = dict(s.defaults)
  if quick:
    values.update(s.quick)
  values.update(given)
  return types.SimpleNamespace(quick=quick, out=out, **values)


def run(name: str, given: Mapping[str, Any] = (), *, quick: bool = False
        ) -> List[Dict[str, Any]]:
  """Runs section `name` in this process (its XLA flags are the caller's
  business: see losa_jax.bench.__main__); returns its rows."""
  return section(name).function()(options(name, dict(given), quick=quick))
