"""The release's PyTorch weights <-> copgen_jax: conversion rules, files, parity.

``python -m copgen_jax.convert`` is the command line (``convert/__main__.py``).
"""
from copgen_jax.convert.backbone import (BackboneFn, convert_backbone, load_backbone, load_params, params_state,
                                         to_torch_state_dict, write_run)
from copgen_jax.convert.files import convert_files
from copgen_jax.convert.rules import ConversionError
from copgen_jax.convert.torch_io import load_torch_state_dict

__all__ = ["BackboneFn", "ConversionError", "convert_backbone", "convert_files", "load_backbone", "load_params",
           "load_torch_state_dict", "params_state", "to_torch_state_dict", "write_run"]
