# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Markdown tables, CSVs and PNG plots of benchmark results.

  python scripts/bench_report.py DIR

reads every DIR/SECTION.json that `python -m losa_jax.bench SECTION --out
DIR` wrote and writes DIR/results.md, one CSV per section, linearity.csv
and the plots. `load(DIR)` returns {section: {"rows", **provenance}}.
"""
import glob
import json
import os
import sys
from typing import Any, Dict, List, Sequence

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]
# pylint: disable=g-import-not-at-top,wrong-import-position
import accelerator_report
from losa_jax.bench import common
from losa_jax.bench.configs import FIT_GIB
from losa_jax.utils import io as io_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

MIB, GIB = common.MIB, common.GIB
write_csv = common.write_csv
md_table = accelerator_report.md_table


def _rows(results, section) -> List[Dict[str, Any]]:
  return list((results.get(section) or {}).get("rows", []))


def _section(title: str, text: str, header: Sequence[str],
             rows: Sequence[Sequence[Any]]) -> List[str]:
  """The markdown lines of one report section: "## title", the reading
  `text` (none if empty) and the table of `rows` under `header`."""
  return [f"## {title}", "", *([text, ""] if text else []),
          md_table(header, rows), ""]


def _mibs(row: Dict[str, Any], *keys: str) -> List[str]:
  """row[key] bytes in MiB, 3 significant digits, for each key."""
  return [_num(row[k] / MIB) for k in keys]


def _fmt_int(x) -> str:
  return f"{int(x):,}"


def _num(x, sig: int = 3) -> str:
  """3 significant digits, thousands separators, no exponent: 1,234 / 0.0123."""
  x = float(x)
  if not np.isfinite(x):
    return str(x)
  if x == 0:
    return "0"
  if abs(x) < 1e-4:
    return f"{x:.1e}"
  digits = max(sig - 1 - int(np.floor(np.log10(abs(x)))), 0)
  return f"{x:,.{digits}f}"


def linearity(results) -> List[Dict[str, Any]]:
  """Per config: fit on the reduced depths, predict the full depth."""
  big = _rows(results, "big")
  out = []
  for cfg in sorted({r["config"] for r in big if r["linearity"]}):
    pts = sorted((r["depth"], r["peak_gib"]) for r in big
                 if r["linearity"] and r["config"] == cfg)
    full = [r for r in big if not r["linearity"] and r["config"] == cfg and
            r["variant"] == next(x["variant"] for x in big if x["linearity"])]
    if len(pts) < 2:
      continue
    slope, icpt = common.linear_fit(*zip(*pts))
    resid = max(abs(p - (slope * d + icpt)) for d, p in pts)
    row = {"config": cfg, "variant": full[0]["variant"] if full else "",
           "depths": [d for d, _ in pts], "peaks_gib": [p for _, p in pts],
           "slope_gib_per_block": slope, "intercept_gib": icpt,
           "max_fit_residual_gib": resid}
    if full:
      pred = slope * full[0]["depth"] + icpt
      row.update(full_depth=full[0]["depth"], predicted_gib=pred,
                 actual_gib=full[0]["peak_gib"],
                 prediction_error=(pred - full[0]["peak_gib"]) /
                 full[0]["peak_gib"])
    out.append(row)
  return out


# --- plots ------------------------------------------------------------------------


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def grouped_bars(path, groups, series, values, *, ylabel, title, log=False,
                 hlines=(), fmt="{:.3g}"):
  """values[s][g]; one bar group per entry of `groups`."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(min(12, max(6, 1.4 * len(groups) *
                                              len(series) / 3 + 3)), 4.2))
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  for i, s in enumerate(series):
    ys = [values[s].get(g, np.nan) for g in groups]
    bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=s)
    for b, y in zip(bars, ys):
      if np.isfinite(y):
        ax.annotate(fmt.format(y), (b.get_x() + b.get_width() / 2, y),
                    ha="center", va="bottom", fontsize=6, rotation=90)
  for y, label in hlines:
    ax.axhline(y, color="gray", ls="--", lw=0.8)
    ax.annotate(label, (x[0] - 0.45, y), fontsize=7, va="bottom", ha="left",
                color="gray")
  ax.set_xticks(x)
  ax.set_xticklabels(groups)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  if log:
    ax.set_yscale("log")
  ax.legend(fontsize=7, ncol=min(len(series), 4))
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=110)
  _plt().close(fig)
  return path


