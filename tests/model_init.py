"""Random test models built after GPTQModel has run in the same process.

GPTQModel 2.2.0's loader and writer replace `torch.nn.init.kaiming_uniform_`, `uniform_` and `normal_`
with no-ops and set `transformers.modeling_utils._init_weights = False`, for the rest of the process.
A model constructed after that keeps whatever `torch.empty` returned (garbage, sometimes NaN) and its
output embeddings are not tied. Session fixtures are built lazily, so whether a GPTQModel call came first
depends on which tests run: the fixtures build their models inside `initialised_weights()`.

This module must be imported before any test calls GPTQModel (conftest imports it first) so that the
originals captured below are torch's own.
"""
from __future__ import annotations

import contextlib

import torch
import transformers.modeling_utils

_INITIALISERS = {name: getattr(torch.nn.init, name) for name in ("kaiming_uniform_", "uniform_", "normal_")}


@contextlib.contextmanager
def initialised_weights():
    """torch's initialisers and transformers' weight initialisation switched back on while the block runs."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    # transformers 4.x has the module-level flag; 5.x (the GPTQModel 7.7.0 environment) has none
    has_flag = hasattr(transformers.modeling_utils, "_init_weights")
    saved_flag = getattr(transformers.modeling_utils, "_init_weights", None)
    for name, function in _INITIALISERS.items():
        setattr(torch.nn.init, name, function)
    if has_flag:
        transformers.modeling_utils._init_weights = True
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
        if has_flag:
            transformers.modeling_utils._init_weights = saved_flag
