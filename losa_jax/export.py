# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Exports served tasks: a StableHLO artifact and a TF SavedModel.

  python -m losa_jax.export --workdirs /tmp/digits,/tmp/parity --out /tmp/srv
  python -m losa_jax.export --workdirs /tmp/digits --out /tmp/srv_one

What it writes, and how --out is replaced: `losa_jax.serving.export`.
docs/serving.md says how to put the SavedModel behind TF Serving.
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging

from losa_jax import predict
from losa_jax.config import workdir as workdir_lib
from losa_jax.serving import export as export_lib
from losa_jax.serving import multitask

def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined on demand so importing this module claims no flag names."""
  fv = dict(flag_values=flag_values)
  predict.define_workdirs_flags(flag_values, "Finished training workdirs "
                                "(configs: --configs); one is fine.")
  flags.DEFINE_string("out", None, "Output folder: new or empty, or see "
                      "--overwrite.", **fv)
  flags.DEFINE_bool("overwrite", False, "Replace the export in --out (only "
                    "the files its serving.json lists; anything else there "
                    "is refused, never deleted).", **fv)
  flags.DEFINE_list("platforms", None, "Lowering platforms of the artifacts "
                    "(cpu, cuda, rocm, tpu); default: this machine's.", **fv)
  flags.DEFINE_bool("merge_lora", True, "Serve LoRA tasks merged into the "
                    "weights (a plain ViT's cost).", **fv)
  flags.DEFINE_bool("saved_model", True, "Also write the TF SavedModel.",
                    **fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}: every setting is "
                         "a --flag (several workdirs: --workdirs a,b).")
  run_main(flags.FLAGS)


def run_main(cfg: flags.FlagValues):
  """The CLI on parsed flags `cfg` (`define_flags`)."""
  if not flags.FLAGS["verbosity"].present:
    # Like train's terminal: Orbax logs every restore at INFO.
    logging.set_verbosity(logging.WARNING)
  if not cfg.workdirs or not cfg.out:
    raise app.UsageError("--workdirs and --out are required.")
  # Before the workdirs are read: a full --out fails in a second.
  export_lib.check_out(os.path.normpath(cfg.out), cfg.overwrite)
  mt = multitask.load(cfg.workdirs, cfg.names, merge_lora=cfg.merge_lora,
                      configs=workdir_lib.config_specs(cfg.workdirs,
                                                       cfg.configs))
  manifest = export_lib.export(mt, cfg.out, platforms=cfg.platforms,
                    saved_model=cfg.saved_model, overwrite=cfg.overwrite)
  print(f"Exported {mt.names} ({mt.num_backbone_passes} backbone pass(es) "
        f"per batch) to {cfg.out}: {export_lib.JAX_FILE} "
        f"({manifest['jax_export']['bytes'] / 2**20:.1f} MiB)"
        + (f", {export_lib.SAVED_MODEL}/" if cfg.saved_model else "") + ", tasks/, "
        f"{export_lib.MANIFEST}")


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