def plot_all(out, results, lin):
  written = []
  comp = _rows(results, "compiled")
  if comp:
    variants = list(dict.fromkeys(r["variant"] for r in comp))
    methods = list(dict.fromkeys(r["method"] for r in comp))
    vals = {m: {r["variant"]: r["peak_bytes"] / MIB for r in comp
                if r["method"] == m} for m in methods}
    p = os.path.join(out, "compiled_peak_memory.png")
    grouped_bars(p, variants, methods, vals, ylabel="compiled peak (MiB)",
                 title=f"Train-step compiled peak memory, batch "
                 f"{comp[0]['batch']}, {comp[0]['image_size']} px, f32 "
                 "(XLA:CPU)", log=True)
    written.append(p)
  meas = _rows(results, "measured")
  if meas:
    variants = list(dict.fromkeys(r["variant"] for r in meas))
    methods = [m for m in dict.fromkeys(r["method"] for r in meas)
               if m != "forward"]
    vals = {m: {r["variant"]: r["vs_forward"] for r in meas
                if r["method"] == m} for m in methods}
    p = os.path.join(out, "step_time_vs_forward.png")
    grouped_bars(p, variants, methods, vals,
                 ylabel="median step time / forward time",
                 title=f"Measured train-step time relative to the backbone "
                 f"forward (batch {meas[0]['batch']}, interleaved)",
                 hlines=[(1.0, "forward"), (1.15, "1.15x")])
    written.append(p)
  cache = _rows(results, "cache")
  if cache:
    r = cache[0]
    vals = {"uncached epoch": {r["variant"]: r["uncached_epoch_1000_s"]},
            "cached epoch": {r["variant"]: r["cached_epoch_1000_s"]},
            "one-time cache build": {r["variant"]: r["build_1000_s"]}}
    p = os.path.join(out, "cache_epoch.png")
    grouped_bars(p, [r["variant"]], list(vals), vals,
                 ylabel="seconds per 1,000-image epoch",
                 title=f"LoSA epoch with / without the feature cache "
                 f"(measured on {r['images_measured']} images, scaled)")
    written.append(p)
  mb = _rows(results, "maxbatch")
  if mb:
    vals = {"max batch": {r["method"]: r["max_batch"] for r in mb}}
    p = os.path.join(out, "max_batch.png")
    grouped_bars(p, [r["method"] for r in mb], ["max batch"], vals,
                 ylabel="largest batch (compiled peak <= budget)",
                 title=f"{mb[0]['variant']}: largest batch within "
                 f"{mb[0]['budget_gib']:g} GiB", log=True, fmt="{:.0f}")
    written.append(p)
  big = [r for r in _rows(results, "big") if not r["linearity"]]
  if big:
    variants = list(dict.fromkeys(r["variant"] for r in big))
    configs = list(dict.fromkeys(r["config"] for r in big))
    vals = {c: {r["variant"]: r["peak_gib"] for r in big if r["config"] == c}
            for c in configs}
    p = os.path.join(out, "big_models_memory.png")
    grouped_bars(p, variants, configs, vals, ylabel="compiled peak (GiB)",
                 title=f"Compiled train-step peak memory, batch "
                 f"{big[0]['batch']}, bf16 backbone, scanned", log=True,
                 hlines=[(g, f"{g} GiB") for g in FIT_GIB])
    written.append(p)
  if lin:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in lin:
      d = np.array(row["depths"], float)
      xs = np.linspace(0, row.get("full_depth", d.max()), 50)
      line = ax.plot(xs, row["slope_gib_per_block"] * xs +
                     row["intercept_gib"], lw=0.8)[0]
      ax.plot(d, row["peaks_gib"], "o", color=line.get_color(),
              label=f"{row['config']} (compiled, reduced depth)")
      if "actual_gib" in row:
        ax.plot([row["full_depth"]], [row["actual_gib"]], "*", ms=11,
                color=line.get_color(),
                label=f"{row['config']} full depth (compiled)")
    ax.set_xlabel("blocks")
    ax.set_ylabel("compiled peak (GiB)")
    ax.set_title(f"Memory is linear in depth ({lin[0]['variant']})",
                 fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, os.path.join(out, "depth_linearity.png")))
  return written


# --- markdown ---------------------------------------------------------------------


