# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `--config` flag of the CLIs: ml_collections' config-file flag, checked.

`define_config_flag()` defines `--config path.py[:args]` with
`--config.<path>=value` overrides of the locked config, as ml_collections'
`config_flags.DEFINE_config_file` does, except that an override of a key the
config lacks fails as a flag error naming the full key, the valid keys at
that level (the config's and `schema.SCHEMA`'s) and the closest one, and that
its help lists every key (`schema.describe`).
"""
from typing import Mapping

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from losa_jax.config import schema


class ConfigOverrideError(flags.Error):
  """A `--config.<path>=...` override names a key the config does not hold.

  A flags.Error, so that `absl.app.run` reports it as a flag error (one line
  and exit status 1) instead of a traceback.
  """


def check_override(config, override: str, flag_name: str = "config") -> None:
  """Raises ConfigOverrideError unless the `override` path is in `config`.

  A key that SCHEMA allows but the config file does not set cannot be added
  from the command line either (the config is locked): the error says so.

  Args:
    config: the config as loaded from the file, before the overrides.
    override: the path after `--<flag_name>.`, e.g. "model.losa.rank" or
      "input.data[0]" (ml_collections checks the indices).
    flag_name: the config flag's name, the root of the paths in messages.
  """
  walked = []
  node = config
  for field in config_path.split(override):
    if not isinstance(field, str):
      return              # a list index: ml_collections checks those
    where = ".".join([flag_name, *walked])
    full = f"{where}.{field}"
    if node is None:
      raise ConfigOverrideError(
          f"--{full}: {where} is None in this config file, so it has no "
          f"field {field!r} to override; set {where} to a dict in the config "
          "file.")
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)):
      raise ConfigOverrideError(
          f"--{full}: {where}={node!r} is a {type(node).__name__}, not a "
          f"dict, so it has no field {field!r}; override --{where} itself.")
    if field in node:
      node = node[field]
      walked.append(field)
      continue
    allowed = set(schema.schema_keys(walked) or ()) - {"*"}
    if field in allowed:
      raise ConfigOverrideError(
          f"--{full}: {full} is a valid key, but this config file does not "
          "set it, and only the keys a config sets can be overridden on the "
          "command line (the config is locked). Set "
          f"{full.split('.', 1)[1]} in the config file (or through its :args).")
    valid = sorted(set(node.keys()) | allowed)
    raise ConfigOverrideError(
        f"--{full}: unknown config key {full}"
        f"{schema.did_you_mean(field, valid)}. Valid keys in {where}: {valid}.")


class _CheckedParser(flags.ArgumentParser):
  """The config file flag's parser, then `check_override` on each override.

  ml_collections' flag loads the file with its parser and only then applies
  the overrides, where a missing key fails with a bare KeyError or
  AttributeError; this parser checks them first. It reads them as the flag
  does (`_GetOverrides`: the same list, `--flagfile`s expanded).
  """

  def __init__(self, flag: flags.Flag):
    super().__init__()
    self.flag, self.parser = flag, flag.parser

  def parse(self, argument):
    config = self.parser.parse(argument)
    if isinstance(config, (ml_collections.ConfigDict, Mapping)):
      # pylint: disable-next=protected-access
      for override in self.flag._GetOverrides(self.flag._GetArgv()):
        check_override(config, override, self.flag.name)
    return config

  def flag_type(self):
    return self.parser.flag_type()


# The --config flag that define_config_flag() makes belongs to its caller
# (train, predict): their --helpshort lists it.
flags.disclaim_key_flags()


def define_config_flag(
    name: str = "config",
    help_string: str = "Training config file (configs/*.py[:args]).",
    flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file(name, lock_config=True)`, checked (see
  the module docstring)."""
  holder = config_flags.DEFINE_config_file(
      name, None, f"{help_string} Keys, with --{name}.<key>=value overrides "
      f"of those the file sets:\n{schema.describe()}",
      flag_values=flag_values, lock_config=True)
  flag_values[name].parser = _CheckedParser(flag_values[name])
  return holder
