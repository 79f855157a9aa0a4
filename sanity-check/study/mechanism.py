"""The quantity Fair-GPTQ minimises, measured out of sample: ‖Q D‖ / ‖W D‖ on held-out pairs.

Fair-GPTQ shifts each weight matrix W towards a W′ with a small W′·D, where D = X_s − X_a is the difference
between a module's inputs on a stereotype sentence and on its anti-stereotype twin. If the shift generalises,
the quantized weights Q of a Fair-GPTQ model give a smaller ‖Q D‖ than plain GPTQ's on pairs it never saw.

Here D comes from the full-precision model (the same inputs for every variant), one pair at a time, with no
padding: the two sentences are compared position by position over their common length (for the pairs whose
token counts are equal, that is exact alignment; the `equal_length` figures use only those). For every module
the sums Σ_pairs ‖W D‖²_F and Σ_pairs ‖Q D‖²_F are accumulated; the ratio sqrt(ΣQ / ΣW) is reported per module
and over all modules. Per-pair totals over all modules are kept so that two variants can be compared with a
paired bootstrap over the pairs (`paired_ratio_difference`).

Along the held-out mean direction (the direction term's target, issue 23): per pair, m_p is the mean of d over
the positions where the two sentences' inputs differ (as gptq.py's direction term defines it), μ = mean_p m_p,
and the ratio is sqrt(Σ_modules ‖Q μ‖² / Σ_modules ‖W μ‖²) (`mean_direction`). Its bootstrap resamples the pairs
with a fixed seed, so two variants measured on the same pairs share the resamples and their stored resampled
ratios give a paired interval (`paired_mean_direction_difference`). The plug-in ratio is biased: μ's sampling
noise adds energy to ‖Wμ‖² and ‖Qμ‖² (about tr(W Σ Wᵀ)/P), pulling the ratio towards the ratio for pair-to-pair
noise, and the more so the weaker the common direction; each bootstrap replicate adds that noise once more. The
report therefore gives the bootstrap bias-corrected ratio with the basic interval (`mean_direction_summary`,
evaluation.metrics.bias_corrected); the stored record keeps the plug-in ratio and its replicates.

Q is read off the quantized module itself: for a linear map y = Q x + b, feeding the identity matrix gives
Qᵀ + b and feeding zeros gives b, whatever kernel stores the int4 weights.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluation import metrics

MECHANISM_VERSION = 1
PAIRS_PER_PRODUCT = 64  # pairs whose differences share one product with each module's W and Q


# ----------------------------------------------------------------------------- pure parts


def squared_norm(matrix: torch.Tensor, differences: torch.Tensor) -> float:
    """‖M Dᵀ‖²_F for D with one difference vector per row (float64)."""
    product = differences.to(torch.float64) @ matrix.to(torch.float64).T
    return float((product * product).sum())


def squared_norms(matrix: torch.Tensor, differences: list[torch.Tensor]) -> list[float]:
    """squared_norm(matrix, d) for every d of the list, with one product for all of them: the matrix is read
    once per chunk of pairs instead of once per pair (memory traffic was most of the measurement's time)."""
    rows = torch.cat(differences).to(torch.float64)
    owners = torch.repeat_interleave(torch.arange(len(differences)), torch.tensor([d.shape[0] for d in differences]))
    product = rows @ matrix.to(torch.float64).T
    per_row = (product * product).sum(dim=1)
    return torch.zeros(len(differences), dtype=torch.float64).index_add_(0, owners, per_row).tolist()


def ratio(q_sum: float, w_sum: float) -> float:
    """sqrt(Σ‖QD‖² / Σ‖WD‖²): 1 = no change from full precision, < 1 = the pair difference is damped."""
    return float(np.sqrt(q_sum / w_sum)) if w_sum > 0 else float("nan")


def paired_ratio_difference(w_per_pair, q_a_per_pair, q_b_per_pair, n_resamples: int = 1000, seed: int = 0) -> dict:
    """ratio(B) − ratio(A) over the same pairs, with a paired-bootstrap 95 % interval (pairs resampled)."""
    w, qa, qb = (np.asarray(x, dtype=np.float64) for x in (w_per_pair, q_a_per_pair, q_b_per_pair))
    if not (w.size == qa.size == qb.size) or w.size == 0:
        raise ValueError("paired_ratio_difference needs the same, non-empty set of pairs for both variants")
    q = (qa, qb)

    def resampled(idx, model):
        return np.sqrt(q[model][idx].sum(axis=1) / w[idx].sum(axis=1))

    low, high = metrics.paired_bootstrap_diff(resampled, w.size, n_resamples, seed)
    return {"diff": ratio(qb.sum(), w.sum()) - ratio(qa.sum(), w.sum()), "ci": [low, high], "n": int(w.size)}


def pair_mean_difference(d: torch.Tensor) -> torch.Tensor:
    """m_p: the sum of a pair's position-aligned differences over the positions where they differ, divided by
    their count (at least 1): gptq.py's _fair_add_direction_pair, in float64."""
    differing = max(int((d != 0).any(dim=1).sum()), 1)
    return d.sum(dim=0, dtype=torch.float64) / differing


def mean_direction_grams(pair_means: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(G_W, G_Q) with G[p, r] = (W m_p)·(W m_r): any resample's Σ‖W μ*‖² is c G c / P² for its pair counts c."""
    a, b = pair_means.double() @ w.double().T, pair_means.double() @ q.double().T
    return (a @ a.T).numpy(), (b @ b.T).numpy()


def mean_direction_ratio(gram_w: np.ndarray, gram_q: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict:
    """sqrt(‖Q μ‖² / ‖W μ‖²) summed over modules (the grams summed), with the ratios of `n_resamples` bootstrap
    resamples of the pairs (evaluation.metrics.bootstrap_indices: the same for every variant on the same pairs)."""
    n = gram_w.shape[0]
    counts = np.stack([np.bincount(idx, minlength=n) for idx in metrics.bootstrap_indices(n, n_resamples, seed)])
    w_energy = ((counts @ gram_w) * counts).sum(axis=1)
    q_energy = ((counts @ gram_q) * counts).sum(axis=1)
    resampled = np.sqrt(q_energy / w_energy)
    low, high = metrics.percentile_ci(resampled)
    return {"ratio": ratio(gram_q.sum(), gram_w.sum()), "ci": [float(low), float(high)], "n": int(n),
            "bootstrap": {"resamples": n_resamples, "seed": seed}, "resampled": resampled.tolist()}


def mean_direction_summary(record: dict) -> dict:
    """A stored `mean_direction` record as reported: the bias-corrected ratio and its basic 95 % interval, beside
    the plug-in ratio."""
    corrected = metrics.bias_corrected(record["ratio"], np.asarray(record["resampled"]))
    return {"ratio": corrected["estimate"], "ci": corrected["ci"], "plugin": record["ratio"], "n": record["n"]}


def paired_mean_direction_difference(a: dict, b: dict) -> dict:
    """ratio(B) − ratio(A) along the held-out mean direction, bias-corrected, with a paired basic 95 % interval,
    from the two variants' stored `mean_direction` records (same pairs, same bootstrap seed: the same resamples)."""
    if (a["n"], a["bootstrap"]) != (b["n"], b["bootstrap"]):
        raise ValueError("paired_mean_direction_difference needs both variants measured on the same pairs with the "
                         f"same bootstrap (got n {a['n']} / {b['n']}, {a['bootstrap']} / {b['bootstrap']})")
    diffs = np.asarray(b["resampled"]) - np.asarray(a["resampled"])
    corrected = metrics.bias_corrected(b["ratio"] - a["ratio"], diffs)
    return {"diff": corrected["estimate"], "ci": corrected["ci"], "diff_plugin": b["ratio"] - a["ratio"], "n": a["n"]}


# ----------------------------------------------------------------------------- model access


def linear_matrix(module: torch.nn.Module, columns: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (out, in) matrix a linear-like module applies, in float32 (dequantized for GPTQ modules).

    `dtype`: the activation dtype the module is probed in; give the one the model is evaluated in (a half
    precision probe rounds Q + b before b is subtracted, which matters for modules with large biases).
    Default: the kernel's own float buffers' dtype (its scales)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point and weight.dim() == 2:
        return weight.detach().float().cpu()
    floats = [t for t in module.buffers() if t.dtype.is_floating_point]
    device = floats[0].device if floats else torch.device("cpu")
    dtype = dtype or (floats[0].dtype if floats else torch.float32)
    with torch.no_grad():
        eye = torch.eye(columns, dtype=dtype, device=device)
        zero = torch.zeros(1, columns, dtype=dtype, device=device)
        return (module(eye) - module(zero)).T.float().cpu()


def _submodule(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"module {name!r} not found in {type(model).__name__}") from None


def _encode(tokenizer, text: str, device) -> dict:
    encoded = tokenizer(text, return_tensors="pt")
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def measure(fp_model, tokenizer, quantized_model, module_names: list[str], pairs: list[tuple[str, str]],
            progress: bool = True) -> dict:
    """Per module and overall Σ‖WD‖², Σ‖QD‖² and ratios, over all pairs and over the equal-length pairs.

    `fp_model` provides both D (its module inputs) and W; `quantized_model` provides Q (same module names).
    """
    fp_modules = {name: _submodule(fp_model, name) for name in module_names}
    activation_dtype = quantized_model.get_input_embeddings().weight.dtype  # what evaluation runs in
    # float64 once, not per chunk: squared_norms' .to(float64) is then a no-op (same products, ~10x less work)
    q_matrices = {}
    for name, module in fp_modules.items():
        columns = module.weight.shape[1]
        q_matrices[name] = linear_matrix(_submodule(quantized_model, name), columns, activation_dtype).double()
        if q_matrices[name].shape != module.weight.shape:
            raise ValueError(f"{name}: quantized matrix {tuple(q_matrices[name].shape)} does not match "
                             f"the full-precision weight {tuple(module.weight.shape)}")
    w_matrices = {name: m.weight.detach().cpu().double() for name, m in fp_modules.items()}

    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def capture(_module, args):
            # (tokens, columns) of the single sentence; OPT's fc1/fc2 receive it already flattened to 2-D
            x = args[0].detach()
            captured[name] = x.reshape(-1, x.shape[-1]).float().cpu()
        return capture

    handles = [fp_modules[name].register_forward_pre_hook(hook(name)) for name in module_names]
    device = next(fp_model.parameters()).device
    totals = {name: {"w_all": 0.0, "q_all": 0.0, "w_equal": 0.0, "q_equal": 0.0} for name in module_names}
    per_pair_w, per_pair_q, equal_length, n_positions = [], [], [], 0
    pair_means: dict[str, list[torch.Tensor]] = {name: [] for name in module_names}
    try:
        iterator = pairs
        if progress:
            from tqdm import tqdm

            iterator = tqdm(pairs, desc="mechanism", mininterval=10)
        chunk: list[tuple[dict, int, bool]] = []  # (module -> d, common length, equal length) per buffered pair

        def flush():
            sums = {name: (squared_norms(w_matrices[name], [c[0][name] for c in chunk]),
                           squared_norms(q_matrices[name], [c[0][name] for c in chunk])) for name in module_names}
            for index, (_, length, same) in enumerate(chunk):
                pair_w = pair_q = 0.0
                for name in module_names:
                    w_sq, q_sq = sums[name][0][index], sums[name][1][index]
                    totals[name]["w_all"] += w_sq
                    totals[name]["q_all"] += q_sq
                    if same:
                        totals[name]["w_equal"] += w_sq
                        totals[name]["q_equal"] += q_sq
                    pair_w, pair_q = pair_w + w_sq, pair_q + q_sq
                per_pair_w.append(pair_w)
                per_pair_q.append(pair_q)
                equal_length.append(same)
            chunk.clear()

        for stereotype, anti in iterator:
            inputs = []
            with torch.no_grad():
                for text in (stereotype, anti):
                    captured.clear()
                    fp_model(**_encode(tokenizer, text, device))
                    inputs.append(dict(captured))
            length = min(inputs[0][module_names[0]].shape[0], inputs[1][module_names[0]].shape[0])
            same = inputs[0][module_names[0]].shape[0] == inputs[1][module_names[0]].shape[0]
            diffs = {name: inputs[0][name][:length] - inputs[1][name][:length] for name in module_names}
            for name in module_names:
                pair_means[name].append(pair_mean_difference(diffs[name]).float())
            chunk.append((diffs, length, same))
            n_positions += length
            if len(chunk) == PAIRS_PER_PRODUCT:
                flush()
        if chunk:
            flush()
    finally:
        for handle in handles:
            handle.remove()

    modules = {name: {**t, "ratio_all": ratio(t["q_all"], t["w_all"]), "ratio_equal": ratio(t["q_equal"], t["w_equal"])}
               for name, t in totals.items()}
    gram_w = gram_q = 0.0
    for name in module_names:
        g_w, g_q = mean_direction_grams(torch.stack(pair_means.pop(name)), w_matrices[name], q_matrices[name])
        modules[name]["mean_direction_ratio"] = ratio(g_q.sum(), g_w.sum())
        gram_w, gram_q = gram_w + g_w, gram_q + g_q
    w_all, q_all = np.asarray(per_pair_w), np.asarray(per_pair_q)
    mask = np.asarray(equal_length, dtype=bool)
    return {
        "version": MECHANISM_VERSION,
        "n_pairs": len(pairs),
        "n_equal_length": int(mask.sum()),
        "n_positions": n_positions,
        "modules": modules,
        "overall": {"ratio_all": ratio(q_all.sum(), w_all.sum()),
                    "ratio_equal": ratio(q_all[mask].sum(), w_all[mask].sum())},
        "mean_direction": mean_direction_ratio(gram_w, gram_q),
        "per_pair": {"w": w_all.tolist(), "q": q_all.tolist(), "equal_length": mask.tolist()},
    }
