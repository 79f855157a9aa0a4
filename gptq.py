# Copyright 2024-2025 ModelCloud.ai
# Copyright 2024-2025 qubitium@modelcloud.ai
# Contact: qubitium@modelcloud.ai, x.com/qubitium
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# adapted from @qwopqwop200 's [GPTQ-for-LLaMa](https://github.com/qwopqwop200/GPTQ-for-LLaMa/tree/cuda), which itself is based on [gptq](https://github.com/IST-DASLab/gptq)

# Fair-GPTQ overlay of gptqmodel/quantization/gptq.py (GPTQModel v2.2.0).
# The upstream algorithm is unchanged. The whole Fair-GPTQ delta is the section "Fair-GPTQ" at the end of the
# GPTQ class (methods named `_fair_*`, and one function after it) plus five call sites marked `# Fair-GPTQ`:
#   __init__ (gating), add_batch (pair layout), process_batch (accumulate H01; with fair_accumulate=
#   "sum-difference" H too, as unscaled sums finished before the shift), quantize (shift W before the
#   column loop; write the logs after it), free. A module whose term is inactive (alpha=0, ignored module,
#   unselected layer, HF-optimum path) runs exactly the upstream code and allocates nothing extra. alpha,
#   ignore_bias, select_layer, sum_hessians, fair_target and fair_rank can be set per module through `dynamic`
#   (QuantizeConfig.fair_settings_for).
#
# Order contract: rows 2i and 2i+1 of every calibration batch are one pair, the STEREOTYPE FIRST (row 2i) and its
# anti-stereotype second (row 2i+1); fair_gptq.pairs builds the calibration list that way. fair_target="pairs" does
# not depend on the order within a pair (D D^T is the same for -D); the direction targets' mean difference does.
#
# What is minimised. For one module let X hold, as columns, the module's input at every calibration token
# position (padding included), and D the token-aligned differences X_s - X_a of every pair, where rows 2i, 2i+1
# of a batch are a (stereotype, anti-stereotype) pair. n counts samples as GPTQModel does for H: a 3-D input
# (batch, seq, hidden) adds `batch` samples, a flattened 2-D input (OPT's fc1/fc2) adds ONE per batch; n_pairs
# = n/2 in the same unit. Then
#     H = (2/n) X X^T   (upstream)          H01 = alpha (2/n_pairs) D D^T = alpha (4/n) D D^T
# and W' = W - W H01 (H + H01)^-1 (sum_hessians=1) is the minimiser of
#     tr((W'-W) H (W'-W)^T) + tr(W' H01 W'^T) = (2/n) [ ||(W'-W) X||_F^2 + 2 alpha ||W' D||_F^2 ],
# i.e. of ||(W'-W)X||^2 + 2 alpha ||W'D||^2. GPTQ's dampening (lambda = damp_percent * mean diag(H + H01),
# dead columns set to 1, raised on failure as upstream does) adds (n/2) lambda ||W'-W||_F^2 to that objective.
# sum_hessians=0 uses W' = W - W H01 (H + lambda I)^-1 instead, its first-order form in alpha.
# Then W' is quantized by GPTQ with H as usual, so the quantization loss GPTQModel prints for such a module is
# measured against W'; log_delta_w=1 also records it against W (delta_w.jsonl: loss_vs_w).
#
# fair_target="direction" (rank k = fair_rank) replaces H01 by a rank-k matrix on the signed directions in which
# the two sides differ consistently (the shift formula is unchanged). Per pair p, S_p is the set of positions where
# the two rows differ (d_t = x_s,t - x_a,t != 0: from the first differing token on, padding included where it
# differs, exactly as H01 sees it; identical positions carry no information and would only dilute the mean), and
#     m_p = sum_{t in S_p} d_t / |S_p|   (0 if S_p is empty)         mu = (1/P) sum_p m_p   (P pairs, each one vote)
# The per-pair means decompose as sum_p m_p m_p^T = P mu mu^T + R R^T, with R = [m_p - mu] the deviations. The
# k directions are u_1 = mu/|mu| with weight e_1 = P |mu|^2 (the signed, consistent part: it changes with the
# order of the pairs), then the top k-1 left singular vectors u_2..u_k of R with weights e_j = s_j^2 (how pairs
# vary around the mean). So k = 1 is the mean difference alone, the directions are nested in k, and k >= P gives
# back sum_p m_p m_p^T. (The top singular vectors of [m_p] itself were not used: they are the same for any pair
# order, so k=1 would not be mu and the sign-shuffled control could not differ.) Normalisation: with w_j =
# e_j / sum_i e_i,
#     H01_dir = tr(H01) sum_j w_j u_j u_j^T,    tr(H01) = alpha (4/n) ||D||_F^2   (H01 of "pairs" on the same data)
# so both targets have the same trace and sit on one alpha axis: the direction term puts the whole penalty of the
# pairs term on k directions. W' = W - W H01_dir (H + H01_dir)^-1 minimises
#     ||(W'-W) X||_F^2 + 2 alpha ||D||_F^2 sum_j w_j ||W' u_j||^2,
# i.e. today's 2 alpha ||W' D||^2 with every difference vector turned onto the directions, its length kept.
# W' - W has rank <= k. fair_target="random-direction" (control) keeps the weights w_j and replaces u_1..u_k by a
# random orthonormal k-frame, seeded by fair_seed and the module's full name (sha256, stable across runs).

import hashlib
import json
import math
import os
import sys
import time
from threading import Lock
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import transformers

