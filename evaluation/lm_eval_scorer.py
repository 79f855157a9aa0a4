"""A faster lm-eval scorer for multiple-choice tasks: each context is computed once and shared by its continuations.

lm-eval's ``HFLM`` runs every (context, continuation) request through the model whole, so a question with 12
answers (BBQ) computes its context 12 times. On a CPU scoring runs at bare-forward speed, and a forward call costs a
fixed ~0.1 s (SmolLM2-135M reads its weights once per call) plus a cost per token, so tokens not computed, and calls
not made, are the levers. :class:`SharedContextHFLM` is ``HFLM`` with one change, in how ``loglikelihood`` requests
are run: requests with the same context tokens form a group, and each group becomes one input row (:func:`pack_rows`):
the tokens all its sequences start with (the context, plus the start its continuations have in common: PIQA's two
solutions often share words), computed once, then each continuation's remaining tokens. A 4-D attention mask lets
each continuation see the shared start and itself only, and position ids restart after the shared start, so every
continuation is computed exactly as if it followed the context alone: the same keys, values and positions as in
HFLM's input, without the copies. This is the model's KV cache for the shared context by other means: one forward
call per ``batch_size`` rows, and no cache to copy per continuation. One level up, groups whose contexts begin
with the same tokens (a few-shot preamble: TruthfulQA's six questions and answers, 164 tokens before each question)
share that prefix in one row, each group's block seeing the prefix and itself only (:func:`cluster_groups`).

Everything else is HFLM's own code: tokenization (``TemplateLM.loglikelihood`` and ``_encode_pair``, so contexts,
continuations and the prefix token are HFLM's exactly), the log-softmax dtype, autocast, the sum of the
continuation's log-probs and the greedy check; per-request results equal HFLM's to float rounding
(tests/test_mc_scorer.py). HFLM's own path is kept for ``loglikelihood_rolling`` (perplexity windows), requests
with an empty context (CrowS-Pairs: the only shared token is the BOS prefix), a context no other request shares,
and requests HFLM would truncate on the left. A model on which the packed rows do not reproduce HFLM on a few probe
requests (one that ignores 4-D masks or position ids) is refused when the scorer is built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

# The start-up check: the largest |log-likelihood difference| from HFLM on four short probe requests. float32 agrees
# to ~1e-5; 16-bit activations round at ~1e-2 per token; ignored masks or positions are off by far more.
_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
_CHECK_TOLERANCE_16BIT = 0.1
# A row holds as many of a group's continuations as fit in this many tokens (one at least): the logits and the
# 4-D mask of a batch grow with its width, and a row longer than any single request costs memory HFLM would not use.
MAX_ROW_TOKENS = 1024
# Groups whose contexts begin with at least this many equal tokens share them in one row: a few-shot preamble
# (TruthfulQA's: 164 tokens). Shorter common starts cost more than they save: at 32, BBQ's passages joined their
# disambiguated versions in long, unevenly padded rows (50 documents: 5,636 tokens computed instead of 5,152).
MIN_SHARED_PREFIX = 128

Request = tuple  # ((context, continuation) | None, context tokens, continuation tokens), as HFLM receives them


@dataclass
class SharePlan:
    """Which requests share a computed context, and which go to HFLM's own code."""

    groups: list[list[int]]  # request indices with the same context tokens (two or more each)
    fallback: list[int]  # request indices scored by HFLM


