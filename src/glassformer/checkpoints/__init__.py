"""Checkpoint formats in and out. Format knowledge lives here, not in each model: a model hands a directory
to these functions and gets back a config dict and a state dict."""

from glassformer.checkpoints.native import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_state_dict_checked,
    read_checkpoint,
    write_checkpoint,
)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_state_dict_checked", "read_checkpoint", "write_checkpoint"]
