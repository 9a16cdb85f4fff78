# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`losa_jax.utils.cost` on small programs whose cost is counted by hand.

Every figure asserted here is derived in a comment from the shapes alone
(float32: 4 bytes, bfloat16: 2, int32 loop counter: 4), not read from the
function under test. The HLO is XLA:CPU's at the pinned jax version; where
XLA's own choices enter a count (a fusion boundary, a copy it inserts), the
comment says so.
"""
import jax
import jax.numpy as jnp

from losa_jax.utils import cost

F32 = jnp.float32


def _compile(fn, *shapes):
  args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
  return jax.jit(fn).lower(*args).compile()


def _by_op_name(rows):
  """{last part of the jax source path: (trips, bytes)}; each name once."""
  out = {}
  for r in rows:
    key = r["name"].rsplit("/", 1)[-1]
    assert key not in out, (key, rows)
    out[key] = (r["trips"], r["bytes"])
  return out


# --- cost_of_compiled: XLA's figures, read through -------------------------


def test_cost_of_compiled_of_a_dot_is_counted_by_hand():
  # x [4, 16] @ w [16, 8]: 2 * 4 * 16 * 8 = 1024 FLOPs (a multiply and an
  # add per term); arguments 4*(64 + 128) = 768 bytes, output 4*32 = 128.
  compiled = _compile(lambda x, w: x @ w, ((4, 16), F32), ((16, 8), F32))
  c = cost.cost_of_compiled(compiled)
  assert c["flops"] == 1024.0
  assert c["argument_bytes"] == 768.0 and c["output_bytes"] == 128.0
  # XLA's bytes accessed of one dot: both operands read, the output written.
  assert c["bytes_accessed"] == 768.0 + 128.0
  assert c["alias_bytes"] == 0.0 and c["temp_bytes"] == 0.0
  assert c["peak_bytes"] == 768.0 + 128.0
  # The same numbers as XLA's own analyses, read directly.
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  assert c["flops"] == ca["flops"]
  assert c["bytes_accessed"] == ca["bytes accessed"]
  mem = compiled.memory_analysis()
  assert c["argument_bytes"] == mem.argument_size_in_bytes
  assert c["output_bytes"] == mem.output_size_in_bytes
  # compiled_cost lowers and compiles the same program.
  assert cost.compiled_cost(jax.jit(lambda x, w: x @ w),
                            *cost.abstract((jnp.zeros((4, 16)),
                                            jnp.zeros((16, 8))))) == c


def test_cost_of_compiled_counts_a_donated_buffer_once():
  # x + 1 on a donated f32 [256]: the output reuses x's 1024 bytes.
  fn = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  c = cost.cost_of_compiled(
      fn.lower(jax.ShapeDtypeStruct((256,), F32)).compile())
  assert c["argument_bytes"] == c["output_bytes"] == c["alias_bytes"] == 1024
  assert c["peak_bytes"] == 1024 + c["temp_bytes"]


# --- hlo_traffic: bytes read and written per op, loop trips counted --------


def test_traffic_of_a_dot():
  # Reads x [4, 16] (256 B) and w [16, 8] (512 B), writes [4, 8] (128 B).
  rows = cost.hlo_traffic(_compile(lambda x, w: x @ w, ((4, 16), F32),
                                   ((16, 8), F32)))
  assert [(r["op"], r["trips"], r["bytes"]) for r in rows] == [
      ("fusion:dot", 1, 256 + 512 + 128)]


def test_traffic_of_an_elementwise_fusion():
  # tanh(x * y + 1) on [32, 64]: one fused loop reads x and y (8192 B each)
  # and writes 8192 B; the intermediates and the constant never reach
  # memory.
  rows = cost.hlo_traffic(_compile(lambda x, y: jnp.tanh(x * y + 1.0),
                                   ((32, 64), F32), ((32, 64), F32)))
  assert [(r["op"], r["bytes"]) for r in rows] == [("fusion:tanh", 3 * 8192)]


def test_traffic_counts_bytes_per_dtype():
  # f32 [32, 64] in (8192 B), bf16 [32, 64] out (4096 B).
  rows = cost.hlo_traffic(_compile(lambda x: x.astype(jnp.bfloat16) * 2,
                                   ((32, 64), F32)))
  assert sum(r["bytes"] for r in rows) == 8192 + 4096


def _stacked_tanh(ws, x):
  return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]


def test_traffic_of_a_scan_counts_every_trip():
  # h [4, 16] (256 B) through 5 layers w [5, 16, 16] (1024 B per layer).
  # Per trip, as XLA:CPU fuses the body:
  #   dynamic_slice: reads one layer (1024 B) of the stack, not the whole
  #     5120 B, and the s32 index (4 B); writes the layer (1024 B)  = 2052
  #   dot_general: reads h (256) and the layer (1024), writes h (256) = 1536
  #   tanh: reads and writes h                                        =  512
  #   the loop counter: add reads the counter and the constant 1, writes
  #     the counter (12), and XLA copies the counter in (8)            =   20
  # Outside the loop, XLA copies x (256 B in, 256 out) and the counter's
  # initial value (4 + 4) into the loop state: 520.
  compiled = _compile(_stacked_tanh, ((5, 16, 16), F32), ((4, 16), F32))
  rows = cost.hlo_traffic(compiled)
  named = _by_op_name([r for r in rows if "/" in r["name"]])
  assert named == {"dynamic_slice": (5, 5 * 2052),
                   "dot_general": (5, 5 * 1536), "tanh": (5, 5 * 512),
                   "add": (5, 5 * 12)}
  assert sum(r["bytes"] for r in rows) == 520 + 5 * (2052 + 1536 + 512 + 20)
  # XLA's own bytes accessed counts the body once: far below 5 trips.
  xla = cost.cost_of_compiled(compiled)["bytes_accessed"]
  assert xla < 520 + 2 * (2052 + 1536 + 512 + 20)


def test_traffic_of_nested_scans_multiplies_the_trips():
  # sin(h + x_j) for j < 4, the whole inner scan repeated 3 times: the
  # fused body runs 12 times, each reading h (1024 B), one x_j (1024 B of
  # the 4096 B stack) and the index (4), and writing h (1024).
  def fn(xs, h):
    inner = lambda h, x: (jnp.sin(h + x), None)
    outer = lambda h, _: (jax.lax.scan(inner, h, xs)[0], None)
    return jax.lax.scan(outer, h, None, length=3)[0]
  rows = cost.hlo_traffic(_compile(fn, ((4, 8, 32), F32), ((8, 32), F32)))
  assert _by_op_name([r for r in rows if r["op"] == "fusion:sine"]) == {
      "sin": (12, 12 * (1024 + 1024 + 4 + 1024))}


def test_traffic_of_a_scan_output_written_in_place():
  # ys_i = h * x_i for 6 steps, h [8, 32] (1024 B): XLA fuses the product
  # into the dynamic-update-slice that writes ys_i into the [6, 8, 32]
  # output in place. Per trip that fusion reads h (1024), one x_i (1024 of
  # the 6144 B stack) and the index (4), and writes ys_i (1024): the output
  # buffer itself is neither read nor rewritten, and what is written is
  # the one slice, not the sum of the fusion's inputs.
  def fn(xs, h):
    return jax.lax.scan(lambda h, x: (h + 1.0, h * x), h, xs)
  rows = cost.hlo_traffic(_compile(fn, ((6, 8, 32), F32), ((8, 32), F32)))
  dus = [r for r in rows if r["op"] == "fusion:dynamic-update-slice"]
  assert [(r["trips"], r["bytes"]) for r in dus] == [
      (6, 6 * (1024 + 1024 + 4 + 1024))]


def test_traffic_by_splits_the_scan_into_loop_and_entry():
  rows = cost.hlo_traffic(_compile(_stacked_tanh, ((5, 16, 16), F32),
                                   ((4, 16), F32)))
  # The counts of test_traffic_of_a_scan_counts_every_trip.
  assert cost.traffic_by(rows, lambda r: r["trips"]) == {
      1: 520.0, 5: 5.0 * (2052 + 1536 + 512 + 20)}


def test_phase_of_a_gradient():
  # d/dw sum(tanh(x @ w)): the forward dot and tanh are "jvp(...)" ops, the
  # dot giving dw is "transpose(jvp(...))".
  fn = jax.grad(lambda w, x: jnp.tanh(x @ w).sum())
  rows = cost.hlo_traffic(_compile(fn, ((16, 8), F32), ((4, 16), F32)))
  phases = {cost.phase(r) for r in rows}
  assert {"forward", "backward"} <= phases
  assert cost.phase(dict(name="jit(f)/rematted_computation/dot")) == "replay"
  assert cost.phase(dict(name="copy.3")) == "other"
