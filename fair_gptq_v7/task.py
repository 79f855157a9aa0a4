"""FairGPTQ: GPTQModel 7.7.0's GPTQ task with the paired term, as a subclass (no installed file is edited).

Units. 7.7.0 accumulates H = (2/N) sum_t x_t x_t^T over the N token rows a module received (padding removed
for 3-D inputs; OPT's flattened fc1/fc2 inputs keep their pad rows), N = `nsamples`. The task sums
S01 = sum_pairs sum_positions d d^T, d = x_stereo - x_anti over the pair's common length (padding removed), and
at quantization time forms

    H01 = 2 alpha (2/N) S01                                   (N = the same nsamples as H)

so that H01 = 2 alpha (S01 / sum x x^T) H. The 2.2.0 overlay's H01 = alpha (2/n_pairs) D D^T with
H = (2/n) X X^T and n = 2 n_pairs gives the same H01 = 2 alpha (D D^T / X X^T) H: the H01:H ratio, and with it
the meaning of alpha, is the same in both versions, whatever unit each counts samples in. Then, as in 2.2.0,

    W' = W - W H01 (H + H01)^-1   (sum_hessians=1)      W' = W - W H01 H^-1   (sum_hessians=0)

with the inverted matrix dampened by damp_percent * mean(diag) (dead columns set to 1, raised by
damp_auto_increment on failure), and GPTQ quantizes W' with H: the parent's quantize() starts from
`module_copy`, where W' is put. W' is kept for the parent's NaN retry (which re-enters quantize() after
deleting module_copy) and is what the RTN fallback rounds (clone_module is overridden while W' exists).

Loss log. With log_delta_w, each delta_w.jsonl record carries the 2.2.0 overlay's two losses, in closed form:

    loss_vs_shifted_w = 1/2 tr((Q - W') H_d (Q - W')^T) / N      loss_vs_w = the same with W

H_d is the H that 7.7.0's quantize() inverted: dead columns (zero diagonal) set to 1, the weights' dead
columns zeroed, then damp * mean(diag) added, damp being the value quantize() returns (after its
auto-increment, which restores the diagonal between tries, so H_d is exact even when the dampening was
raised; only 7.7.0's last-resort diagonal floor, which it logs as a warning, is not reproduced). 7.7.0
reports sum_j (w_j - q_j)^2 / (2 d_j^2) / N, the same normalisation as the closed form: the two agree up to
float rounding (tested): loss_vs_shifted_w is 7.7.0's printed loss, recomputed. Unit: H and N are 7.7.0's (tokens,
padding removed), whereas 2.2.0 counts sentences (H = (2/n) X X^T over padded rows, divided by n), so for
the same error a 2.2.0 loss is about (N/n)^2 times the port's; ratios such as loss_vs_w / loss_vs_shifted_w
compare directly. Without a Hessian inverse (RTN fallback, failed inverse) both fields are null.
"""
from __future__ import annotations

import json
import os
import threading
from typing import Dict, Optional

import torch
import transformers
from torch import nn

from gptqmodel.quantization.gptq import GPTQ
from gptqmodel.utils.logger import setup_logger

from . import gating
from .pairs import pair_differences, pair_sums_and_differences

log = setup_logger()


def _add_gram(partials: dict, device: torch.device, rows: torch.Tensor) -> None:
    """partials[device] += rowsᵀ rows. The GEMM adds in place and the caller holds the lock: threads feeding one
    device share its partial."""
    partial = partials.get(device)
    if partial is None:
        partials[device] = rows.t().matmul(rows)
    else:
        partial.addmm_(rows.t(), rows)


