"""Shared pieces of the FairGPTQ task tests: synthetic padded batches, the processor's feeding order and GPTQ's
loss in float64 closed form (independent of the code under test)."""
from __future__ import annotations

import torch

COLS = 16


def padded_batches(seed=1, dead_column=None, cols=COLS):
    """Two batches of 4 right-padded sentences (two pairs each); `dead_column` is zero in every token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ([5, 3, 4, 6], [2, 2, 7, 5]):
        x = torch.randn(len(lengths), max(lengths), cols, generator=g)
        if dead_column is not None:
            x[..., dead_column] = 0
        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
        for i, n in enumerate(lengths):
            mask[i, :n] = True
        out.append((x, mask))
    return out


def feed(task, batches):
    """What FairGPTQProcessor does per batch: the whole batch to fair_add_batch, then one add_batch per sample."""
    for index, (x, mask) in enumerate(batches):
        task.fair_add_batch(x, mask, index)
        for i in range(x.shape[0]):
            task.add_batch(x[i:i + 1, mask[i]], None, batch_index=index)


def gptq_loss(Q, W, H, damp, N):
    """1/2 tr((Q - W) H_d (Q - W)^T) / N; H_d: dead diagonal -> 1, + damp mean(diag); W's dead columns -> 0."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=torch.float64)
    W = W.double().clone()
    W[:, dead] = 0
    E = Q.double() - W
    return 0.5 * torch.trace(E @ H @ E.t()).item() / N


def reference_shift(W, batches, alpha, damp, sum_hessians=1):
    """float64 closed form: N, H, H01 and W' = W - W H01 M^-1, M = H + H01 (sum_hessians=1) or H, over the real
    tokens of `padded_batches`; M's dead diagonal set to 1, then damp * mean(diag) added."""
    rows = torch.cat([x[i][m[i]] for x, m in batches for i in range(x.shape[0])]).double()
    N = rows.shape[0]
    H = 2 / N * rows.t() @ rows
    S01 = torch.zeros_like(H)
    for x, m in batches:
        for p in range(x.shape[0] // 2):
            s, a = x[2 * p][m[2 * p]].double(), x[2 * p + 1][m[2 * p + 1]].double()
            n = min(len(s), len(a))
            S01 += (s[:n] - a[:n]).t() @ (s[:n] - a[:n])
    H01 = 2 * alpha * 2 / N * S01
    M = H + H01 if sum_hessians else H.clone()
    dead = torch.diag(H) == 0
    M[dead, dead] = 1
    M += damp * torch.mean(torch.diag(M)) * torch.eye(M.shape[0], dtype=torch.float64)
    return N, H, H01, W.double() - W.double() @ H01 @ torch.linalg.inv(M)
