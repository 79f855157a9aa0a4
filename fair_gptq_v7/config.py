"""FairGPTQConfig: GPTQModel 7.7.0's GPTQConfig with the Fair-GPTQ fields as real, validated dataclass fields.

`QuantizeConfig(alpha=...)` in 7.7.0 is a factory that silently drops unknown keywords, so the fields live on a
subclass instead. They are checked in __post_init__ (same rules and messages as the 2.2.0 overlay), exported to
quantize_config.json when some module can get the term, and a config that asks for the term refuses to quantize
unless fair_gptq_v7's processor is installed (`fair_gptq_v7.install()`; `fair_gptq_v7.quantize()` does it).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from gptqmodel.quantization.config import GPTQConfig

from . import gating


def new_run_id() -> str:
    """A sortable, practically unique run identifier, e.g. `20261123-101502-3f9a2c1d`."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


@dataclass
class FairGPTQConfig(GPTQConfig):
    alpha: float = field(default=0.0)  # weight of the paired term; 0 = plain GPTQ
    ignore_bias: Any = field(default="")  # modules that keep plain GPTQ (whole dotted parts)
    select_layer: Any = field(default="")  # layer indices that get the term, "0,1,30-31"; "" = all
    sum_hessians: int = field(default=1)  # 1: W - W H01 (H + H01)^-1, 0: W - W H01 H^-1
    # the 2.2.0 overlay's direction targets are not ported: only the defaults ("pairs", 1, 0) are accepted, so a
    # config written for the overlay is refused instead of silently running the pairs term (not exported)
    fair_target: str = field(default="pairs")
    fair_rank: int = field(default=1)
    fair_seed: int = field(default=0)
    # "sum-difference": an active module builds H and the pair sum from pair sums U = X_s + X_a and differences
    # D = X_s - X_a (the GEMM rows of H alone; H differs from stock by float rounding); "direct": stock H + D^T D
    fair_accumulate: str = field(default="direct")
    log_delta_w: int = field(default=0)  # 1: append one record per active module to log_dir/delta_w.jsonl
    log_hessian_sensitivity: int = field(default=0)  # 1: log_dir/hessian_sensitivity/<module>.csv
    log_dir: str = field(default="./logs")
    log_run_id: str = field(default="")  # written into every log record; "" = generate one

    def __post_init__(self):
        super().__post_init__()
        for name in gating.FAIR_DYNAMIC_FIELDS:
            setattr(self, name, gating.normalise_fair_setting(name, getattr(self, name)))
        _refuse_unported_targets({name: getattr(self, name) for name in UNPORTED_FIELDS})
        self._check_accumulation()
        self.log_delta_w = gating.as_flag("log_delta_w", self.log_delta_w)
        self.log_hessian_sensitivity = gating.as_flag("log_hessian_sensitivity", self.log_hessian_sensitivity)
        if not isinstance(self.log_dir, str) or not self.log_dir:
            raise ValueError(f"FairGPTQConfig: `log_dir` must be a non-empty path, got {self.log_dir!r}.")
        if not isinstance(self.log_run_id, str):
            raise ValueError(f"FairGPTQConfig: `log_run_id` must be a string, got {self.log_run_id!r}.")
        if not self.log_run_id:
            self.log_run_id = new_run_id()  # once per config: GPTQModel deep-copies it per module, keeping the id
        self._normalise_dynamic_rules()
        if self.fair_enabled():
            self._refuse_bypassing_methods()

    def _check_accumulation(self):
        if self.fair_accumulate not in FAIR_ACCUMULATE:
            raise ValueError(f"FairGPTQConfig: `fair_accumulate` must be one of "
                             f"{', '.join(map(repr, FAIR_ACCUMULATE))}, got {self.fair_accumulate!r}.")
        hessian = self.hessian
        if self.fair_accumulate == "sum-difference" and (
                hessian.chunk_size is not None or hessian.chunk_bytes is not None
                or hessian.staging_dtype != torch.float32):
            raise ValueError("FairGPTQConfig: `fair_accumulate` = 'sum-difference' builds H in float32 from whole "
                             "calibration batches, so it cannot honour `hessian` chunk_size, chunk_bytes or a "
                             "staging_dtype other than float32; use fair_accumulate='direct' with those settings.")

    def _normalise_dynamic_rules(self):
        for rule, overrides in list((self.dynamic or {}).items()):
            if not isinstance(overrides, dict):
                continue
            try:
                _refuse_unported_targets({name: overrides[name] for name in UNPORTED_FIELDS if name in overrides})
            except ValueError as error:
                raise ValueError(f"{str(error).rstrip('.')} in `dynamic` rule {rule!r}.") from None
            run_wide = [n for n in gating.FAIR_FIELDS if n in overrides and n not in gating.FAIR_DYNAMIC_FIELDS]
            if run_wide:
                raise ValueError(f"FairGPTQConfig: `{run_wide[0]}` applies to the whole run and cannot be set in "
                                 f"`dynamic` rule {rule!r}; set it on FairGPTQConfig itself.")
            if not any(name in overrides for name in gating.FAIR_DYNAMIC_FIELDS):
                continue
            normalised = dict(overrides)
            for name in gating.FAIR_DYNAMIC_FIELDS:
                if name in overrides:
                    try:
                        normalised[name] = gating.normalise_fair_setting(name, overrides[name])
                    except ValueError as error:
                        raise ValueError(f"{str(error).rstrip('.')} in `dynamic` rule {rule!r}.") from None
            self.dynamic[rule] = normalised

    def _refuse_bypassing_methods(self):
        """GPTAQ and FOEM tasks subclass GPTQ with their own solve and would quantize W, not W': refuse."""
        rules = [o for o in (self.dynamic or {}).values() if isinstance(o, dict)]
        for method in ("gptaq", "foem"):
            if getattr(self, method) is not None or any(o.get(method) is not None for o in rules):
                raise ValueError(f"FairGPTQConfig: `{method}` cannot be combined with alpha > 0: its quantizer "
                                 f"solves from the unshifted weights, so the paired term would be silently lost. "
                                 f"Use plain GPTQ (no `{method}`) for Fair-GPTQ.")

    def fair_settings_for(self, module_name: Optional[str]) -> Dict[str, Any]:
        fields = {name: getattr(self, name) for name in gating.FAIR_DYNAMIC_FIELDS}
        return gating.settings_for(fields, lambda name: self.dynamic_get(layer_name=name), module_name)

    def fair_enabled(self) -> bool:
        """Whether any module can get the term: alpha > 0 on the config or in a `dynamic` rule."""
        rules = (o for rule, o in (self.dynamic or {}).items() if isinstance(o, dict) and not rule.startswith("-:"))
        return self.alpha > 0 or any(o.get("alpha", 0.0) > 0 for o in rules)

    def fair_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in gating.FAIR_FIELDS}

    def _update_output_payload(self, out: Dict[str, Any]) -> None:
        super()._update_output_payload(out)
        # only a checkpoint made with the term carries its settings, so an alpha=0 file is stock 7.7.0's;
        # stock 7.7.0 ignores these keys when it loads the checkpoint (tested)
        if self.fair_enabled():
            out.update(self.fair_dict())

    def uses_weight_only_lifecycle(self) -> bool:
        # BaseQModel.quantize asks this right before it builds its processors: the last moment to refuse a
        # Fair run that would otherwise quietly be plain GPTQ
        if self.fair_enabled():
            _require_fair_processor()
        return super().uses_weight_only_lifecycle()