class FairGPTQ(GPTQ):
    FAIR_GPTQ = True  # the marker FairGPTQConfig checks before a Fair run

    def __init__(self, module, qcfg=None, region_timer=None):
        super().__init__(module, qcfg=qcfg, region_timer=region_timer)
        named = self._named_module is not None
        self.full_name = getattr(module, "full_name", None) if named else None
        self.layer_index = getattr(module, "layer_index", None) if named else None
        settings_for = getattr(self.qcfg, "fair_settings_for", None)  # a plain GPTQConfig has no Fair fields
        if settings_for is None:
            settings = {"alpha": 0.0, "ignore_bias": "", "select_layer": "", "sum_hessians": 1}
        else:
            settings = settings_for(self.full_name)
        self.fair_alpha, self.fair_sum_hessians = settings["alpha"], settings["sum_hessians"]
        self.fair_active = named and gating.term_active(settings, self.full_name, self.layer_index)
        # set by the processor: this task sums pairs (it is active, or leads a shared-input group with an
        # active follower); a follower gets the sum from its leader instead
        self.fair_collects = self.fair_active
        # fair_accumulate="sum-difference": this task builds H itself from the pair sums and differences (the
        # parent's add_batch only counts rows); the processor turns it off for a shared-input leader with an
        # inactive follower, whose H must stay stock 7.7.0's
        self.fair_sums_hessian = self.fair_active and getattr(self.qcfg, "fair_accumulate", "direct") == "sum-difference"
        self._fair_sum_partials: Dict[torch.device, torch.Tensor] = {}  # V^T V per device (pairs.py)
        self._fair_sum_rows = 0  # rows the sums cover; must equal the rows add_batch counted
        self._fair_lock = threading.Lock()  # pairs may arrive from several forward threads
        self._fair_partials: Dict[torch.device, torch.Tensor] = {}  # S01 per device, reduced in a fixed order
        self._fair_batches = set()  # batch indices seen: a batch counted twice would bias S01
        self.n_pairs = 0
        self._fair_shifted: Optional[torch.Tensor] = None
        self._fair_record: Optional[dict] = None
        self._fair_h01_diag = self._fair_dead = None  # kept for the sensitivity log
        self._fair_loss_inputs = None  # (W, H) kept for the losses of the delta_w.jsonl record
        self._fair_logged = False  # the NaN retry returns through quantize() twice: log once
        if self.fair_active and not isinstance(self.module, (nn.Linear, transformers.Conv1D)):
            raise ValueError(f"Fair-GPTQ: module `{self.full_name}` is a {type(self.module).__name__}; the paired "
                             f"term supports nn.Linear and transformers Conv1D only. Add it to `ignore_bias`.")

    # ---- pairs ------------------------------------------------------------------------------------------------

    def fair_add_batch(self, inp: torch.Tensor, keep_mask: Optional[torch.Tensor], batch_index: Optional[int]):
        """Adds the pairs of one whole calibration batch (rows 2i, 2i+1), before the processor splits it; in the
        sum-difference mode also the batch's share of H (V^T V, pairs.pair_sums_and_differences)."""
        sums, rows = None, 0
        try:
            if self.fair_sums_hessian:
                sums, deltas, pairs, rows = pair_sums_and_differences(inp, keep_mask)
            else:
                deltas, pairs = pair_differences(inp, keep_mask)
        except ValueError as error:
            raise ValueError(f"Fair-GPTQ: module `{self.full_name}`, calibration batch {batch_index}: {error}") from None
        device = deltas.device
        with self._fair_lock:
            if batch_index is not None:
                if batch_index in self._fair_batches:
                    raise RuntimeError(f"Fair-GPTQ: module `{self.full_name}` saw calibration batch {batch_index} "
                                       f"twice; its pairs would be counted twice.")
                self._fair_batches.add(batch_index)
            _add_gram(self._fair_partials, device, deltas)
            if sums is not None:
                _add_gram(self._fair_sum_partials, device, sums)
                self._fair_sum_rows += rows
            self.n_pairs += pairs

    def fair_pair_sum(self, device: torch.device) -> Optional[torch.Tensor]:
        """S01 on `device` (columns x columns, float32), partials added in a fixed device order; None if no pair."""
        with self._fair_lock:
            if not self._fair_partials:
                return None
            order = sorted(self._fair_partials, key=lambda d: (d.type, -1 if d.index is None else d.index))
            total = torch.zeros((self.columns, self.columns), dtype=torch.float32, device=device)
            for d in order:
                part = self._fair_partials[d].to(device)
                total[: part.shape[0], : part.shape[1]] += part  # tensor-parallel pad columns stay 0
            return total

    def fair_adopt_pairs_from(self, leader: "FairGPTQ"):
        """A shared-input follower takes its leader's pair sum: the leader saw the very same input tensor."""
        with leader._fair_lock:
            partials = {d: p.clone() for d, p in leader._fair_partials.items()}
            batches, pairs = set(leader._fair_batches), leader.n_pairs
        with self._fair_lock:
            self._fair_partials, self._fair_batches, self.n_pairs = partials, batches, pairs

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor, batch_index: Optional[int] = None):
        """Stock add_batch, except in the sum-difference mode: there H comes from fair_add_batch's sums and this
        only counts the rows, as the parent's own add_batch would."""
        if not self.fair_sums_hessian:
            return super().add_batch(inp, out, batch_index=batch_index)
        rows = inp.reshape(-1, inp.shape[-1]).shape[0]
        device = torch.device(inp.device)
        with self.lock:
            self.fwd_counter += 1
            self._device_sample_counts[device] = self._device_sample_counts.get(device, 0) + rows
            self.nsamples += rows
            self._hessian_dirty = True

    def materialize_global_hessian(self, target_device: Optional[torch.device] = None) -> None:
        """Sum-difference mode: hands sum x x^T = (V^T V + D^T D) / 2 to the parent as its per-device partials,
        which it reduces and scales by 2/N exactly as its own."""
        with self._fair_lock:
            sums, self._fair_sum_partials = self._fair_sum_partials, {}
            rows, self._fair_sum_rows = self._fair_sum_rows, 0
            if sums:
                counted = sum(self._device_sample_counts.values())
                if rows != counted:
                    raise RuntimeError(f"Fair-GPTQ: module `{self.full_name}`: the pair sums cover {rows} rows but "
                                       f"add_batch counted {counted}; H would not be stock 7.7.0's H.")
                partials = {device: V.add_(self._fair_partials[device]).mul_(0.5) for device, V in sums.items()}
                with self.lock:
                    self._device_hessian_partials.update(partials)
        super().materialize_global_hessian(target_device=target_device)

    # ---- quantization -----------------------------------------------------------------------------------------

    def quantize(self, blocksize=128):
        if self.fair_active and self._fair_shifted is None:
            self._fair_shifted = self._fair_shift_weights()
        if self._fair_shifted is not None:
            # a private copy: the parent's column loop works on it in place, and its NaN retry re-enters here
            self.module_copy = self._fair_shifted.clone()
        result = super().quantize(blocksize=blocksize)
        if self._fair_shifted is not None:
            Q, avg_loss, damp = result[0], result[5], result[6]
            self._fair_after_quantize(Q, avg_loss, damp)
        return result

    def clone_module(self, copy=True, device: torch.device = None):
        if self._fair_shifted is not None:  # the RTN fallback rounds W', not W
            return self._fair_shifted.to(device=device or self._fair_shifted.device, copy=True)
        return super().clone_module(copy=copy, device=device)

    def _fair_shift_weights(self) -> Optional[torch.Tensor]:
        """W' from W, H (finalized by the parent's own code) and H01 = 2 alpha (2/N) S01; None without pairs."""
        H = self.finalize_hessian(target_device=getattr(self.module, "target_device", None))
        S01 = self.fair_pair_sum(H.device)
        if S01 is None or self.nsamples == 0:
            log.warn(f"Fair-GPTQ: module `{self.full_name}` saw no calibration pair; it is quantized without the term.")
            return None
        W = super().clone_module(device=H.device)
        H01 = S01.mul_(2 * self.fair_alpha * 2 / self.nsamples)
        W_times_H01 = W.matmul(H01)
        h01_diag = torch.diag(H01).clone()
        M = H01.add_(H) if self.fair_sum_hessians else H01.copy_(H)  # reuses H01's memory; H is left as it is
        dead = torch.diag(H) == 0  # the dead-column rule of GPTQ's own inverse
        M[dead, dead] = 1
        L, damp = self._fair_damped_cholesky(M)
        del M
        delta_W = torch.cholesky_solve(W_times_H01.t(), L).t()  # (W H01 M^-1)^T = M^-1 (W H01)^T
        del L, W_times_H01
        W_norm = torch.linalg.norm(W).item()
        if self.qcfg.log_delta_w:  # copies: the parent neutralises, permutes and frees its own H
            self._fair_loss_inputs = (W.clone(), H.clone())
        W.sub_(delta_W)
        delta_norm = torch.linalg.norm(delta_W).item()
        self._fair_record = {
            "run_id": self.qcfg.log_run_id, "module": self.full_name, "layer_index": self.layer_index,
            "alpha": self.fair_alpha, "sum_hessians": self.fair_sum_hessians, "n_pairs": self.n_pairs,
            "damp_percent": damp, "delta_w_fro": delta_norm,
            "relative_delta_w": delta_norm / W_norm if W_norm > 0 else 0.0,
        }
        self._fair_h01_diag = h01_diag
        self._fair_dead = dead
        return W

    def _fair_damped_cholesky(self, M: torch.Tensor):
        """Cholesky factor of M with 2.2.0's dampening: damp_percent * mean(diag) added, raised on failure."""
        damp_percent = self.qcfg.damp_percent
        diag = torch.arange(M.shape[0], device=M.device)
        while 1 > damp_percent > 0:
            M[diag, diag] += damp_percent * torch.mean(torch.diag(M))
            L, info = torch.linalg.cholesky_ex(M)
            if info.item() == 0:
                return L, damp_percent
            if self.qcfg.damp_auto_increment == 0:
                raise ValueError(f"Fair-GPTQ: the Hessian of `{self.full_name}` is not positive definite at "
                                 f"damp_percent={damp_percent:.5f}; increase damp_percent or the calibration pairs.")
            log.warn(f"Fair-GPTQ: `damp_percent = {damp_percent:.5f}` is too low for the shift of "
                     f"`{self.full_name}`, auto-incrementing by `{self.qcfg.damp_auto_increment:.5f}`")
            damp_percent += self.qcfg.damp_auto_increment
        raise ValueError(f"Fair-GPTQ: `damp_percent` must be between 0 and 1 for `{self.full_name}`, is {damp_percent}.")

    # ---- logs (same files and meaning as the 2.2.0 overlay) ---------------------------------------------------

    def _fair_after_quantize(self, Q: torch.Tensor, avg_loss, damp: float):
        """Writes the logs of an active module from quantize()'s Q (module weight layout), loss and damp."""
        if self._fair_logged:
            return
        self._fair_logged = True
        if self.qcfg.log_delta_w or self.qcfg.log_hessian_sensitivity:
            Q = self._fair_oriented(Q)
        if self.qcfg.log_delta_w and self._fair_record is not None:
            W, H = self._fair_loss_inputs
            self._fair_loss_inputs = None
            # a numeric loss with 0 < damp < 1: the parent inverted H_d (RTN fallback: a string and damp 0;
            # failed inverse: damp 1 and no GPTQ update)
            if isinstance(avg_loss, float) and 0 < damp < 1 and self.nsamples > 0:
                H_d, dead = self._fair_dampened_hessian(H, damp)
                del H
                self._fair_record.update(loss_vs_shifted_w=self._fair_gptq_loss(Q, self._fair_shifted, H_d, dead),
                                         loss_vs_w=self._fair_gptq_loss(Q, W, H_d, dead))
                del H_d
            else:
                self._fair_record.update(loss_vs_shifted_w=None, loss_vs_w=None)
            self._fair_append_log("delta_w.jsonl", self._fair_record)
        if self.qcfg.log_hessian_sensitivity:
            self._fair_log_sensitivity(Q)
        self._fair_record = None

    def _fair_oriented(self, Q: torch.Tensor) -> torch.Tensor:
        """quantize()'s Q (module weight layout) as rows x columns float32, W's layout: Conv1D transposed back,
        tensor-parallel pad columns (dead, so zero in W and W' once neutralised) restored as zeros."""
        Q = Q.t() if isinstance(self.module, transformers.Conv1D) else Q
        Q = Q.reshape(self.rows, self._original_columns).float()
        if self.columns > self._original_columns:
            Q = torch.cat((Q, Q.new_zeros(self.rows, self.columns - self._original_columns)), dim=1)
        return Q

    @staticmethod
    def _fair_dampened_hessian(H: torch.Tensor, damp: float):
        """H_d as 7.7.0 inverts it (H is a private copy and is modified): dead diagonal -> 1, + damp * mean."""
        diagonal = H.diagonal()
        dead = diagonal == 0
        diagonal.masked_fill_(dead, 1.0)
        diagonal.add_(damp * torch.mean(diagonal))
        return H, dead

    def _fair_gptq_loss(self, Q: torch.Tensor, W: torch.Tensor, H_d: torch.Tensor, dead: torch.Tensor) -> float:
        """GPTQ's loss of quantizing W to Q: 1/2 tr((Q - W) H_d (Q - W)^T) / nsamples, W's dead columns zeroed."""
        W = W.to(device=H_d.device, dtype=torch.float32).masked_fill(dead.unsqueeze(0), 0.0)
        error = Q.to(H_d.device) - W
        return 0.5 * torch.sum(error.matmul(H_d) * error).item() / self.nsamples

    def _fair_log_sensitivity(self, Q: torch.Tensor):
        """Per column j: H01[j,j] * ||W'[:,j] - Q[:,j]||_2 (dead columns of W' zeroed, as GPTQ does), sorted.
        Q is in W's layout (_fair_oriented)."""
        W = self._fair_shifted.clone()
        W[:, self._fair_dead.to(W.device)] = 0
        Q = Q.to(device=W.device, dtype=W.dtype)
        error = torch.linalg.norm(W[:, : self._original_columns] - Q[:, : self._original_columns], dim=0)
        h01_diag = self._fair_h01_diag[: self._original_columns].to(W.device)
        sensitivity = h01_diag * error
        order = torch.argsort(sensitivity, descending=True).tolist()
        h01_diag, error, sensitivity = (t.tolist() for t in (h01_diag, error, sensitivity))
        rows = ["column,h01_diag,weight_error_l2,sensitivity"]
        rows += [f"{j},{h01_diag[j]:.9g},{error[j]:.9g},{sensitivity[j]:.9g}" for j in order]
        folder = os.path.join(self.qcfg.log_dir, "hessian_sensitivity")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.full_name}.csv")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(rows) + "\n")
        os.replace(path + ".tmp", path)  # a reader never sees half a file

    def _fair_append_log(self, filename: str, record: dict):
        os.makedirs(self.qcfg.log_dir, exist_ok=True)
        with _LOG_LOCK, open(os.path.join(self.qcfg.log_dir, filename), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def free(self):
        self._fair_partials, self._fair_shifted, self._fair_h01_diag = {}, None, None
        self._fair_sum_partials = {}
        self._fair_loss_inputs = None
        super().free()


_LOG_LOCK = threading.Lock()  # worker threads append to the same delta_w.jsonl: one whole line at a time
