# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""VTAB structured-task label ops (family "vtab"; task_adaptation's
definitions). They replace "label" with an int64 scalar derived from the
annotations."""
from typing import Sequence

import tensorflow as tf

from losa_jax.pp import register


def _bin_index(value: tf.Tensor, thresholds: Sequence[float]) -> tf.Tensor:
  """Index of the last threshold strictly below `value` (int64)."""
  thrs = tf.constant(thresholds, tf.float32)
  return tf.cast(tf.reduce_max(tf.where(thrs - value < 0)), tf.int64)


@register("clevr_count_all")
def _clevr_count_all():
  """CLEVR: number of objects (3..10) -> label 0..7."""

  def fn(ex):
    ex["label"] = tf.cast(tf.size(ex["objects"]["size"]) - 3, tf.int64)
    return ex

  return fn


@register("clevr_closest_distance")
def _clevr_closest_distance():
  """CLEVR: depth of the closest object, binned into 6 classes."""

  def fn(ex):
    dist = tf.reduce_min(ex["objects"]["pixel_coords"][:, 2])
    ex["label"] = _bin_index(dist, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    return ex

  return fn


@register("kitti_closest_vehicle_distance")
def _kitti_closest_vehicle_distance():
  """KITTI: depth of the closest car/van/truck in 3 bins, or 3 for none."""

  def fn(ex):
    objects = ex["objects"]
    # Types 0, 1, 2 are Car, Van, Truck in tfds' kitti ClassLabel.
    is_vehicle = objects["type"] < 3
    depth = tf.boolean_mask(objects["location"][:, 2], is_vehicle)
    # No vehicle: a far sentinel lands in the last bin ("no vehicle").
    dist = tf.reduce_min(tf.concat([depth, [1000.0]], axis=0))
    ex["label"] = _bin_index(dist, [-100.0, 8.0, 20.0, 999.0])
    return ex

  return fn


@register("dsprites_label")
def _dsprites_label(attribute: str, num_classes: int,
                    num_original_classes: int):
  """dSprites: bins `attribute` to `num_classes`; pixels {0,1} -> {0,255}.

  Needs a decoded image (put `decode(channels=3)` first); task_adaptation
  also rescales dSprites' binary pixels so they look like other images.
  """
  if num_classes <= 0 or num_original_classes < num_classes:
    raise ValueError("dsprites_label: need 0 < num_classes <= "
                     "num_original_classes.")

  def fn(ex):
    image = ex["image"]
    if image.dtype == tf.string:
      raise ValueError("dsprites_label needs a decoded image: put "
                       "`decode(channels=3)` before it.")
    ex["image"] = tf.cast(
        tf.clip_by_value(tf.cast(image, tf.int32) * 255, 0, 255), tf.uint8)
    label = tf.cast(ex[attribute], tf.int64)
    ex["label"] = label * num_classes // num_original_classes
    return ex

  return fn
