"""Named sets of lm-eval tasks for ``run_eval.py --lm-eval-tasks``: the paper's list and the offline suites.

``--lm-eval-tasks`` takes task names and these group names, mixed, comma-separated; :func:`expand_tasks` turns them
into task names (in order, each once). ``winogender`` is lm-eval's tag for its seven ``winogender_*`` tasks; the
local YAMLs clear their tags (``tag: []``, so built-in tags are left alone), so the tag is expanded here instead.
"""

from __future__ import annotations

from evaluation.lm_eval_offline import WINOGENDER_TASKS

# The paper's lm-eval tasks (Fair-GPTQ, zero-shot and bias). Offline, those without a copy in the shared folder
# (arc_easy, arc_challenge, hellaswag, xstorycloze_en, simple_cooccurrence_bias) are skipped with one line each.
PAPER_TASKS = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "openbookqa",
    "xstorycloze_en",
    "truthfulqa_mc2",
    "winogender",
    "bbq",
    "crows_pairs_english",
    "simple_cooccurrence_bias",
)
GROUPS = {
    "paper": PAPER_TASKS,
    "zeroshot-offline": ("piqa", "openbookqa", "boolq", "social_iqa", "truthfulqa_mc2"),
    "bias-offline": ("bbq", "winogender", "crows_pairs_english"),
}
TAGS = {"winogender": WINOGENDER_TASKS}
DEFAULT = "paper"


def expand_tasks(text: str | None) -> list[str]:
    """``"bias-offline,piqa"`` -> task names; groups and tags expanded, duplicates dropped, order kept.

    None or an empty text is the default group (the paper's tasks).
    """
    names = [name.strip() for name in (text or "").split(",") if name.strip()] or [DEFAULT]
    tasks = []
    for name in names:
        for member in GROUPS.get(name, (name,)):
            tasks.extend(TAGS.get(member, (member,)))
    return list(dict.fromkeys(tasks))