def _md_header(results, meta) -> List[str]:
  parts = ["# losa_jax benchmark results", "",
           "Generated by `python -m losa_jax.bench` and "
           "`scripts/bench_report.py`; see docs/benchmarks.md for the "
           "reading.", "",
           md_table(["", ""], [
               ["date", meta["date"]], ["machine", meta["machine"]],
               ["devices", meta["devices"]],
               ["versions", f"jax {meta['jax']}, flax {meta['flax']}, "
                            f"python {meta['python']}"],
               ["this report written by", f"`{meta['command']}`"]]), "",
           "Each section as produced (sections can be re-run alone; the "
           "load average is the other jobs sharing this machine's 2 cores):",
           "",
           md_table(["section", "command", "date", "load avg at end",
                     "XLA_FLAGS"],
                    [[s, f"`{p.get('command', meta['command'])}`",
                      p.get("date", ""),
                      _loads(p["load_avg_end"]) if "load_avg_end" in p
                      else "", f"`{p.get('xla_flags') or 'default'}`"]
                     for s, p in results.items() if p]), ""]
  return parts


def _md_compiled(comp) -> List[str]:
  return _section(
      f"Compiled cost per train step (batch {comp[0]['batch']}, "
      f"{comp[0]['image_size']} px, f32, unrolled blocks)",
      "XLA:CPU `cost_analysis` / `memory_analysis` of the real jitted "
      "step, abstract inputs. peak = arguments + outputs + temp - "
      "aliased (donated) bytes.",
      ["variant", "method", "trainable params", "GFLOPs", "FLOPs / fwd",
       "temp MiB", "args MiB", "peak MiB", "peak / fwd",
       "LoSA peak / this"],
      [[r["variant"], r["method"], _fmt_int(r["trainable_params"]),
        _num(r['flops'] / 1e9), f"{r['flops_vs_forward']:.2f}",
        *_mibs(r, "temp_bytes", "argument_bytes", "peak_bytes"),
        f"{r['peak_vs_forward']:.2f}", f"{r['losa_peak_fraction']:.3f}"]
       for r in comp])


def _md_dtype(dt) -> List[str]:
  return _section(
      f"LoSA: bf16 backbone, scanned blocks, donation "
      f"({dt[0]['variant']}, batch {dt[0]['batch']})", "",
      ["backbone", "blocks", "donated", "args MiB", "temp MiB",
       "aliased MiB", "peak MiB"],
      [[r["backbone"], r["blocks"], r["donate"],
        *_mibs(r, "argument_bytes", "temp_bytes", "alias_bytes",
               "peak_bytes")] for r in dt])


def _md_measured(meas) -> List[str]:
  return _section(
      f"Measured step time (batch {meas[0]['batch']}, "
      f"{meas[0]['reps']} interleaved reps after warm-up)",
      "All methods of a variant run round-robin in one process; "
      "ratios are to the backbone forward measured in the same "
      "rounds. `losa_cached` = LoSA's step from bf16 features "
      "already on the device (no backbone).",
      ["variant", "method", "median s/step", "min-max s", "images/s",
       "step / forward"],
      [[r["variant"], r["method"], _num(r['median_s']),
        f"{_num(r['min_s'])}-{_num(r['max_s'])}",
        # Results written before the section shared harness.time_methods
        # name the column examples_per_s.
        _num(r.get('images_per_s', r.get('examples_per_s'))),
        f"{r['vs_forward']:.2f}"]
       for r in meas])


def _md_cache(cache) -> List[str]:
  parts: List[str] = []
  r = cache[0]
  parts += ["## Feature cache: LoSA epoch time", "",
            f"{r['variant']}, batch {r['batch']}: uncached and cached steps "
            f"interleaved over {r['images_measured']} images "
            f"({r['images_cached']} cached, bf16, memory-mapped from disk), "
            "then scaled linearly to a 1,000-image epoch. Both include "
            "fetching the batch (tf.data pp, or the cache gather) and the "
            "host-to-device copy.", "",
            md_table(["uncached epoch s", "cached epoch s",
                      "cached / uncached", "one-time build s",
                      "break-even epochs", "cache GiB / 1,000 images"],
                     [[_num(r['uncached_epoch_1000_s']),
                       _num(r['cached_epoch_1000_s']),
                       f"{r['cached_vs_uncached']:.3f}",
                       _num(r['build_1000_s']),
                       f"{r['break_even_epochs']:.2f}",
                       _num(r['cache_gib_per_1000'])]]), ""]
  if "cached_gflop" in r:
    parts += [f"What bounds it (XLA cost analysis, batch {r['batch']}):", "",
              md_table(["program", "GFLOP", "GB accessed"],
                       [[name, _num(r[f"{k}_gflop"]), _num(r[f"{k}_gb"])]
                        for name, k in (("backbone forward", "forward"),
                                        ("LoSA step, uncached", "uncached"),
                                        ("LoSA step, cached", "cached"))]),
              ""]
  return parts


