# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The one batch search: the largest multiple of a step for which a test
holds (a compiled peak within a budget, or a real step that runs)."""
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple


def affine_guess(peaks: Sequence[Tuple[int, float]], budget: float) -> float:
  """Batch at which the affine fit of (batch, compiled peak) hits budget."""
  if not peaks:
    return 0.0
  (b1, p1), (b2, p2) = peaks[0], peaks[-1]
  if b2 > b1 and p2 > p1:
    slope = (p2 - p1) / (b2 - b1)
    return (budget - (p1 - slope * b1)) / slope
  return b1 * budget / max(p1, 1.0)


def search(fits, *, lo: int, hi, guess: float, cap: int, mult: int,
           resolution: float, deadline: float) -> Dict[str, Any]:
  """Largest multiple of `mult` in (lo, cap] for which fits(b) is True.

  lo: a batch known to fit (0: none); hi: one known not to (None: none).
  Tries the guess first, then grows by 1.1x, 1.2x, 1.4x, ... until a
  failure, then bisects (its first step just below the failure, where an
  accurate guess puts the answer) until hi - lo <= max(mult, resolution *
  lo), the cap is reached, or time.time() passes `deadline`.

  Returns {max_batch: lo, first_oom: hi, tries: [[b, ok, s], ...],
  exact, at_cap, stopped_by_budget}.
  """
  def snap(x):
    return int(max(mult, min(cap, (int(x) // mult) * mult)))

  def next_after_fit():
    if hi is None:   # grow: 1.1x, 1.2x, 1.4x, ... but at least one step
      return max(snap(lo * (1 + grow)), lo + mult)
    return snap((lo + hi) // 2)

  tries: List[List[Any]] = []
  b, grow, stopped = snap(guess), 0.1, False
  while True:
    if lo >= cap or (hi is not None and hi - lo <= max(mult, resolution * lo)):
      break
    if time.time() > deadline:
      stopped = True
      break
    if b <= lo or (hi is not None and b >= hi):
      b = next_after_fit()
      if b <= lo or b > cap or (hi is not None and b >= hi):
        break   # nothing left between lo and hi at this granularity
    t0 = time.perf_counter()
    ok = bool(fits(b))
    tries.append([b, ok, round(time.perf_counter() - t0, 2)])
    if ok:
      lo = b
      b = next_after_fit()
      grow *= 2
    else:
      first_fail = hi is None
      hi = b
      # An accurate guess that just failed: the answer is a little below.
      b = snap(max((lo + hi) // 2, hi * 0.92) if first_fail
               else (lo + hi) // 2)
  return {"max_batch": lo, "first_oom": hi, "tries": tries,
          "exact": hi is not None and hi - lo <= max(mult, resolution * lo),
          "at_cap": lo >= cap, "stopped_by_budget": stopped}


def largest_batch(peak_of: Callable[[int], float], budget: float, *,
                  step: int = 8, cap: int = 16384):
  """Largest multiple of `step` <= cap with peak_of(b) <= budget, exact.

  Compiled memory is close to affine in the batch: two compiles (4 and 8
  steps) give the first guess of `search`, each probe one compile.
  Returns (batch or 0, peak at that batch, {batch: peak} of every probe).
  """
  probes: Dict[int, float] = {}

  def peak(b):
    if b not in probes:
      probes[b] = peak_of(b)
    return probes[b]

  known = [(b, peak(b)) for b in (min(4 * step, cap), min(8 * step, cap))]
  lo = max([b for b, p in known if p <= budget], default=0)
  hi = min([b for b, p in known if p > budget], default=None)
  r = search(lambda b: peak(b) <= budget, lo=lo, hi=hi,
             guess=affine_guess(known, budget), cap=cap, mult=step,
             resolution=0.0, deadline=float("inf"))
  best = r["max_batch"]
  return best, (peak(best) if best else float("nan")), probes
