"""quantize(): GPTQModel 7.7.0's model.quantize with the calibration layout Fair-GPTQ's pairs need."""
from __future__ import annotations

from .config import FairGPTQConfig
from .hooks import install

# the settings that keep rows (2i, 2i+1) of every batch a pair, and the only values accepted when alpha > 0
PAIR_LAYOUT = {"calibration_sort": None, "calibration_concat_size": None, "calibration_data_min_length": 0}


def flatten_pairs(calibration):
    """[(stereo, anti), ...] -> [stereo, anti, ...]; a flat list is returned as it is."""
    if calibration and all(isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)
                           for item in calibration):
        return [sentence for pair in calibration for sentence in pair]
    return list(calibration)


def quantize(model, calibration, batch_size: int = 2, **kwargs):
    """Quantize a GPTQModel 7.7.0 model loaded with a FairGPTQConfig; returns what model.quantize returns.

    `calibration`: sentences with each pair adjacent (stereotype, anti-stereotype, ...), or a list of pairs.
    Sorting, concatenation and the minimum-length filter are switched off (they break the pair layout); asking
    for any of them with alpha > 0 is refused here, and again by the processor if model.quantize is called
    directly.
    """
    qcfg = model.quantize_config
    if not isinstance(qcfg, FairGPTQConfig):
        raise TypeError(f"fair_gptq_v7.quantize needs a model loaded with a FairGPTQConfig, got "
                        f"{type(qcfg).__name__}: load it with GPTQModel.load(path, FairGPTQConfig(...)).")
    if qcfg.fair_enabled():
        for key, value in PAIR_LAYOUT.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"Fair-GPTQ: {key}={kwargs[key]!r} breaks the (stereotype, anti-stereotype) pair "
                                 f"layout of the calibration batches; it must be {value!r} when alpha > 0.")
    calibration = flatten_pairs(calibration)
    if len(calibration) % 2:
        raise ValueError(f"Fair-GPTQ: {len(calibration)} calibration sentences; pairs need an even number.")
    for key, value in PAIR_LAYOUT.items():
        kwargs.setdefault(key, value)
    install()
    return model.quantize(calibration, batch_size=batch_size, **kwargs)