def _md_maxbatch(mb) -> List[str]:
  return [f"## Largest batch within {mb[0]['budget_gib']:g} GiB "
          f"({mb[0]['variant']}, {mb[0]['image_size']} px, f32)", "",
          "Binary search over multiples of the batch step on the compiled "
          "peak (abstract inputs; one compile per probe).", "",
          md_table(["method", "max batch", "peak GiB there", "compiles"],
                   [[r["method"], (f">= {r['max_batch']}" if r["at_cap"]
                                   else r["max_batch"]),
                     _num(r['peak_gib_at_max']), r["compiles"]]
                    for r in mb]), ""]


def _md_big(results, lin) -> List[str]:
  parts: List[str] = []
  big = [r for r in _rows(results, "big") if not r["linearity"]]
  if big:
    parts += [f"## Big backbones: compiled memory (batch {big[0]['batch']}, "
              f"{big[0]['image_size']} px)", "",
              "Scanned blocks, bf16 matmuls, frozen params stored in bf16 "
              "(full fine-tuning keeps f32 params and AdamW state); "
              "'+remat' recomputes each block in the backward "
              "(big_vision's `nothing_saveable`). Compile-only, nothing "
              "materialised; runtime overheads (CUDA context, allocator "
              "fragmentation) are not included.", "",
              md_table(["variant", "config", "params", "trainable",
                        "args GiB", "temp GiB", "peak GiB",
                        *[f"fits {g} GiB" for g in FIT_GIB]],
                       [[r["variant"], r["config"],
                         f"{_num(r['total_params'] / 1e9)} B",
                         _fmt_int(r["trainable_params"]),
                         _num(r['argument_gib']), _num(r['temp_gib']),
                         _num(r['peak_gib']),
                         *["yes" if r[f"fits_{g}gib"] else "no"
                           for g in FIT_GIB]] for r in big]), ""]
    dflt = _rows(results, "big_default")
    if dflt:
      parts += ["LoSA under XLA:CPU's default flags (the bf16->f32 weight "
                "upcast of the whole scanned stack hoisted out of the loop; "
                "a CPU-only artefact):", "",
                md_table(["variant", "peak GiB (default flags)",
                          "temp GiB (default flags)"],
                         [[r["variant"], _num(r['peak_gib']),
                           _num(r['temp_gib'])] for r in dflt]), ""]
  return parts


def _md_linearity(results, lin) -> List[str]:
  parts: List[str] = []
  if lin:
    parts += ["## Linearity in depth", "",
              md_table(["config", "depths", "peaks GiB", "GiB / block",
                        "max fit residual GiB", "full depth",
                        "predicted GiB", "compiled GiB", "error"],
                       [[r["config"], r["depths"],
                         ", ".join(_num(p) for p in r["peaks_gib"]),
                         _num(r["slope_gib_per_block"]),
                         _num(r["max_fit_residual_gib"]),
                         r.get("full_depth", ""),
                         _num(r.get("predicted_gib", float("nan"))),
                         _num(r.get("actual_gib", float("nan"))),
                         f"{100 * r.get('prediction_error', float('nan')):+.1f}%"]
                        for r in lin]), ""]
  return parts