from ..looper.named_module import NamedModule
from ..quantization import QuantizeConfig
from ..utils.logger import setup_logger
from ..utils.torch import torch_empty_cache, torch_sync
from .quantizer import HF_OPTIMUM, Quantizer

log = setup_logger()

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

CPU = torch.device("cpu")

lock = Lock() # guard against => RuntimeError: lazy wrapper should be called at most once

# Fair-GPTQ: (layer_index, batch_index) -> (batch_size, seq_len) of the 3-D module inputs seen in that calibration
# forward pass. Modules such as OPT's fc1/fc2 receive inputs with batch and sequence flattened into one dimension;
# their pair structure is recovered from the shape a 3-D sibling module (q/k/v_proj) of the same layer saw for the
# same batch. GPTQModel runs every batch of a layer in the same order for each subset of modules, and the attention
# modules come first, so the entry exists before fc1/fc2 need it.
_FAIR_BATCH_SHAPES: Dict[Tuple[int, int], Tuple[int, int]] = {}
# Fair-GPTQ: runs (log_run_id) whose log already says what the printed loss of an active module measures
_FAIR_LOSS_NOTICE_GIVEN = set()

class GPTQ:
    def __init__(self, module: nn.Module, qcfg: Optional[QuantizeConfig]=None):
        if isinstance(module, NamedModule):
            self.module = module.module
            self.name = module.name
        else:
            self.name = HF_OPTIMUM
            self.module = module

        self.qcfg = qcfg if qcfg else QuantizeConfig() # HF compat will not pass qcfg
        self.device = self.module.weight.device
        self.module_copy = self._clone_module()

        self.rows, self.columns = self.module_copy.shape[0], self.module_copy.shape[1]
        # self.H = torch.zeros((self.columns, self.columns), device=self.device)
        self.nsamples = 0

        self.quantizer = self.create_quantizer(name=self.name)

        # fwd input buffer
        self.fwd_inputs_buffered = False
        self.fwd_inputs_buffered_data = []

        # fwd counter
        self.fwd_counter = 0

        self._fair_init(module)  # Fair-GPTQ

    def create_quantizer(self, name: str) -> Quantizer:
        return Quantizer(qcfg=self.qcfg, name=name)

    def shape(self):
        if hasattr(self, "module"):
            return self.module.weight.shape
        else:
            return (0, 0)

    def _clone_module(self):
        clone = self.module.weight.data.clone()

        if isinstance(self.module, nn.Conv2d):
            clone = clone.flatten(1)

        if isinstance(self.module, transformers.pytorch_utils.Conv1D):
            clone = clone.t()

        return clone.float()

    def add_batch(self, inp, out):
        self.fwd_counter += 1
        pair_shape = self._fair_batch_shape(inp)  # Fair-GPTQ

        if self.fwd_inputs_buffered:
            self.fwd_inputs_buffered_data.append(inp.to(device=CPU))
            if self.fair_active:  # Fair-GPTQ
                self._fair_buffered_shapes.append(pair_shape)
        else:
            self.process_batch(inp, pair_shape)

    def process_batch(self, inp, pair_shape: Optional[Tuple[int, int]] = None):
        inp = inp.to(device=self.device)
        if self.fair_active:  # Fair-GPTQ
            if self._fair_sum_difference(inp, pair_shape):
                return  # H and H01 both accumulated from pair sums and differences
            self._fair_accumulate(inp, pair_shape)
        # if os.environ.get("DEBUG"):
        #     self.inp1 = inp
        #     self.out1 = out

        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        batch_size = inp.shape[0]

        if isinstance(self.module, nn.Linear) or isinstance(self.module, transformers.Conv1D):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()

        if isinstance(self.module, nn.Conv2d):
            unfold = nn.Unfold(
                self.module.kernel_size,
                dilation=self.module.dilation,
                padding=self.module.padding,
                stride=self.module.stride,
            )
            inp = unfold(inp)
            inp = inp.permute([1, 0, 2])
            inp = inp.flatten(1)

        if not hasattr(self, "H"):
            try:
                self.H = torch.zeros((self.columns, self.columns), device=self.device)
            except torch.OutOfMemoryError:
                log.info("Memory: OOM H allocate bypass")
                torch_empty_cache()
                self.H = torch.zeros((self.columns, self.columns), device=self.device)
        else:
            self.H *= self.nsamples / (self.nsamples + batch_size)

        self.nsamples += batch_size
        # inp = inp.float()

        inp = math.sqrt(2 / self.nsamples) * inp.float()
        # self.H += 2 / self.nsamples * inp.matmul(inp.t())
        #self.H += self.chunked_matmul_t_and_t_transposed(inp, chunk_size=1024)

        try:
            self.H += inp.matmul(inp.t())
        except torch.OutOfMemoryError:
            log.info("Memory: OOM cpu bypass for process batch matmul")
            torch_empty_cache()

            device = self.H.device
            self.H, inp = self.H.to(device=CPU), inp.to(device=CPU)
            self.H += inp.matmul(inp.t())
            self.H = self.H.to(device=device) # move back


    # FIXME, optimum needs fasterquant, we need to remove it
    def fasterquant(
        self,
        blocksize=128,
        percdamp=0.01,
        damp_auto_increment=0.0015,
        group_size=-1,
        actorder=False,
        static_groups=False,
    ):
        return self.hf_quantize(blocksize, percdamp, damp_auto_increment, group_size, actorder, static_groups)

    # public api exposed to hf
    def hf_quantize(
        self,
        blocksize=128,
        percdamp=0.01,
        damp_auto_increment=0.0015,
        group_size=-1,
        actorder=False,
        static_groups=False,
    ):
        self.qcfg.group_size = group_size
        self.qcfg.damp_percent = percdamp
        self.qcfg.damp_auto_increment = damp_auto_increment
        self.qcfg.desc_act = actorder
        self.qcfg.static_groups = static_groups
        (Q, scale, zero, g_idx, duration, avg_loss, damp_percent, nsamples) = self.quantize(blocksize=blocksize)
        self.module.weight.data = Q
        return scale, zero, g_idx, duration, avg_loss, damp_percent

    @torch.inference_mode()
    def block_cholesky_inverse(self, L: torch.Tensor, upper=False, block_size=512):
        """
        Optimized Cholesky inverse with O(block_size^2) memory usage.

        Args:
            L (torch.Tensor): Cholesky factor (lower triangular)
            upper (bool): If True, L is upper triangular
            block_size (int): Processing block size (tunes memory/performance)

        Returns:
            torch.Tensor: The inverse matrix
        """
        assert L.dim() == 2 and L.size(0) == L.size(1), "Input must be square"
        n = L.size(0)
        device = L.device
        dtype = L.dtype

        if upper:
            L = L.t()

        invA = torch.zeros_like(L)
        num_blocks = math.ceil(n / block_size)

        # Cache for invL blocks to avoid recomputation
        invL_cache = {}

        for k in reversed(range(num_blocks)):
            k_start = k * block_size
            k_end = min((k + 1) * block_size, n)
            k_size = k_end - k_start

            # Diagonal block inversion
            L_block = L[k_start:k_end, k_start:k_end]
            invL_block = torch.linalg.solve_triangular(
                L_block,
                torch.eye(k_size, device=device, dtype=dtype),
                upper=False
            )
            invL_cache[k] = invL_block

            # Diagonal block contribution
            invA[k_start:k_end, k_start:k_end] = invL_block.t() @ invL_block

            # Process off-diagonal blocks in parallel where possible
            for j in range(k):
                j_start = j * block_size
                j_end = min((j + 1) * block_size, n)
                j_size = j_end - j_start

                # Compute all required invL_ik blocks first
                invL_ik_blocks = []
                for i in range(k, num_blocks):
                    i_start = i * block_size
                    i_end = min((i + 1) * block_size, n)

                    if i == k:
                        invL_ik = invL_block
                    else:
                        if i in invL_cache:
                            invL_ii = invL_cache[i]
                        else:
                            L_ii = L[i_start:i_end, i_start:i_end]
                            invL_ii = torch.linalg.solve_triangular(
                                L_ii,
                                torch.eye(i_end - i_start, device=device, dtype=dtype),
                                upper=False
                            )
                            invL_cache[i] = invL_ii

                        L_ik = L[i_start:i_end, k_start:k_end]
                        invL_ik = -invL_ii @ (L_ik @ invL_block)
                        del invL_ii

                    invL_ik_blocks.append(invL_ik)
                    del invL_ik

                # Stack blocks for batched operations
                L_jk = L[j_start:j_end, k_start:k_end]

                # Compute contributions in a more vectorized way
                temp_col = torch.cat([
                    (invL_ik.t() @ L_jk.t()) for invL_ik in invL_ik_blocks
                ], dim=0)

                del invL_ik_blocks

                # Accumulate to output
                invA[j_start:j_end, k_start:k_end] = temp_col[:j_size].t()
                invA[k_start:k_end, j_start:j_end] = temp_col[:j_size]

                del temp_col

        del invL_cache
        return invA

    @torch.inference_mode()
    def quantize(
        self,
        blocksize=128,
    ):
        # log.info(f"Quantization `{self.name}` using samples: `{self.nsamples}`")
        start = time.time()

        # process buffered inputs
        for index, inp in enumerate(self.fwd_inputs_buffered_data):
            self.process_batch(inp, self._fair_buffered_shapes[index] if self.fair_active else None)  # Fair-GPTQ

        # release buffer
        del self.fwd_inputs_buffered_data

        # if self.device.type not in ["mps", "cpu"]:
        #     self.module.weight.data = self.module.weight.data.cpu()

        # TODO: waiting for pytorch implementation of ops for MPS
        if sys.platform == "darwin" and os.getenv("PYTORCH_ENABLE_MPS_FALLBACK") != "1":
            raise RuntimeError("For MacOS you must set env `PYTORCH_ENABLE_MPS_FALLBACK=1` before running quantization.")

        if self.module_copy is None:
            W = self._clone_module()
        else:
            W = self.module_copy
            self.module_copy = None

        if self.fair_active:  # Fair-GPTQ: quantize W' instead of W
            W = self._fair_shift_weights(W)

        self.quantizer.find_params(W, weight=True)

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        # g_idx = []
        scale = []
        zero = []
        now_idx = 1

        if self.qcfg.static_groups:
            import copy

            groups = []
            for i in range(0, self.columns, self.qcfg.group_size):
                quantizer = copy.deepcopy(self.quantizer)
                quantizer.find_params(W[:, i : (i + self.qcfg.group_size)], weight=True)

                scale.append(quantizer.scale)
                zero.append(quantizer.zero)
                groups.append(quantizer)

        if self.qcfg.desc_act:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            invperm = torch.argsort(perm)

        Losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)

        damp_percent = self.qcfg.damp_percent
        while 1 > damp_percent > 0:
            try:
                damp = damp_percent * torch.mean(torch.diag(H))
                diag = torch.arange(self.columns, device=self.device)
                H[diag, diag] += damp

                with lock:
                    # print(f"H SHAPE: {H.shape}")
                    H = torch.linalg.cholesky(H)

                    try:
                        H = self.block_cholesky_inverse(H, block_size=self.columns)
                    except torch.OutOfMemoryError:
                        # half the block size will use ~18% less memory but at higher accuracy loss: 1^-2 vs 1^-8
                        # worth the tradeoff since it's either oom or slightly higher accuracy loss
                        H = self.block_cholesky_inverse(H, block_size=self.columns//2)
                        log.warn("Quantization: OOM bypassed via low memory math at a cost of lower accuracy: `cholesky_inverse`")

                    H = torch.linalg.cholesky(H, upper=True)
                    Hinv = H
                break
            except torch._C._LinAlgError as e:
                if  self.qcfg.damp_auto_increment != 0:
                    log.warn(f"Quantization: Current `damp_percent = {damp_percent:.5f}` is too low, auto-incrementing by `{ self.qcfg.damp_auto_increment:.5f}`")
                    damp_percent +=  self.qcfg.damp_auto_increment
                else:
                    log.warn("Quantization: Please increase damp or nsamples for calibration data to avoid the following quant error: current damp_percent=`{damp_percent:.5f}`")
                    raise e

        if not (0 < damp_percent < 1):
            raise ValueError(f"Quantization: `damp_percent` must between 0 and 1. current is {damp_percent}")

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if self.qcfg.group_size != -1:
                    if not self.qcfg.static_groups:
                        if (i1 + i) % self.qcfg.group_size == 0:
                            self.quantizer.find_params(W[:, (i1 + i) : (i1 + i + self.qcfg.group_size)], weight=True)

                        if ((i1 + i) // self.qcfg.group_size) - now_idx == -1:
                            scale.append(self.quantizer.scale)
                            zero.append(self.quantizer.zero)
                            now_idx += 1
                    else:
                        idx = i1 + i
                        if self.qcfg.desc_act:
                            idx = perm[idx]

                        self.quantizer = groups[idx // self.qcfg.group_size]

                q = self.quantizer.quantize(w.unsqueeze(1)).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d**2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            Losses[:, i1:i2] = Losses1 / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

            # if os.environ.get("DEBUG"):
            #     self.layer.weight.data[:, :i2] = Q[:, :i2]
            #     self.layer.weight.data[:, i2:] = W[:, i2:]
            #
            #     logger.debug(torch.sum((self.layer(self.inp1) - self.out1) ** 2))
            #     logger.debug(torch.sum(Losses))

        torch_sync(self.device)

        avg_loss = torch.sum(Losses).item() / self.nsamples

        if math.isnan(avg_loss):
            print("Losses sum item:", torch.sum(Losses).item())
            raise ValueError(f"Quantization: Failed due to `NaN` loss for `{self.name}`")

        group_size = self.qcfg.group_size if self.qcfg.group_size != -1 else self.columns

        if self.qcfg.static_groups and self.qcfg.desc_act:
            g_idx = [perm[i] // group_size for i in range(self.columns)]
        else:
            g_idx = [i // group_size for i in range(self.columns)]

        g_idx = torch.tensor(g_idx, dtype=torch.int32, device=Q.device)

        if self.qcfg.desc_act:
            Q = Q[:, invperm]
            g_idx = g_idx[invperm]

        if self.fair_active:  # Fair-GPTQ: logs, after quantization, in original column order
            self._fair_after_quantize(Q, avg_loss, damp_percent)

        if isinstance(self.module, transformers.Conv1D):
            Q = Q.t()

        # if Q.shape != self.module.weight.shape:
        #     self.module.weight.data = Q.reshape(self.module.weight.shape).type_as(self.module.weight.data)
        # else:
        #     self.module.weight.data = Q.type_as(self.module.weight.data)
        #
        # # move back to self.dev
        # self.module.weight.data = self.module.weight.data.to(device=self.device)

        if Q.shape != self.module.weight.shape:
            Q = Q.reshape(self.module.weight.shape).type_as(self.module.weight.data)
        else:
            Q = Q.type_as(self.module.weight.data)

        Q = Q.to(device=self.device)

        # if os.environ.get("DEBUG"):
        #     logger.debug(torch.sum((self.layer(self.inp1) - self.out1) ** 2))

        if scale == []:
            scale.append(self.quantizer.scale)
            zero.append(self.quantizer.zero)

        scale = torch.cat(scale, dim=1)
        zero = torch.cat(zero, dim=1)

        duration = time.time() - start

        return Q, scale, zero, g_idx, duration, avg_loss, damp_percent, self.nsamples

    def free(self):
        # if os.environ.get("DEBUG"):
        #     self.inp1 = None
        #     self.out1 = None
        #     del self.inp1
        #     del self.out1

        if hasattr(self, "H"):
            del self.H
        self.H01 = self._fair_loss_inputs = self._fair_sensitivity_inputs = self._fair_pair_means = None  # Fair-GPTQ
        self._fair_sum_uu = self._fair_sum_dd = None  # Fair-GPTQ
        del self.quantizer
        del self.module_copy
        del self.module

        # torch_empty_cache(self.device)

    # -----------------------------------------------------------------------------------------------------------
    # Fair-GPTQ
    # -----------------------------------------------------------------------------------------------------------

    def _fair_init(self, module: nn.Module):
        """Decide once whether this module gets the paired bias term (QuantizeConfig.fair_term_active, with the
        module's `dynamic` overrides) and with which alpha and form."""
        named = isinstance(module, NamedModule)
        self.full_name = module.full_name if named else None
        self.layer_index = module.layer_index if named else None
        settings = self.qcfg.fair_settings_for(self.full_name)
        self.fair_alpha, self.fair_sum_hessians = settings["alpha"], settings["sum_hessians"]
        self.fair_target, self.fair_rank = settings["fair_target"], settings["fair_rank"]
        self.fair_accumulate = getattr(self.qcfg, "fair_accumulate", "direct")
        # every named module of a Fair-GPTQ run records its batch shapes, so flattened siblings can find their pairs
        self._fair_records_shapes = named and self.qcfg.fair_enabled()
        self.fair_active = self.qcfg.fair_term_active(self.full_name, self.layer_index)  # False without a name
        self.H01 = None
        self.n_pairs = 0  # real pairs seen (logged)
        self._fair_nsamples = 0  # H01's running-average count, in the unit upstream uses for H (see _fair_accumulate)
        self._fair_buffered_shapes = []
        self._fair_record = None  # the delta_w.jsonl record, completed after quantization
        self._fair_loss_inputs = None  # (W, H) kept for the loss against W (log_delta_w only)
        self._fair_sensitivity_inputs = None  # (W', diag H01) kept for the sensitivity log
        # direction targets (see _fair_add_direction_pair): instead of H01, sum_p m_p, sum_p |m_p|^2, ||D||_F^2 and,
        # for rank > 1, the per-pair means m_p themselves (P x columns, far less than H01 for P < columns)
        self._fair_mean_sum = None
        self._fair_mean_energy = 0.0
        self._fair_diff_energy = 0.0
        self._fair_pair_means = []
        self._fair_sum_uu = self._fair_sum_dd = None  # fair_accumulate="sum-difference": unscaled sums
        self._fair_direction_log = None  # the weights and mean energy, for the delta_w.jsonl record
        if self._fair_records_shapes:
            _fair_refuse_concatenated_calibration(self.qcfg)
        if self.fair_active and not isinstance(self.module, (nn.Linear, transformers.Conv1D)):
            raise ValueError(f"Fair-GPTQ: module `{self.full_name}` is a {type(self.module).__name__}; the paired bias "
                             f"term supports nn.Linear and transformers Conv1D only. Add it to `ignore_bias`.")

    def _fair_batch_shape(self, inp: torch.Tensor) -> Optional[Tuple[int, int]]:
        """(batch_size, seq_len) of this calibration batch, recovered from the input's shape.

        A 3-D input (batch, seq, hidden) says it directly and is recorded for the layer. A 2-D input
        (batch*seq, hidden) is looked up in what a 3-D sibling of the same layer saw for the same batch; rows are
        never paired by guesswork.
        """
        if not self._fair_records_shapes:
            return None
        batch_index = self.fwd_counter - 1
        if inp.dim() == 3:
            shape = (int(inp.shape[0]), int(inp.shape[1]))
            if self.layer_index == 0 and batch_index == 0:
                # the first batch of the first layer starts a quantization run: drop a previous run's shapes
                for key in [k for k in _FAIR_BATCH_SHAPES if k[0] != 0]:
                    del _FAIR_BATCH_SHAPES[key]
            _FAIR_BATCH_SHAPES[(self.layer_index, batch_index)] = shape
            return shape
        if not self.fair_active:
            return None
        recorded = _FAIR_BATCH_SHAPES.get((self.layer_index, batch_index)) if inp.dim() == 2 else None
        if recorded is None or recorded[0] * recorded[1] != inp.shape[0]:
            raise ValueError(
                f"Fair-GPTQ: cannot split the input of module `{self.full_name}` (shape {tuple(inp.shape)}, calibration "
                f"batch {batch_index}) into (stereotype, anti-stereotype) pairs: expected (batch, seq, hidden), or "
                f"(batch*seq, hidden) matching a 3-D input of the same layer and batch, which was "
                f"{'never seen' if recorded is None else f'(batch={recorded[0]}, seq={recorded[1]})'}.")
        return recorded

    def _fair_check_even(self, inp: torch.Tensor, batch_size: int):
        if batch_size % 2 != 0:
            raise ValueError(
                f"Fair-GPTQ: module `{self.full_name}` got a calibration batch of {batch_size} sequences (input shape "
                f"{tuple(inp.shape)}). Rows 2i and 2i+1 of a batch are a (stereotype, anti-stereotype) pair, so the "
                f"batch size must be even.")

    def _fair_sum_difference(self, inp: torch.Tensor, pair_shape: Tuple[int, int]) -> bool:
        """fair_accumulate="sum-difference" (pairs target only): H and H01 from U = X_s + X_a and D = X_s - X_a.

        For a pair, X_s X_s^T + X_a X_a^T = (U U^T + D D^T) / 2, so upstream's H = (2/n) sum x x^T is
        (1/n)(sum U U^T + sum D D^T), and sum D D^T is H01's too: both for the GEMM work of upstream's H alone.
        The two sums are kept unscaled, each batch added in place by one GEMM, and scaled once by
        _fair_finish_sum_difference (upstream rescales its running average every batch: a pass over a
        columns x columns matrix that this mode saves). n counts samples as upstream does (a flattened 2-D batch
        is one sample), so H equals upstream's up to float rounding and H01 equals _fair_accumulate's.
        Returns False (nothing done) in the default mode."""
        if self.fair_accumulate != "sum-difference" or self.fair_target != "pairs":
            return False
        batch_size, seq_len = pair_shape
        self._fair_check_even(inp, batch_size)
        sequences = inp.reshape(batch_size, seq_len, -1).float()
        u = (sequences[0::2] + sequences[1::2]).reshape(-1, self.columns)
        d = (sequences[0::2] - sequences[1::2]).reshape(-1, self.columns)
        if self._fair_sum_uu is None:
            self._fair_sum_uu = torch.zeros((self.columns, self.columns), device=self.device)
            self._fair_sum_dd = torch.zeros((self.columns, self.columns), device=self.device)
        self._fair_sum_uu.addmm_(u.t(), u)
        self._fair_sum_dd.addmm_(d.t(), d)
        samples = batch_size if inp.dim() == 3 else 1  # as upstream's process_batch counts them for H
        self.nsamples += samples
        self._fair_nsamples += samples
        self.n_pairs += batch_size // 2
        return True

    def _fair_finish_sum_difference(self):
        """H = (1/n)(sum U U^T + sum D D^T) and H01 = alpha (2 / (n/2)) sum D D^T, in the sums' own memory."""
        if self._fair_sum_uu is None:
            return
        uu, dd = self._fair_sum_uu, self._fair_sum_dd
        self._fair_sum_uu = self._fair_sum_dd = None
        self.H = uu.add_(dd).mul_(1 / self.nsamples)
        self.H01 = dd.mul_(self.fair_alpha * 2 / (self._fair_nsamples / 2))

    def _fair_accumulate(self, inp: torch.Tensor, pair_shape: Tuple[int, int]):
        """H01 <- running average of alpha (2/n_pairs) sum D D^T, updated exactly like H.

        Upstream counts a 3-D batch as `batch` samples but a flattened 2-D batch (OPT's fc1/fc2) as ONE sample,
        which makes H `batch` times larger there. H01 is counted in the same unit as H, n_pairs = samples / 2, so
        the H01 : H ratio, and with it W', is the same for both input layouts and for every batch size.
        Out of memory, H01 gets upstream's fallbacks for H: allocation retried after emptying the cache, and a
        batch that cannot be accumulated on the device is accumulated on the CPU, then H01 moves back.
        """
        batch_size, seq_len = pair_shape
        self._fair_check_even(inp, batch_size)
        sequences = inp.reshape(batch_size, seq_len, -1)
        new_pairs = batch_size // 2
        samples = batch_size if inp.dim() == 3 else 1  # as upstream's process_batch counts them for H
        if self.fair_target != "pairs":  # sums only; H01_dir is built from them at quantize time
            self._fair_nsamples += samples
            self.n_pairs += new_pairs
            for pair in range(new_pairs):
                self._fair_add_direction_pair(sequences, pair)
            return
        if self.H01 is None:
            try:
                self.H01 = torch.zeros((self.columns, self.columns), device=self.device)
            except torch.OutOfMemoryError:
                log.info("Memory: OOM H01 allocate bypass")
                torch_empty_cache()
                self.H01 = torch.zeros((self.columns, self.columns), device=self.device)
        else:
            self.H01 *= self._fair_nsamples / (self._fair_nsamples + samples)
        self._fair_nsamples += samples
        self.n_pairs += new_pairs
        scale = self.fair_alpha * 2 / (self._fair_nsamples / 2)
        # one pair at a time: a (seq, hidden) difference, never a copy of the whole batch
        for pair in range(new_pairs):
            try:
                self._fair_add_pair(sequences, pair, scale)
            except torch.OutOfMemoryError:
                log.info("Memory: OOM cpu bypass for Fair-GPTQ H01 accumulation")
                torch_empty_cache()
                self.H01, sequences = self.H01.to(device=CPU), sequences.to(device=CPU)
                self._fair_add_pair(sequences, pair, scale)  # this pair was not added: OOM comes before the update
        self.H01 = self.H01.to(device=self.device)  # back where H lives (a no-op unless the fallback ran)

    def _fair_add_pair(self, sequences: torch.Tensor, pair: int, scale: float):
        """H01 += scale * D^T D with D = X_s - X_a, the token-aligned difference of pair `pair` of the batch."""
        delta = sequences[2 * pair].float() - sequences[2 * pair + 1].float()
        self.H01.addmm_(delta.t(), delta, alpha=scale)

    def _fair_add_direction_pair(self, sequences: torch.Tensor, pair: int):
        """Adds pair `pair`'s mean difference m_p over the positions where its rows differ, |m_p|^2 and ||D_p||_F^2.

        Positions where the rows are equal have d = 0 and add nothing to the sum: only the divisor |S_p| needs them
        told apart. Everything stays on the device (no .item(): no synchronisation per pair)."""
        delta = sequences[2 * pair].float() - sequences[2 * pair + 1].float()  # stereotype - anti-stereotype
        differing = (delta != 0).any(dim=1).sum().clamp(min=1)
        pair_mean = delta.sum(dim=0, dtype=torch.float64) / differing
        if self._fair_mean_sum is None:
            self._fair_mean_sum = torch.zeros_like(pair_mean)
        self._fair_mean_sum += pair_mean
        self._fair_mean_energy = self._fair_mean_energy + pair_mean.square().sum()
        self._fair_diff_energy = self._fair_diff_energy + delta.square().sum(dtype=torch.float64)
        if self.fair_rank > 1:
            self._fair_pair_means.append(pair_mean.float())

    def _fair_directions(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(unit directions as columns [columns, m], weights e_j [m]), m <= fair_rank, float64, on the device.

        u_1 = mu/|mu| with e_1 = P |mu|^2, then the top k-1 left singular vectors of the deviations m_p - mu with
        e_j = s_j^2 (see the header). "random-direction" keeps the e_j and draws the directions at random."""
        mean = self._fair_mean_sum / self.n_pairs
        mean_norm = torch.linalg.norm(mean)
        directions = [mean / mean_norm.clamp(min=torch.finfo(torch.float64).tiny)]  # zero direction if mu = 0
        weights = [self.n_pairs * mean_norm.square()]
        if self.fair_rank > 1:
            deviations = torch.stack(self._fair_pair_means).double() - mean  # [P, columns]
            _, s, vh = torch.linalg.svd(deviations, full_matrices=False)  # rows of vh: left singular vectors of R
            directions += list(vh[:self.fair_rank - 1])
            weights += list(s[:self.fair_rank - 1].square())
        self._fair_pair_means = []
        directions, weights = torch.stack(directions, dim=1), torch.stack(weights)
        if self.fair_target == "random-direction":
            directions = self._fair_random_frame(directions.shape[1]).to(directions.device)
        mean_energy, total = weights[0], weights.sum()
        self._fair_direction_log = {
            "direction_weights": (weights / total).tolist() if total > 0 else [],
            # share of sum_p |m_p|^2 in the signed mean P |mu|^2: near 1 when the pairs agree, ~1/P for noise
            "mean_energy_fraction": (mean_energy / self._fair_mean_energy).item() if self._fair_mean_energy > 0 else 0.0,
        }
        return directions, weights

    def _fair_random_frame(self, count: int) -> torch.Tensor:
        """`count` orthonormal random columns, the same for the same fair_seed and module name on any machine."""
        digest = hashlib.sha256(f"{self.qcfg.fair_seed}:{self.full_name}".encode("utf-8")).digest()
        generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        gaussian = torch.randn(self.columns, count, generator=generator, dtype=torch.float64)
        frame, _ = torch.linalg.qr(gaussian)
        return frame

    def _fair_direction_h01(self) -> Optional[torch.Tensor]:
        """H01_dir = tr(H01) sum_j w_j u_j u_j^T with tr(H01) = alpha (4/n) ||D||_F^2; None when there is nothing to
        penalise (no pair differs anywhere)."""
        directions, weights = self._fair_directions()
        trace = self.fair_alpha * 4 / self._fair_nsamples * self._fair_diff_energy
        self._fair_mean_sum = self._fair_diff_energy = self._fair_mean_energy = None
        if not weights.sum() > 0 or not trace > 0:
            log.warn(f"Fair-GPTQ: no calibration pair of `{self.full_name}` differs anywhere; no shift.")
            return None
        factors = (directions * (trace * weights / weights.sum()).sqrt()).float()
        return factors.matmul(factors.t())

    def _fair_damped_cholesky(self, M: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """Cholesky factor of M with upstream's dampening rule: damp_percent * mean(diag) added to the diagonal,
        and added again (with damp_percent raised by damp_auto_increment) each time the factorisation fails."""
        damp_percent = self.qcfg.damp_percent
        diag = torch.arange(self.columns, device=M.device)
        while 1 > damp_percent > 0:
            M[diag, diag] += damp_percent * torch.mean(torch.diag(M))
            L, info = torch.linalg.cholesky_ex(M)
            if info.item() == 0:
                return L, damp_percent
            if self.qcfg.damp_auto_increment == 0:
                raise ValueError(f"Fair-GPTQ: the Hessian of `{self.full_name}` is not positive definite at "
                                 f"damp_percent={damp_percent:.5f}; increase damp_percent or the calibration pairs.")
            log.warn(f"Fair-GPTQ: `damp_percent = {damp_percent:.5f}` is too low for the shift of `{self.full_name}`, "
                     f"auto-incrementing by `{self.qcfg.damp_auto_increment:.5f}`")
            damp_percent += self.qcfg.damp_auto_increment
        raise ValueError(f"Fair-GPTQ: `damp_percent` must be between 0 and 1 for `{self.full_name}`, is {damp_percent}.")

    def _fair_shift_weights(self, W: torch.Tensor) -> torch.Tensor:
        """W' = W - W H01 M^-1 with M = H + H01 (sum_hessians=1) or M = H (sum_hessians=0), both dampened.

        Keeps what the logs need after quantization: the delta_w.jsonl record and, with log_delta_w, copies of W
        and H for the loss against W; with log_hessian_sensitivity, a copy of W' and diag(H01).
        """
        if self.fair_target != "pairs":
            self.H01 = self._fair_direction_h01() if self.n_pairs else None
        self._fair_finish_sum_difference()
        if self.H01 is None:
            return W
        H, H01 = self.H, self.H01
        self.H01 = None
        if self.qcfg.log_delta_w:
            self._fair_loss_inputs = (W.clone(), H.clone())
        W_times_H01 = W.matmul(H01)
        h01_diag = torch.diag(H01).clone() if self.qcfg.log_hessian_sensitivity else None
        # M reuses H01's memory: the only extra columns x columns matrix a module holds. Its Cholesky factor exists
        # for the moment of the solve below (an in-place factorisation would leave nothing to retry with when
        # the dampening has to be raised).
        M = H01.add_(H) if self.fair_sum_hessians else H01.copy_(H)
        del H01
        dead = torch.diag(H) == 0  # the same dead-column rule as the GPTQ inverse below
        M[dead, dead] = 1
        L, shift_damp = self._fair_damped_cholesky(M)
        del M
        # (W H01 M^-1)^T = M^-1 (W H01)^T: one triangular solve pair instead of an explicit inverse
        delta_W = torch.cholesky_solve(W_times_H01.t(), L).t()
        del L, W_times_H01
        W_norm = torch.linalg.norm(W).item() if self.qcfg.log_delta_w else 0.0
        W.sub_(delta_W)
        if self.qcfg.log_delta_w:
            delta_norm = torch.linalg.norm(delta_W).item()
            self._fair_record = {
                "run_id": self.qcfg.log_run_id, "module": self.full_name, "layer_index": self.layer_index,
                "alpha": self.fair_alpha, "sum_hessians": self.fair_sum_hessians, "n_pairs": self.n_pairs,
                "damp_percent": shift_damp, "delta_w_fro": delta_norm,
                "relative_delta_w": delta_norm / W_norm if W_norm > 0 else 0.0,
                "fair_target": self.fair_target, "fair_rank": self.fair_rank, **(self._fair_direction_log or {}),
            }
        del delta_W
        if self.qcfg.log_hessian_sensitivity:
            shifted_copy = W.clone()
            shifted_copy[:, dead] = 0  # GPTQ zeroes dead columns of W' before quantizing: compare like with like
            self._fair_sensitivity_inputs = (shifted_copy, h01_diag)
        return W

    def _fair_after_quantize(self, Q: torch.Tensor, loss: float, damp_percent: float):
        """Writes the logs of an active module; Q is in W's orientation and original column order.

        GPTQ's loss (printed by GPTQModel) of this module is measured against W', the weights it quantized. The
        delta_w.jsonl record keeps it as `loss_vs_shifted_w` and adds `loss_vs_w`, the same quantity against W
        (see _fair_gptq_loss), which is what a stock GPTQ run's loss measures.
        """
        if self.qcfg.log_run_id not in _FAIR_LOSS_NOTICE_GIVEN:
            _FAIR_LOSS_NOTICE_GIVEN.add(self.qcfg.log_run_id)
            log.info("Fair-GPTQ: for modules with the fair term, the quantization log's `loss` is measured against "
                     "the shifted weights W' = W - dW, not against W, so it is not comparable with a stock GPTQ "
                     "run's; log_delta_w=1 records both (delta_w.jsonl: loss_vs_shifted_w, loss_vs_w).")
        if self._fair_record is not None:
            W, H = self._fair_loss_inputs
            self._fair_loss_inputs = None
            self._fair_record.update(loss_vs_shifted_w=loss, loss_vs_w=self._fair_gptq_loss(Q, W, H, damp_percent))
            self._fair_append_log("delta_w.jsonl", self._fair_record)
            self._fair_record = None
        if self._fair_sensitivity_inputs is not None:
            self._fair_log_sensitivity(Q)

    def _fair_gptq_loss(self, Q: torch.Tensor, W: torch.Tensor, H: torch.Tensor, damp_percent: float) -> float:
        """GPTQ's loss of quantizing W to Q: 1/2 tr((Q - W) H_d (Q - W)^T) / nsamples.

        GPTQ reports sum_j (w_j - q_j)^2 / (2 d_j^2) / nsamples, which equals this closed form (W - Q = Err U with
        U the upper Cholesky factor of H_d^-1, so the trace is ||Err||^2). H_d is the H GPTQ inverted: dead columns
        set to 1 (W's dead columns to 0) and damp_percent * mean(diag) added; it is exact when the dampening was not
        raised. `W` and `H` are this module's own copies and are modified.
        """
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        H.diagonal().add_(damp_percent * torch.mean(torch.diag(H)))
        error = Q.to(W.dtype) - W
        return 0.5 * torch.sum(error.matmul(H) * error).item() / self.nsamples

    def _fair_log_sensitivity(self, Q: torch.Tensor):
        """Per column j: H01[j,j] * ||W'[:,j] - Q[:,j]||_2, measured after quantization, written sorted as CSV."""
        shifted_W, h01_diag = self._fair_sensitivity_inputs
        self._fair_sensitivity_inputs = None
        error = torch.linalg.norm(shifted_W - Q.to(shifted_W.dtype), dim=0)
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
        with open(os.path.join(self.qcfg.log_dir, filename), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _fair_refuse_concatenated_calibration(qcfg: QuantizeConfig):
    """Refuse `quantize(calibration_dataset_concat_size=N)` in a Fair-GPTQ run, before any layer is quantized.

    GPTQModel hands that argument only to its dataset preparation, which keeps no trace of it; the only place the
    overlay can see it is the frame of `BaseGPTQModel.quantize`, which is still running while the modules of the
    first layer are set up.
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "quantize" and "calibration_dataset_concat_size" in code.co_varnames:
            qcfg.check_calibration_concat_size(frame.f_locals.get("calibration_dataset_concat_size"))
            return
        frame = frame.f_back


__all__ = ["GPTQ"]
