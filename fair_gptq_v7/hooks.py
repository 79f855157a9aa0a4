"""FairGPTQProcessor and install(): how the paired term gets into GPTQModel 7.7.0's quantization loop.

`install()` points two names of gptqmodel.looper.gptq_processor at this package's subclasses:
  * `GPTQ` -> FairGPTQ: the processor builds every plain GPTQ task from this module-level name (and its
    shared-input dedup checks `type(task) is GPTQ` against the same name, so dedup keeps working);
  * `GPTQProcessor` -> FairGPTQProcessor: BaseQModel.quantize imports it from there when it builds a run.
Both subclasses behave exactly like the originals for a config without the term (alpha = 0: bit-identical,
tested), except that a FairGPTQConfig run keeps calibration sentences of <= 10 tokens, which 7.7.0 drops. Nothing is stored at module level but the two names; pair sums live in each task, under its lock.
"""
from __future__ import annotations

import functools
import threading

import gptqmodel.looper.gptq_processor as gptq_processor

from .config import FairGPTQConfig
from .task import FairGPTQ

_ORIGINAL_GPTQ = gptq_processor.GPTQ
_ORIGINAL_PROCESSOR = gptq_processor.GPTQProcessor
_INSTALL_LOCK = threading.Lock()


def _fair_enabled(qcfg) -> bool:
    enabled = getattr(qcfg, "fair_enabled", None)
    return bool(enabled and enabled())


class FairGPTQProcessor(_ORIGINAL_PROCESSOR):
    """GPTQProcessor that sees each calibration batch whole at the forward hook and hands its pairs to the task."""

    FAIR_GPTQ = True  # the marker FairGPTQConfig checks before a Fair run (config.py does not import this module)

    def __init__(self, *args, **kwargs):
        qcfg = kwargs.get("qcfg")
        if _fair_enabled(qcfg):
            _refuse_broken_pair_layout(kwargs)
        if isinstance(qcfg, FairGPTQConfig):
            # 7.7.0 drops sentences of <= 10 tokens one at a time, which would shift every later pair by one
            # row, and its processor calls prepare_dataset without passing quantize()'s minimum length; every
            # FairGPTQConfig run, alpha = 0 included, keeps them, so a GPTQ baseline sees the same sentences
            kwargs["prepare_dataset_func"] = functools.partial(kwargs["prepare_dataset_func"],
                                                               calibration_data_min_length=0)
        super().__init__(*args, **kwargs)

    def preprocess(self, module, fallback=None, **kwargs):
        super().preprocess(module, fallback=fallback, **kwargs)
        task = self.tasks.get(module.name)
        if task is not None and _fair_enabled(task.qcfg) and not isinstance(task, FairGPTQ):
            raise RuntimeError(f"Fair-GPTQ: module `{module.full_name}` got a {type(task).__name__} task, which "
                               f"would quantize without the paired term.")

    def begin_shared_input_capture(self, model, subset_names, is_lm_head_module=False):
        leaders = super().begin_shared_input_capture(model, subset_names, is_lm_head_module=is_lm_head_module)
        with self.lock:
            tasks = dict(self.tasks)
        for follower, leader in leaders.items():
            if getattr(tasks[follower], "fair_active", False):
                # the follower gets no input of its own; its leader sums the pairs even if the leader itself is
                # ignored (then the leader's own weights are not shifted)
                tasks[leader].fair_collects = True
            elif getattr(tasks[leader], "fair_sums_hessian", False):
                # an inactive follower adopts its leader's H, which must then be stock 7.7.0's, bit for bit
                tasks[leader].fair_sums_hessian = False
        return leaders

    def end_shared_input_capture(self, subset_names):
        with self.lock:
            leaders = dict(self._shared_input_leaders)
            tasks = dict(self.tasks)
        telemetry = super().end_shared_input_capture(subset_names)
        for follower, leader in leaders.items():
            if getattr(tasks.get(follower), "fair_active", False) and leader in tasks:
                tasks[follower].fair_adopt_pairs_from(tasks[leader])
        return telemetry

    def pre_process_fwd_hook(self, name):
        inner = super().pre_process_fwd_hook(name)
        task = self.tasks.get(name)
        if not getattr(task, "fair_collects", False) or self.shared_input_leader(name) is not None:
            return inner

        def hook(module, inp, out):
            # the whole batch [B, T, H] (or [B*T, H]) with its keep-mask, before the parent's hook splits it
            # into one add_batch call per sample
            if not self._activation_headroom_probe:
                keep_mask = getattr(getattr(self, "_mask_tls", None), "value", None)
                task.fair_add_batch(inp[0], keep_mask, self.current_batch_index())
            inner(module, inp, out)

        return hook


def _refuse_broken_pair_layout(kwargs):
    """Refuse the calibration settings that break rows (2i, 2i+1) = a pair, before any layer is quantized."""
    sort, concat, batch_size = kwargs.get("calibration_sort"), kwargs.get("calibration_concat_size"), kwargs.get("batch_size")
    if sort not in (None, ""):
        raise ValueError(f"Fair-GPTQ: calibration_sort={sort!r} reorders the calibration sentences, so rows 2i and "
                         f"2i+1 of a batch would no longer be a (stereotype, anti-stereotype) pair. Quantize with "
                         f"calibration_sort=None (fair_gptq_v7.quantize() does) when alpha > 0.")
    if concat:
        raise ValueError(f"Fair-GPTQ: calibration_concat_size={concat} joins calibration sentences into blocks, so "
                         f"rows 2i and 2i+1 would no longer be a pair. Use calibration_concat_size=None when alpha > 0.")
    if not isinstance(batch_size, int) or batch_size < 2 or batch_size % 2:
        raise ValueError(f"Fair-GPTQ: calibration batch size {batch_size!r}: rows 2i and 2i+1 of a batch are a "
                         f"(stereotype, anti-stereotype) pair, so it must be even (this model class may force 1).")


def install():
    """Put FairGPTQ and FairGPTQProcessor in place (idempotent, thread-safe)."""
    with _INSTALL_LOCK:
        gptq_processor.GPTQ = FairGPTQ
        gptq_processor.GPTQProcessor = FairGPTQProcessor


def uninstall():
    """Put GPTQModel's own classes back (for comparisons with stock 7.7.0 in one process)."""
    with _INSTALL_LOCK:
        gptq_processor.GPTQ = _ORIGINAL_GPTQ
        gptq_processor.GPTQProcessor = _ORIGINAL_PROCESSOR


def installed() -> bool:
    return gptq_processor.GPTQ is FairGPTQ and gptq_processor.GPTQProcessor is FairGPTQProcessor


