"""A task object from the name a user types: a registered task (``humaneval``, ...) or
``lm_eval:<task>``, any lm-evaluation-harness generation task through the bridge.

The one place this name resolution lives (the runner and ``cllm-bench score`` both use it).
"""

from __future__ import annotations

from cllm_bench.registry import TASKS
from cllm_bench.tasks.base import Task, TaskOptions

#: the prefix that names an lm-evaluation-harness task
LM_EVAL_PREFIX = "lm_eval:"


def build_task(name: str, options: TaskOptions) -> Task:
    """The task called ``name`` with ``options`` (the bridge and lm-eval are imported only
    for an ``lm_eval:`` name)."""
    if name.startswith(LM_EVAL_PREFIX):
        from cllm_bench.lm_eval_bridge import make_lm_eval_task

        return make_lm_eval_task(name[len(LM_EVAL_PREFIX) :], options)
    return TASKS.get(name)(options)