def inference_markdown(rows, summary) -> str:
  """The rows and ratios as markdown tables (docs/serving.md's format)."""
  lines = ["| variant | batch | system | N | backbone passes | images/s | "
           "latency (ms) | GFLOPs | peak memory (MiB) | params resident | "
           "bytes / task | timed |", "|" + "---|" * 12]
  for r in rows:
    lines.append(
        f"| {r['variant']} | {r['batch']} | {r['system']} | {r['tasks']} | "
        f"{r['backbone_passes']} | {r['images_per_s']:.2f} | "
        f"{r['latency_ms']:.1f} | {r['flops'] / 1e9:.3g} | "
        f"{r['peak_bytes'] / MIB:,.1f} | {r['params_resident']:,} | "
        f"{r['bytes_per_task']:,} | {r['timed']} |")
  lines += ["", "| variant | batch | N | LoSA vs N merged LoRA (throughput) "
            "| marginal task / backbone (time) | (FLOPs) | single-task "
            "overhead vs merged LoRA (time) | (FLOPs) | LoSA bytes / task |",
            "|" + "---|" * 9]
  fmt = lambda s, k, f: format(s[k], f) if k in s else "n/a"
  for s in summary:
    lines.append(
        f"| {s['variant']} | {s['batch']} | {s['tasks']} | "
        f"{fmt(s, 'losa_vs_merged_lora', '.2f')}x | "
        f"{fmt(s, 'marginal_task_time', '.3f')} | "
        f"{fmt(s, 'marginal_task_flops', '.3f')} | "
        f"{fmt(s, 'single_task_overhead', '+.1%')} | "
        f"{fmt(s, 'single_task_flops_overhead', '+.1%')} | "
        f"{fmt(s, 'bytes_per_task', ',')} |")
  return "\n".join(lines)


def fsdp_markdown(rows) -> str:
  """Per (depth, mesh size): per-device memory, and vs one device."""
  base = {r["depth"]: r["peak_bytes"] for r in rows if r["fsdp"] == 1}
  lines = ["| depth | devices (fsdp) | global batch | params/dev | "
           "opt/dev | XLA args | XLA temp | XLA out | peak/dev | vs 1 dev |",
           "|" + "---|" * 10]
  for r in rows:
    ratio = (f"{r['peak_bytes'] / base[r['depth']]:.2f}x"
             if r["depth"] in base else "")
    lines.append(
        f"| {r['depth']} | {r['fsdp']} | {r['global_batch']} | "
        f"{r['params_bytes'] / GIB:.2f} GiB | {r['opt_bytes'] / MIB:.1f} MiB | "
        f"{r['argument_bytes'] / GIB:.2f} GiB | {r['temp_bytes'] / GIB:.2f} GiB"
        f" | {r['output_bytes'] / GIB:.2f} GiB | "
        f"**{r['peak_bytes'] / GIB:.2f} GiB** | {ratio} |")
  return "\n".join(lines)


def video_markdown(rows, *, depth=None, batch=None) -> str:
  """The video section's memory rows at one depth and batch (None: any)."""
  out = ["| method | batch | depth | trainable params | params + opt (GiB) "
         "| temporaries (GiB) | peak (GiB) | fits 16 GiB |",
         "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if (depth is not None and r["depth"] != depth) or (
        batch is not None and r["batch"] != batch):
      continue
    out.append(f"| {r['config']} | {r['batch']} | {r['depth']} | "
               f"{r['trainable_params']:,} | {r['params_gib']:.2f} | "
               f"{r['temp_gib']:.2f} | {r['peak_gib']:.2f} | "
               f"{'yes' if r['fits_16gib'] else 'no'} |")
  return "\n".join(out)


def video_flops_markdown(rows) -> str:
  """The video section's FLOPs rows, extrapolated to the full depth."""
  depths = sorted(int(k[len("gflops_depth"):]) for k in rows[0]
                  if k.startswith("gflops_depth"))
  full = rows[0]["full_depth"]
  out = ["| method | " + " | ".join(f"GFLOP, depth {d}" for d in depths) +
         f" | GFLOP per block | GFLOP, depth {full} (extrapolated) | "
         "vs LoSA |", "|---" * (len(depths) + 4) + "|"]
  for r in rows:
    out.append(f"| {r['method']} | " + " | ".join(
        f"{r[f'gflops_depth{d}']:.0f}" for d in depths) +
               f" | {r['gflops_per_block']:.0f} | "
               f"{r['gflops_full_extrapolated']:,.0f} | {r['vs_losa']:.2f} |")
  return "\n".join(out)


def _md_other(results, lin) -> List[str]:
  """The inference, fsdp and video sections' tables."""
  del lin
  parts = []
  rows = _rows(results, "inference")
  if rows:
    parts += ["## Serving N tasks", "", inference_markdown(
        [r for r in rows if r["kind"] == "cell"],
        [r for r in rows if r["kind"] == "summary"]), ""]
  rows = [r for r in _rows(results, "fsdp") if r["kind"] == "compiled"]
  if rows:
    parts += ["## Per-device memory under FSDP", "", fsdp_markdown(rows), ""]
  rows = _rows(results, "video")
  mem = [r for r in rows if r["kind"] == "memory"]
  if mem:
    parts += ["## Video: compiled memory of one train step", "",
              video_markdown(mem), ""]
  flops = [r for r in rows if r["kind"] == "flops"]
  if flops:
    parts += [video_flops_markdown(flops), ""]
  accel = results.get("accelerator")
  if accel and accel["rows"]:
    parts += [accelerator_report.markdown(accel["rows"], accel,
                                          accel["options"]), ""]
  return parts


