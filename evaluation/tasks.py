"""The evaluation tasks: data + scoring engine + metrics -> one result record per (model, task).

A record holds the point metrics and the per-item scores (log-likelihoods and token counts), so
intervals and paired comparisons between models can be computed later from the stored files
(:mod:`evaluation.report`) without touching a model again.
"""

from __future__ import annotations

from evaluation import metrics
from evaluation.data import CrowsPairsData, StereoSetEval, item_key
from evaluation.scoring import encode_document, paper_perplexity, score_sentences, window_perplexity

CROWS_SCORING = (
    "lm-eval crows_pairs_english: LL = sum of token log-probs of the sentence (no special tokens) "
    "after one BOS (else EOS) prefix token; pct_stereotype = mean[LL(sent_more) > LL(sent_less)]"
)
STEREOSET_SCORING = (
    "bias-bench intrasentence: sentence score = per-token geometric-mean probability exp(LL/n) after "
    "a BOS (else EOS) prefix; ties count as anti; SS/LMS per target term, macro-averaged per domain; "
    "ICAT from the means"
)
STEREOSET_VARIANT_SCORING = "same counting, sentence score = total log-likelihood LL (no length normalisation)"
WIKITEXT_SCORING = {
    "gptq": "GPTQ convention: rows joined with '\\n\\n', tokenized once, non-overlapping windows, exp(mean token NLL)",
    "paper": (
        "Fair-GPTQ paper ppl-eval.py: rows >= 512 chars joined with '', 1024-token windows with BOS first, "
        "tokens 513-1023 scored, mean of running perplexities"
    ),
}


def run_crows_pairs(lm, data: CrowsPairsData, max_items: int | None, batch_size: int, progress: bool = True) -> dict:
    pairs = data.pairs[:max_items] if max_items else data.pairs
    texts = [p.sent_more for p in pairs] + [p.sent_less for p in pairs]
    scores = score_sentences(lm.model, lm.tokenizer, texts, batch_size=batch_size, desc=f"{lm.name} crows_pairs",
                             progress=progress)
    more, less = scores[: len(pairs)], scores[len(pairs):]
    per_item = {
        "index": [p.index for p in pairs],
        "bias_type": [p.bias_type for p in pairs],
        "stereo_antistereo": [p.stereo_antistereo for p in pairs],
        "ll_more": [s.loglik for s in more],
        "ll_less": [s.loglik for s in less],
        "n_more": [s.n_tokens for s in more],
        "n_less": [s.n_tokens for s in less],
    }
    result = metrics.crows_pairs_metrics(per_item["ll_more"], per_item["ll_less"], per_item["bias_type"])
    result["scoring"] = CROWS_SCORING
    return {"metrics": result, "per_item": per_item, "data": {"source": data.source, "sha256": data.sha256,
                                                               "n_pairs": len(pairs)}}


STEREOSET_KINDS = ("stereotype", "anti_stereotype", "unrelated")


def geometric_mean_scores(per_item: dict, kind: str):
    """bias-bench sentence scores exp(LL/n) of one sentence kind from stored per-item columns."""
    return metrics.stereoset_sentence_scores(per_item[f"ll_{kind}"], per_item[f"n_{kind}"])


def stereoset_metrics_from_items(per_item: dict) -> dict:
    """bias-bench figures (geometric-mean scores) plus the named total-LL variant."""
    geo = {kind: geometric_mean_scores(per_item, kind) for kind in STEREOSET_KINDS}
    targets, types = per_item["target"], per_item["bias_type"]
    main = metrics.stereoset_metrics(geo["stereotype"], geo["anti_stereotype"], geo["unrelated"], targets, types)
    variant = metrics.stereoset_metrics(
        per_item["ll_stereotype"], per_item["ll_anti_stereotype"], per_item["ll_unrelated"], targets, types
    )
    return {"domains": main, "scoring": STEREOSET_SCORING,
            "variants": {"total_loglik": {"domains": variant, "scoring": STEREOSET_VARIANT_SCORING}}}


def run_stereoset(lm, data: StereoSetEval, max_items: int | None, batch_size: int, progress: bool = True) -> dict:
    items = data.items[:max_items] if max_items else data.items
    texts = [getattr(item, kind) for kind in STEREOSET_KINDS for item in items]
    scores = score_sentences(lm.model, lm.tokenizer, texts, batch_size=batch_size, desc=f"{lm.name} stereoset",
                             progress=progress)
    per_item = {"key": [item_key(it) for it in items], "id": [it.id for it in items],
                "target": [it.target for it in items],
                "bias_type": [it.bias_type for it in items]}
    for k, kind in enumerate(STEREOSET_KINDS):
        chunk = scores[k * len(items):(k + 1) * len(items)]
        per_item[f"ll_{kind}"] = [s.loglik for s in chunk]
        per_item[f"n_{kind}"] = [s.n_tokens for s in chunk]
    split = dict(data.split, n_items_evaluated=len(items))
    return {"metrics": stereoset_metrics_from_items(per_item), "per_item": per_item, "data": split}


def run_wikitext2(lm, text: str, protocol: str, seqlen: int, max_windows: int | None, source: str,
                  progress: bool = True) -> dict:
    """``text``: the joined test rows (gptq) or the paper's corpus (paper); ``seqlen`` already capped."""
    desc = f"{lm.name} wikitext2"
    if protocol == "paper":
        out = paper_perplexity(lm.model, lm.tokenizer, text, n_ctx=seqlen, max_windows=max_windows, desc=desc,
                               progress=progress)
    else:
        out = window_perplexity(lm.model, encode_document(lm.tokenizer, text), seqlen, max_windows, desc=desc,
                                progress=progress)
    window_nll = out.pop("window_nll")
    out.update(protocol=protocol, scoring=WIKITEXT_SCORING[protocol])
    return {"metrics": out, "per_item": {"window_nll": window_nll}, "data": {"source": source}}