# field -> the only value accepted here
UNPORTED_FIELDS = {"fair_target": "pairs", "fair_rank": 1, "fair_seed": 0}
FAIR_ACCUMULATE = ("direct", "sum-difference")  # the 2.2.0 overlay's values, the same meaning


def _refuse_unported_targets(values: Dict[str, Any]):
    """fair_target "direction" / "random-direction" (and their fair_rank, fair_seed) exist in the 2.2.0 overlay
    only; anything but the defaults is refused, naming the field."""
    for name, value in values.items():
        if name == "fair_target" and value in ("direction", "random-direction"):
            raise ValueError(f"FairGPTQConfig: `fair_target` {value!r} is supported by the GPTQModel 2.2.0 overlay "
                             f"only (gptq.py / config.py, install_overlay.sh); fair_gptq_v7 implements "
                             f"fair_target 'pairs'.")
        if isinstance(value, bool) or value != UNPORTED_FIELDS[name]:
            raise ValueError(f"FairGPTQConfig: `{name}` must be {UNPORTED_FIELDS[name]!r} in fair_gptq_v7 (other "
                             f"values belong to the 2.2.0 overlay only), got {value!r}.")


def _require_fair_processor():
    """Refuse a Fair run while GPTQModel's stock processor is in place (it would quantize without the term).

    Reads the marker the hooks module's classes carry instead of importing that module, which imports this one."""
    import gptqmodel.looper.gptq_processor as gptq_processor

    if not all(getattr(gptq_processor, name, None) is not None
               and getattr(getattr(gptq_processor, name), "FAIR_GPTQ", False) for name in ("GPTQ", "GPTQProcessor")):
        raise RuntimeError("Fair-GPTQ: this FairGPTQConfig asks for the paired term (alpha > 0), but GPTQModel's "
                           "stock GPTQ processor is in place, which would run plain GPTQ. Call "
                           "fair_gptq_v7.install() first, or quantize with fair_gptq_v7.quantize(model, ...).")