def markdown(results, meta, lin) -> str:
  """The report: provenance, then each section's tables."""
  parts = _md_header(results, meta)
  for name, md in (("compiled", _md_compiled), ("dtype", _md_dtype),
                   ("measured", _md_measured), ("cache", _md_cache),
                   ("maxbatch", _md_maxbatch)):
    parts += md(_rows(results, name)) if _rows(results, name) else []
  for md in (_md_big, _md_linearity, _md_other):
    parts += md(results, lin)
  parts += population_markdown(_rows(results, "population"))
  parts += side_markdown(_rows(results, "side"))
  parts += side_backward_markdown(_rows(results, "side_backward"))
  parts += input_markdown(_rows(results, "input"))
  return "\n".join(parts)


def input_markdown(rows) -> List[str]:
  """The input section: examples/s vs plain tf.data, bytes per process."""
  if not rows:
    return []
  tput = [r for r in rows if r["part"] == "throughput"]
  parts = _section(
      "Input pipeline: examples/s (images or 16-frame clips), ours vs "
      "plain tf.data",
      "Same encoded data and pp; pipelines one at a time, order rotated.",
      ["pp", "pipeline", "cores", "examples/s", "per core", "vs tf.data"],
      [[r["pp"], r["pipeline"], r["cores"], f"{r['examples_per_s']:,.1f}",
        f"{r['examples_per_s_per_core']:,.1f}", f"{r['vs_tf_data']:.2f}x"]
       for r in tput])
  parts += _section(
      "Bytes each process reads in one epoch (ArrayRecord, by index)", "",
      ["processes", "examples", "KiB / example", "records read (max)",
       "MiB read (max)", "share of the split's bytes"],
      [[r["processes"], r["examples"], f"{r['kib_per_example']:.1f}",
        r["records_read_max"], f"{r['mib_read_max']:.1f}",
        f"{r['fraction_of_epoch_max']:.3f}"]
       for r in rows if r["part"] == "bytes"])
  need = [r for r in rows if r["part"] == "cores_needed"]
  if need:
    r = need[0]
    parts += [f"Feeding {r['accel_images_per_s']:,.0f} images/s of the "
              f"image pp takes {r['cores_needed']:.1f} cores of this "
              f"machine ({r['examples_per_s_per_core']:,.0f} images/s per "
              "core).", ""]
  return parts


def side_markdown(rows) -> List[str]:
  """The side section: traffic per implementation and interleaved times."""
  if not rows:
    return []
  return _section(
      f"The side network's memory traffic and step time (batch "
      f"{rows[0]['batch']})",
      "Traffic from `cost.hlo_traffic` (loop trips counted; XLA's own "
      "bytes-accessed figure counts a scanned body once), in GB per step "
      "and, for the side network, in float32 [B, N, D] reads or writes per "
      "layer. Times: median of one interleaved run.",
      ["variant", "step", "median s", "/ forward", "cached / uncached",
       "traffic GB", "XLA bytes GB", "side passes / layer",
       "fwd / replay / bwd", "temp MiB"],
      [[r["variant"], r["step"], f"{r['median_s']:.3f}",
        f"{r['vs_forward']:.2f}",
        f"{r['cached_vs_uncached']:.3f}" if "cached_vs_uncached" in r
        else "",
        _num(r["traffic_gb"]) if "traffic_gb" in r else "",
        _num(r["xla_bytes_accessed_gb"]) if "traffic_gb" in r else "",
        f"{r['side_passes_per_layer']:.1f}" if "traffic_gb" in r else "",
        (f"{r['forward_passes_per_layer']:.0f} / "
         f"{r['replay_passes_per_layer']:.0f} / "
         f"{r['backward_passes_per_layer']:.0f}") if "traffic_gb" in r
        else "",
        _mibs(r, "temp_bytes")[0] if "traffic_gb" in r else ""]
       for r in rows])


