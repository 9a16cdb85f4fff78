# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Param-tree helpers keyed by `/`-joined names (names are the API)."""
import re
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import jax
from flax import traverse_util


def flatten(tree) -> Dict[str, Any]:
  """{"a": {"b": x}} -> {"a/b": x}. Only dict nodes are flattened."""
  return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def unflatten(flat: Dict[str, Any]):
  return traverse_util.unflatten_dict(flat, sep="/") if flat else {}


def names(tree) -> List[str]:
  return sorted(flatten(tree))


def check_patterns(patterns: Iterable[str], what: str):
  for p in patterns:
    if p.startswith("/"):
      raise ValueError(f"{what} pattern {p!r} starts with '/': param names "
                       "never do (e.g. 'backbone/.*').")
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"{what} pattern {p!r} is not a valid regex: {e}") from None


def match_rules(tree, rules: Sequence[Tuple[str, Any]], what: str,
                ) -> Tuple[Dict[str, int], Dict[int, List[str]]]:
  """First full-matching rule per param; every param must be covered.

  Returns ({name: rule index}, {rule index: [names]}).
  """
  check_patterns([r for r, _ in rules], what)
  compiled = [re.compile(r) for r, _ in rules]
  assignment, matched = {}, {i: [] for i in range(len(rules))}
  uncovered = []
  for name in names(tree):
    for i, pat in enumerate(compiled):
      if pat.fullmatch(name):
        assignment[name] = i
        matched[i].append(name)
        break
    else:
      uncovered.append(name)
  if uncovered:
    raise ValueError(
        f"{what}: {len(uncovered)} param(s) match no rule, e.g. "
        f"{uncovered[:5]}; add a rule (use None to freeze), rules were "
        f"{[r for r, _ in rules]}.")
  return assignment, matched


def map_with_names(fn: Callable[[str, Any], Any], tree):
  return unflatten({k: fn(k, v) for k, v in flatten(tree).items()})


def partition(tree, mask: Dict[str, bool]):
  """Splits a tree into (selected, rest) by a {name: bool} mask.

  Both halves are nested dicts holding only their own leaves, so the frozen
  half can be closed over and never enters `jax.grad`.
  """
  flat = flatten(tree)
  return (unflatten({k: v for k, v in flat.items() if mask[k]}),
          unflatten({k: v for k, v in flat.items() if not mask[k]}))


def combine(*trees):
  """Inverse of `partition`: merges disjoint nested dicts."""
  flat = {}
  for t in trees:
    f = flatten(t)
    dup = set(f) & set(flat)
    if dup:
      raise ValueError(f"combine: names present twice: {sorted(dup)[:5]}")
    flat.update(f)
  return unflatten(flat)


def count(tree) -> int:
  return sum(int(getattr(x, "size", 0)) for x in jax.tree.leaves(tree))