def plan_sharing(requests: list[Request], max_length: int) -> SharePlan:
    """Group the requests by context tokens; empty contexts, lone contexts and truncated requests fall back."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    fallback = []
    for i, (strings, context, continuation) in enumerate(requests):
        empty_context = strings is None or strings[0] == ""
        # HFLM keeps the last max_length + 1 tokens; a longer request is left-truncated there, differently per choice
        too_long = len(context) + len(continuation) > max_length + 1
        if empty_context or not continuation or too_long:
            fallback.append(i)
        else:
            by_context.setdefault(tuple(context), []).append(i)
    groups = [members for members in by_context.values() if len(members) > 1]
    fallback += [members[0] for members in by_context.values() if len(members) == 1]
    return SharePlan(groups, sorted(fallback))


def shared_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence has in common, leaving each at least its last token as the target."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


@dataclass
class Block:
    """One group's part of a row: its sequences' start after the row's common prefix, then some of its tails.
    Indices are row indices."""

    n_context: int  # just past the group's context: its first continuation token is predicted at n_context - 1
    shared: int  # just past the group's shared start (context plus the start its continuations have in common)
    tails: list[tuple[int, int, int]]  # (request index, first row index, length)


@dataclass
class Row:
    """One model input: a prefix common to its groups' contexts, then one block per group (:class:`Block`).

    A block attends to the prefix and its own start; each tail to those and to itself. Positions run on from the
    prefix through the block's start and restart after it for each tail: to the model each tail is its request's
    own continuation, as if the row held that request alone.
    """

    tokens: list[int]
    positions: list[int]
    block: list[int]  # 0: the common prefix; b >= 1: the b-th block
    segment: list[int]  # 0: the prefix or a block's start; k >= 1: the block's k-th tail
    blocks: list[Block]


def cluster_groups(requests: list[Request], groups: list[list[int]], min_prefix: int) -> list[tuple[int, list]]:
    """[(prefix length, groups)]: groups whose contexts begin with the same ``min_prefix`` tokens or more (a
    few-shot preamble: TruthfulQA's six questions and answers) share that prefix; other groups stand alone (0).

    The prefix stops one token short of the shortest context, so that every block predicts its first continuation
    token from a token of its own."""
    ordered = sorted(groups, key=lambda members: list(requests[members[0]][1]))  # shared prefixes are neighbours
    clusters: list[tuple[int, list]] = []
    for members in ordered:
        context = requests[members[0]][1]
        if clusters:
            prefix, cluster = clusters[-1]
            first = requests[cluster[0][0]][1]
            # shared_length leaves both contexts a token of their own; a cluster's prefix only shrinks as it grows
            joined = min(shared_length([first, context]), prefix or len(first))
            if joined >= min_prefix:
                clusters[-1] = (joined, cluster + [members])
                continue
        clusters.append((0, [members]))
    return [(prefix if len(cluster) > 1 else 0, cluster) for prefix, cluster in clusters]


def pack_rows(requests: list[Request], groups: list[list[int]], max_tokens: int, prefix: int = 0) -> list[Row]:
    """Rows for ``groups`` (each: requests with the same context) whose contexts start with the same ``prefix``
    tokens: the prefix once per row, then per group a block of its start and as many of its tails as fit in
    ``max_tokens`` (one at least); a group that does not fit goes on in a new row, which repeats the prefix."""
    rows: list[Row] = []
    for members in groups:
        sequences = [list(requests[i][1]) + list(requests[i][2]) for i in members]
        shared = shared_length(sequences)  # >= the context length: every sequence starts with the context
        n_context = len(requests[members[0]][1])
        # a block predicts its first continuation token from a context token of its own (cluster_groups' rule)
        assert prefix < n_context, f"a common prefix of {prefix} tokens leaves a {n_context}-token context nothing"
        block = None
        for i, sequence in zip(members, sequences, strict=True):
            tail = sequence[shared:-1]  # HFLM's input is (context + continuation)[:-1]
            start = sequence[prefix:shared]
            if block is None or len(rows[-1].tokens) + len(tail) > max_tokens:
                if block is not None or not rows or len(rows[-1].tokens) + len(start) + len(tail) > max_tokens:
                    rows.append(Row(sequence[:prefix], list(range(prefix)), [0] * prefix, [0] * prefix, []))
                row = rows[-1]
                first = len(row.tokens)
                block = Block(first + n_context - prefix, first + shared - prefix, [])
                row.blocks.append(block)
                row.tokens += start
                row.positions += range(prefix, shared)
                row.block += [len(row.blocks)] * len(start)
                row.segment += [0] * len(start)
            row = rows[-1]
            block.tails.append((i, len(row.tokens), len(tail)))
            row.tokens += tail
            row.positions += range(shared, shared + len(tail))
            row.block += [len(row.blocks)] * len(tail)
            row.segment += [len(block.tails)] * len(tail)
    return rows


def first_prediction(row: Row) -> int:
    """The first row index whose logits are needed: the earliest block's last context token."""
    return min(block.n_context for block in row.blocks) - 1


def kept_positions(rows: list[Row]) -> int:
    """How many trailing positions of a right-padded batch of ``rows`` keep their logits: from the earliest
    position any row needs to the batch's width."""
    return max(len(row.tokens) for row in rows) - min(first_prediction(row) for row in rows)


def batch_rows(rows: list[Row], batch_size: int, max_logits: int | None = None) -> list[list[Row]]:
    """Rows sorted longest first -> batches of at most ``batch_size`` rows, no row more than half padding, and at
    most ``max_logits`` logit positions kept in all (default: ``batch_size`` * 128).

    A packed row holds all of a question's choices, so row lengths vary more than HFLM's requests do (PIQA: one
    row of 231 tokens among rows of ~60); a fixed count per batch would mostly compute padding. The logits cap
    bounds memory (Gemma 3's 262,144-token vocabulary: 1 MiB per kept position): a row whose blocks share a
    few-shot prefix keeps the logits of most of its tokens.
    """
    max_logits = max_logits or batch_size * 128
    batches: list[list[Row]] = []
    for row in rows:
        if batches:
            batch = batches[-1]
            fits = len(batch) < batch_size and 2 * len(row.tokens) >= len(batch[0].tokens)
            if fits and (len(batch) + 1) * kept_positions(batch + [row]) <= max_logits:
                batch.append(row)
                continue
        batches.append([row])
    return batches


def attention_mask(rows: list[Row], width: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The 4-D additive mask (0 = attend, dtype min = not) of right-padded rows: causal; every token sees the
    common prefix, a block's tokens see its start, a tail sees itself. A pad sees only itself (an all-masked query
    would turn its values into NaN)."""
    block = torch.full((len(rows), width), -1, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        block[r, :len(row.tokens)] = torch.tensor(row.block, dtype=torch.long)
        segment[r, :len(row.tokens)] = torch.tensor(row.segment, dtype=torch.long)
    qb, kb = block[:, :, None], block[:, None, :]
    qs, ks = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    prefix = (kb == 0) & (qb >= 0)
    own_block = (qb == kb) & (qb > 0) & ((ks == 0) | (ks == qs))
    allowed = (causal & (prefix | own_block)) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None].to(device)


@register_model("hf-shared-context")
class SharedContextHFLM(HFLM):
    """HFLM whose ``loglikelihood`` computes each shared context once (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.backend != "causal":
            raise ValueError("the shared-context scorer is for causal LMs; use --lm-eval-scorer hflm")
        if not isinstance(self.batch_size, int):
            raise ValueError(f"the shared-context scorer needs a fixed batch size, not {self.batch_size!r}")
        self._sharing = False
        self._keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.stats = {"requests_shared": 0, "requests_hflm": 0, "contexts": 0, "rows": 0}
        self._check_model()

    # ------------------------------------------------------------------ lm-eval API

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        # HFLM/TemplateLM tokenize, then call _loglikelihood_tokens; only this route shares contexts.
        self._sharing = True
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._sharing = False

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if not self._sharing:  # loglikelihood_rolling's windows: HFLM's code
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        plan = plan_sharing(requests, self._shared_max_length())
        results: list = [None] * len(requests)
        if plan.fallback:
            scored = super()._loglikelihood_tokens([requests[i] for i in plan.fallback], disable_tqdm=True)
            for i, answer in zip(plan.fallback, scored, strict=True):
                results[i] = answer
        for i, answer in self._score_shared(requests, plan.groups, disable_tqdm).items():
            results[i] = answer
            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)  # as HFLM does
        self.stats["requests_hflm"] += len(plan.fallback)
        self.stats["requests_shared"] += len(requests) - len(plan.fallback)
        self.stats["contexts"] += len(plan.groups)
        return results

    # ------------------------------------------------------------------ scoring

    def _shared_max_length(self) -> int:
        """The longest input the shared path takes. The 4-D mask replaces the model's own, sliding window included
        (Mistral, Gemma): within the window the two agree; a longer request goes to HFLM."""
        window = getattr(self.model.config, "sliding_window", None)
        return min(self.max_length, window) if isinstance(window, int) and window > 0 else self.max_length

    def _score_shared(self, requests: list[Request], groups: list[list[int]], disable_tqdm: bool = True,
                      min_prefix: int | None = None) -> dict[int, tuple[float, bool]]:
        """{request index: (log-likelihood, is_greedy)} for groups of requests with the same context; groups whose
        contexts share ``min_prefix`` (default :data:`MIN_SHARED_PREFIX`) leading tokens or more share them too
        (:func:`cluster_groups`)."""
        min_prefix = MIN_SHARED_PREFIX if min_prefix is None else min_prefix
        # A row no longer than the sliding window: Gemma 3 applies its window by distance within the row, on top of
        # the 4-D mask, so a longer row would hide the shared context from the later tails.
        max_tokens = min(self._shared_max_length(), MAX_ROW_TOKENS)
        rows = [row for prefix, cluster in cluster_groups(requests, groups, min_prefix)
                for row in pack_rows(requests, cluster, max_tokens, prefix)]
        rows.sort(key=lambda row: -len(row.tokens))  # HFLM also sorts longest first: similar widths, less padding
        answers = {}
        progress = tqdm(total=len(rows), disable=disable_tqdm or self.rank != 0, desc="Scoring shared contexts")
        for batch in batch_rows(rows, self.batch_size):
            progress.update(len(batch))
            logp, offset = self._run_rows(batch)
            for row, row_logp in zip(batch, logp, strict=True):
                for block in row.blocks:
                    # position t predicts token t + 1: the first continuation token is predicted at n_context - 1
                    from_shared = row_logp[block.n_context - 1 - offset:block.shared - offset]
                    for i, first, length in block.tails:
                        own = torch.cat([from_shared, row_logp[first - offset:first + length - offset]])
                        answers[i] = self._answer(own, requests[i][2])
        progress.close()
        self.stats["rows"] += len(rows)
        return answers

    def _run_rows(self, rows: list[Row]) -> tuple[list[torch.Tensor], int]:
        """Per row, the log-probs of the positions from the first that predicts a continuation token on, and the
        row index of their index 0."""
        width = max(len(row.tokens) for row in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # 0-padded on the right, as HFLM pads
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            positions[r, :len(row.tokens)] = torch.tensor(row.positions, dtype=torch.long)
        keep = kept_positions(rows)  # no continuation is predicted before that
        extra = {"logits_to_keep": keep} if self._keep_logits else {}
        mask = attention_mask(rows, width, self.model.dtype, self.device)
        # HFLM._model_call's context: no gradients, its optional autocast
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            logits = self.model(ids.to(self.device), attention_mask=mask, position_ids=positions.to(self.device),
                                use_cache=False, **extra).logits
        # one row at a time: a second batch-sized tensor of log-probs would double the peak memory
        return [F.log_softmax(row_logits[-keep:], dim=-1, dtype=self.softmax_dtype) for row_logits in logits], \
            width - keep

    def _answer(self, logp: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
        """(sum of the continuation's log-probs, whether each token is the argmax), as HFLM computes them."""
        target = torch.tensor(continuation, dtype=torch.long, device=self.device)
        greedy = bool((logp.argmax(dim=-1) == target).all())
        return float(torch.gather(logp, 1, target.unsqueeze(-1)).sum()), greedy

    def _check_model(self) -> None:
        """Refuse, before any task runs, a model on which the packed rows do not give HFLM's numbers (one that
        ignores 4-D attention masks or position ids)."""
        t = self.tok_encode("The check scores two contexts and their endings, packed and one by one.")
        t = (t + [self.prefix_token_id] * 10)[:10]
        # first context: three endings, two of them with tails (their positions and masks matter); second: endings
        # with a common first token (it joins the shared start)
        probe = [(("p", "a"), t[:5], t[5:8]), (("p", "b"), t[:5], [t[8], t[9], t[2], t[3]]),
                 (("p", "c"), t[:5], t[1:2]), (("p", "d"), t[:2], t[2:4]), (("p", "e"), t[:2], [t[2], t[4], t[5]])]
        want = super()._loglikelihood_tokens(probe, disable_tqdm=True)
        # each context in its own rows, then both in one row sharing their first token as a common prefix
        got = [self._score_shared(probe, [[0, 1, 2], [3, 4]], min_prefix=min_prefix) for min_prefix in (len(t), 1)]
        self.stats["rows"] = 0
        diff = max(abs(want[i][0] - answers[i][0]) for answers in got for i in range(len(probe)))
        tolerance = _CHECK_TOLERANCE.get(self.model.dtype, _CHECK_TOLERANCE_16BIT)
        if not diff <= tolerance:
            raise ValueError(f"the shared-context scorer does not reproduce HFLM on this model (log-likelihoods "
                             f"differ by {diff:.3g} > {tolerance}); use --lm-eval-scorer hflm")
