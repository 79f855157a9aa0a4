"""Debiasing baselines that erase a concept from a causal LM's final hidden state: INLP and LEACE.

    data = fitting_data(calibration_pairs(None, "stereo-anti", max_pairs=256, seed=0), "stereo-anti")
    x = pooled_representations(model, tokenizer, data.sentences, prefix_id)   # (n, d), representations.py
    projection = fit_inlp(x, data.labels).projection                          # inlp.py (or fit_leace, leace.py)
    attach_eraser(model, load_eraser("eraser.pt"))                             # hook.py: applied at inference

The fitting command is `python evaluation/fit_eraser.py` (it loads models the way the evaluation does);
`python evaluation/run_eval.py --model fp-inlp=smollm2-135m --eraser fp-inlp=eraser.pt` evaluates with one.

Definition followed: bias-bench (McGill-NLP/bias-bench; Meade et al., 2022), read in
  * experiments/inlp_projection_matrix.py: fits one projection per bias type with `--n_classifiers` 80;
  * bias_bench/debias/inlp/context_nullspace_projection.py (`_extract_binary_features`,
    `_apply_nullspace_projection`, `compute_projection_matrix`): each sentence is encoded alone by the
    base model (`GPT2Model`), its `last_hidden_state` (after the final layer norm `ln_f`) is averaged over
    the sentence's tokens; the classifiers are `LinearSVC(fit_intercept=False, class_weight=None,
    dual=False, random_state=0)`, 80 of them, autoregressive (each trained on the data projected onto the
    nullspace of the previous ones), `min_accuracy` 0 (every classifier is kept);
  * bias_bench/debias/inlp/debias.py (`get_debiasing_projection`, `get_rowspace_projection`,
    `get_projection_to_intersection_of_nullspaces`): the final projection is I minus the projection onto
    the span of all classifier directions (the intersection of their nullspaces, Ben-Israel's formula);
  * bias_bench/model/models.py (`_INLPModel`, `INLPGPT2LMHeadModel`): at inference a forward hook on
    `model.transformer` replaces every position's `last_hidden_state` h by P h, i.e. the input of
    `lm_head`;
  * bias_bench/dataset/inlp.py (`load_inlp_data`): bias-bench's labels are the protected attribute
    (Wikipedia sentences with or without bias attribute words, e.g. male/female/neutral for gender).

What differs here, and why:
  * labels: the protected attribute cannot be read off StereoSet items, so the label of a sentence is
    stereotype (1) vs anti-stereotype (0) of each calibration pair (`--labels stereo-anti`), the concept
    that Fair-GPTQ's pair term targets. Controls: stereotype (1) vs the same item's unrelated sentence (0)
    (`unrelated`), and stereo-anti pairs whose label order is drawn at random per pair (`shuffled-labels`);
  * data: only the `calib` half of StereoSet dev (fair_gptq/split.py), the very pairs the quantizer
    calibrates on (the study's 256 pairs, seed 0); a pair set from any other part is refused
    (fitting_data.py). bias-bench splits its data 49/21/30 into train/dev/test and uses dev only to print
    accuracies (min_accuracy 0); here every classifier is trained on all fitting sentences (512 for 256 pairs)
    and a held-out accuracy is measured apart from the fit (diagnostics.py: pair-grouped cross-validation,
    the eraser refitted on each fold's training part);
  * location: the input of the output embeddings (`model.get_output_embeddings()`, found generically),
    which is bias-bench's place (GPT-2's `last_hidden_state` feeds `lm_head`) for every family: Llama's
    `model.norm` output, OPT's final layer norm (or `project_out`) output. The fitting reads the same tensor
    through the same kind of hook, with the scoring engine's input: a BOS prefix token (evaluation/scoring.py)
    then the sentence; the mean runs over the sentence's tokens as in bias-bench;
  * LEACE (Belrose et al., 2023) comes from EleutherAI's `concept-erasure` (`LeaceFitter`, defaults:
    affine, covariance shrinkage, trace constraint), fitted on the same representations and labels; it is
    an affine map h -> b + P (h - b).
"""
