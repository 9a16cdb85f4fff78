# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The 19 VTAB-1k tasks: TFDS sources, splits, class counts and label ops.

`task(name)` returns a dict with

* `tfds_name`: TFDS name/config, e.g. "eurosat/rgb".
* `tfds_version`: the TFDS version read, pinned (`source` asks for
  "<tfds_name>:<tfds_version>"); `version_note`: why it differs from
  google-research/task_adaptation's, where it does.
* `splits`: split expressions keyed "train800", "val200", "train800val200",
  "test" (the VTAB-1k protocol), plus "train", "val", "trainval" (the full
  task_adaptation splits, for full-data runs).
* `num_classes`, `group` ("natural" / "specialized" / "structured"),
  `display` (the name used in results tables).
* `label_pp`: pp ops (see losa_jax.pp) that turn a raw TFDS example into
  {"image", "label"}; run them BEFORE the model pp, e.g.
  `pp.get_preprocess_fn([t["label_pp"], "decode|resize(224)|..."])`.

Splits follow google-research/task_adaptation as best known here (the
NOAH/VPT "vtab-1k" image lists come from the same splits): train800 is the
first 800 of "train"; val200 the first 200 of the split task_adaptation
validates on: "validation" where TFDS has one (`_official_val`), else the tail
of "train" after task_adaptation's train percentage (`_carved_val`), or the
first half of smallNORB's "test"; test is "test" unless the task's table
entry says otherwise. Carved offsets are absolute indices computed from the
TFDS split sizes (in each task's `note`), so they do not depend on
`builder.info` (empty under tfds.testing.mock_data).
"""
import copy
from typing import Any, Dict, List

from losa_jax.datasets import tfds as tfds_lib

GROUPS = ("natural", "specialized", "structured")
_KEEP = "keep('image', 'label')"


def _splits(train: str, val: str, trainval: str, val200: str,
            **more) -> Dict[str, str]:
  """The task_adaptation splits of a task (train800 is always train[:800])."""
  return dict(train=train, val=val, trainval=trainval, train800="train[:800]",
              val200=val200, train800val200=f"train[:800]+{val200}", **more)


def _carved_val(train_size: int, pct: int) -> Dict[str, str]:
  """Splits when validation is the tail of "train" after `pct`%."""
  v = train_size * pct // 100  # task_adaptation's integer arithmetic.
  return _splits(f"train[:{v}]", f"train[{v}:]", "train",
                 f"train[{v}:{v + 200}]")


def _official_val(val: str = "validation") -> Dict[str, str]:
  """Splits when the dataset has its own validation split."""
  return _splits("train", val, f"train+{val}", f"{val}[:200]")


def _train_only(train_size: int, train_pct: int, val_pct: int):
  """Splits for datasets with only "train": val and test are carved out."""
  t = train_size * train_pct // 100
  v = train_size * (train_pct + val_pct) // 100
  return dict(_carved_val(train_size, train_pct), val=f"train[{t}:{v}]",
              trainval=f"train[:{v}]", test=f"train[{v}:]")


# TFDS versions. task_adaptation asks for "<name>:<major>.*.*" (dmlab 2.0.1,
# kitti 3.1.0); the pins are what those resolve to in TFDS 4.9.10, except
# where a `version_note` says why not.
_PETS_VERSION_NOTE = (
    "task_adaptation asks for 3.*.*, which TFDS 4.9.10 cannot load: it only "
    "builds 4.0.0, from the same VGG trainval/test lists and 37 classes, "
    "with head boxes added and 12 corrupt JPEGs re-encoded (alpha "
    "dropped)")
_KITTI_VERSION_NOTE = (
    "task_adaptation pins 3.1.0. TFDS 4.9.10 builds 3.1.0 and 3.3.0 with the "
    "same code from the same devkit, so its 3.1.0 is 3.3.0 by another name; "
    "3.3.0 adds the `occluded` labels (not read here), 3.2.0 updated the "
    "devkit whose mapping files define train/validation/test, so a 3.1.0 "
    "prepared by an older TFDS may split differently (not checked: no KITTI "
    "data offline)")


def _task(display, tfds_name, group, num_classes, splits, label_pp=_KEEP,
          note="", *, version, version_note=""):
  splits = dict(splits)
  splits.setdefault("test", "test")
  return dict(display=display, tfds_name=tfds_name, tfds_version=version,
              version_note=version_note, group=group,
              num_classes=num_classes, splits=splits, label_pp=label_pp,
              note=note)


def _smallnorb(display: str, num_classes: int, label_key: str):
  """The sNORB task predicting `label_key` (azimuth or elevation); both
  split test alike: val is its first half, test its second."""
  return _task(
      display, "smallnorb", "structured", num_classes,
      _splits("train", "test[:50%]", "train+test[:50%]", "test[:200]",
              test="test[50%:]"),
      label_pp=f"copy('{label_key}', 'label')|{_KEEP}",
      note="val = first half of test, test = second half", version="2.0.0")


def _clevr(display: str, num_classes: int, label_op: str):
  """A CLEVR task; its test split has no labels, so "validation" is test."""
  return _task(display, "clevr", "structured", num_classes,
               dict(_carved_val(70_000, 90), test="validation"),
               label_pp=f"{label_op}|{_KEEP}",
               note="train 70000; test has no labels", version="3.1.0")


def _dsprites(display: str, attribute: str, num_original: int):
  return _task(display, "dsprites", "structured", 16,
               _train_only(737_280, 80, 10),
               label_pp=(f"decode(channels=3)|dsprites_label('{attribute}', "
                         f"16, {num_original})|{_KEEP}"),
               note="train 737280", version="2.0.0")


# TFDS split sizes the carved offsets use are in each `note`.
TASKS: Dict[str, Dict[str, Any]] = {
    # Natural.
    "cifar100": _task("CIFAR-100", "cifar100", "natural", 100,
                      _carved_val(50_000, 90), note="train 50000",
                      version="3.0.2"),
    "caltech101": _task("Caltech101", "caltech101", "natural", 102,
                        _carved_val(3_060, 90), note="train 3060",
                        version="3.0.2"),
    "dtd": _task("DTD", "dtd", "natural", 47, _official_val(),
                 version="3.0.1"),
    "oxford_flowers102": _task("Flowers102", "oxford_flowers102", "natural",
                               102, _official_val(), version="2.1.1"),
    "oxford_iiit_pet": _task("Pets", "oxford_iiit_pet", "natural", 37,
                             _carved_val(3_680, 80), note="train 3680",
                             version="4.0.0",
                             version_note=_PETS_VERSION_NOTE),
    "svhn": _task("SVHN", "svhn_cropped", "natural", 10,
                  _carved_val(73_257, 90), note="train 73257",
                  version="3.1.0"),
    "sun397": _task("Sun397", "sun397/tfds", "natural", 397, _official_val(),
                    version="4.0.0"),
    # Specialized.
    "patch_camelyon": _task("Camelyon", "patch_camelyon", "specialized", 2,
                            _official_val(), version="2.0.0"),
    "eurosat": _task("EuroSAT", "eurosat/rgb", "specialized", 10,
                     _train_only(27_000, 60, 20), note="train 27000",
                     version="2.0.0"),
    "resisc45": _task("Resisc45", "resisc45", "specialized", 45,
                      _train_only(31_500, 60, 20), note="train 31500",
                      version="3.0.0"),
    "diabetic_retinopathy": _task(
        "Retinopathy", "diabetic_retinopathy_detection/btgraham-300",
        "specialized", 5, _official_val(), version="3.0.0"),
    # Structured.
    "clevr_count": _clevr("Clevr-Count", 8, "clevr_count_all"),
    "clevr_dist": _clevr("Clevr-Dist", 6, "clevr_closest_distance"),
    "dmlab": _task("DMLab", "dmlab", "structured", 6, _official_val(),
                   version="2.0.1"),
    "kitti_dist": _task("KITTI-Dist", "kitti", "structured", 4,
                        _official_val(),
                        label_pp=f"kitti_closest_vehicle_distance|{_KEEP}",
                        version="3.3.0", version_note=_KITTI_VERSION_NOTE),
    "dsprites_loc": _dsprites("dSprites-Loc", "label_x_position", 32),
    "dsprites_ori": _dsprites("dSprites-Ori", "label_orientation", 40),
    "smallnorb_azi": _smallnorb("sNORB-Azim", 18, "label_azimuth"),
    "smallnorb_ele": _smallnorb("sNORB-Elev", 9, "label_elevation"),
}

# Short names used by NOAH/VPT-style code bases.
ALIASES = {
    "cifar": "cifar100", "flowers102": "oxford_flowers102",
    "pets": "oxford_iiit_pet", "camelyon": "patch_camelyon",
    "retinopathy": "diabetic_retinopathy", "kitti": "kitti_dist",
    "smallnorb_azimuth": "smallnorb_azi", "smallnorb_elevation":
        "smallnorb_ele", "dsprites_location": "dsprites_loc",
    "dsprites_orientation": "dsprites_ori",
}


def task(name: str) -> Dict[str, Any]:
  """The task dict of `name` (a key of TASKS or an ALIASES entry), a copy."""
  key = ALIASES.get(name, name)
  if key not in TASKS:
    raise ValueError(f"Unknown VTAB task {name!r}. Valid tasks: "
                     f"{', '.join(TASKS)} (aliases: {', '.join(ALIASES)}).")
  return dict(copy.deepcopy(TASKS[key]), name=key)


def tasks_in_group(group: str) -> List[str]:
  if group not in GROUPS:
    raise ValueError(f"Unknown VTAB group {group!r}; use one of {GROUPS}.")
  return [k for k, t in TASKS.items() if t["group"] == group]


def source(name: str, split: str = "train800val200", **kw):
  """A TfdsSource for a task split key (e.g. "train800") or expression;
  other kwargs (data_dir, download, in_memory, ...) go to TfdsSource."""
  t = task(name)
  return tfds_lib.TfdsSource(tfds_spec(name), t["splits"].get(split, split),
                             **kw)


def tfds_spec(name: str) -> str:
  """"<tfds name>:<pinned version>" of a task, e.g. "kitti:3.3.0"."""
  t = task(name)
  return f"{t['tfds_name']}:{t['tfds_version']}"


def resolved_tfds(name: str, data_dir=None) -> str:
  """"<tfds name>:<version>" that TFDS resolves the task's pin to in
  `data_dir`; raises with the task named if TFDS cannot load that version."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = tfds_spec(name)
  try:
    builder = tfds.builder(spec, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"VTAB task {task(name)['name']!r}: TFDS "
                     f"{tfds.__version__} cannot load {spec} ({e}); the pin "
                     "lives in losa_jax/datasets/vtab.py.") from e
  return f"{task(name)['tfds_name']}:{builder.version}"


def pp_spec(name, pp) -> List[str]:
  """[label ops of the task, model pp] for pp.get_preprocess_fn; `name` is
  the task name or the data kwargs of `make` (what `pp_for` passes)."""
  if isinstance(name, dict):
    name = name["task"]
  return [task(name)["label_pp"], pp]


PP_MODULES = ("image", "vtab")


def make(task: str, split: str = "train800val200", **kw):  # pylint: disable=redefined-outer-name
  """dict(name="vtab", task="cifar100", split="train800", data_dir=...)."""
  return source(task, split, **kw)
