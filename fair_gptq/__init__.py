"""Shared helpers of Fair-GPTQ: calibration data, layer strategies, model presets, paths.

The overlay files (gptq.py, config.py) never import from here: they are copied into GPTQModel.
"""