def side_backward_markdown(rows) -> List[str]:
  """The side_backward section: hand-written vs autodiff backward."""
  if not rows:
    return []
  mib = lambda r, k: f"{r.get(k, 0) / 2**20:,.1f}"
  return _section(
      f"side_scan's backward: hand-written vs autodiff (cached step, batch "
      f"{rows[0]['batch']})",
      "Compile only. Traffic from `cost.hlo_traffic` (loop trips counted); "
      "docs/side_fused.md weighs the two.",
      ["variant", "backward", "temp MiB", "peak MiB", "XLA bytes MiB",
       "forward / backward traffic MiB", "GFLOP"],
      [[r["variant"], r["backward"], mib(r, "temp_bytes"),
        mib(r, "peak_bytes"), mib(r, "bytes_accessed"),
        f"{mib(r, 'forward_traffic_bytes')} / "
        f"{mib(r, 'backward_traffic_bytes')}", f"{r['flops'] / 1e9:.2f}"]
       for r in rows])


def population_markdown(rows) -> List[str]:
  """The population section's two tables (compiled K scaling, timings)."""
  if not rows:
    return []
  comp = [r for r in rows if r["kind"] == "compiled"]
  timed = [r for r in rows if r["kind"] == "timed"]
  out = [f"## Populations: K side networks on one backbone pass "
         f"(batch {rows[0]['batch']})", "",
         "Compiled FLOPs of a K-member population step (K learning rates, "
         "one vmapped group) in backbone forwards, against the bound "
         "1 forward + K side networks, and its peak memory against one LoSA "
         "step's.", ""]
  out.append(md_table(
      ["variant", "K", "members run", "FLOPs / forward", "bound", "peak MiB",
       "peak / LoSA step"],
      [[r["variant"], r["k"], r.get("loop", "vmap"),
        f"{r['flops_per_forward']:.3f}",
        f"{r['flops_bound']:.3f}", f"{r['peak_mib']:.0f}",
        f"{r['peak_per_losa_step']:.2f}"] for r in comp]))
  if timed:
    out += ["", "Median step times, every row interleaved in one process "
            "(ratios to one LoSA step).", "",
            md_table(["variant", "row", "median s", "/ one LoSA step"],
                     [[r["variant"], r["row"], f"{r['median_s']:.3f}",
                       f"{r['per_losa_step']:.2f}"] for r in timed])]
  return out + [""]


def _loads(x) -> str:
  return "/".join(f"{v:.1f}" for v in x)


def load(folder: str) -> Dict[str, Dict[str, Any]]:
  """{section: {"rows": [...], **its provenance}} of folder's SECTION.json."""
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    with open(path) as f:
      data = json.load(f)
    if isinstance(data, dict) and "section" in data and "rows" in data:
      out[data["section"]] = {**data.get("meta", {}), "rows": data["rows"],
                              "options": data.get("options", {})}
  return out


def write_all(out: str, results: Dict[str, Any], meta: Dict[str, Any]
              ) -> List[str]:
  """results.md, <section>.csv, linearity.csv and the PNGs; returns paths."""
  written = []
  for section, payload in results.items():
    if payload and payload.get("rows"):
      p = os.path.join(out, f"{section}.csv")
      write_csv(p, payload["rows"])
      written.append(p)
  lin = linearity(results)
  if lin:
    p = os.path.join(out, "linearity.csv")
    write_csv(p, [{**r, "depths": " ".join(map(str, r["depths"])),
                   "peaks_gib": " ".join(f"{v:.4f}" for v in r["peaks_gib"])}
                  for r in lin])
    written.append(p)
  written += plot_all(out, results, lin)
  p = os.path.join(out, "results.md")
  io_lib.write_text(p, markdown(results, meta, lin))
  return written + [p]


def main(argv: Sequence[str]) -> List[str]:
  if len(argv) != 1 or not os.path.isdir(argv[0]):
    raise SystemExit("usage: python scripts/bench_report.py DIR (a folder of "
                     "SECTION.json files from python -m losa_jax.bench)")
  results = load(argv[0])
  if not results:
    raise SystemExit(f"no SECTION.json in {argv[0]}: run `python -m "
                     f"losa_jax.bench SECTION --out {argv[0]}` first")
  meta = next(iter(results.values()))
  return write_all(argv[0], results, meta)


if __name__ == "__main__":
  print("\n".join(main(sys.argv[1:])))
