"""lm-evaluation-harness <-> cllm-bench, both ways.

1. **lm-eval drives, our decoders generate** (:mod:`.model`): the model type ``cllm-bench``
   (class :class:`CLLMBenchLM`) implements ``generate_until`` with any cllm-bench decoder::

       python -m cllm_bench.lm_eval_bridge --model cllm-bench \\
           --model_args pretrained=smollm2-135m,decoder=jacobi:n=16,max_gen_toks=256 --tasks gsm8k

   lm-eval (0.4.x) has no plugin discovery for model types: it only knows the models
   registered in its own process. Importing this package registers ``cllm-bench``;
   ``python -m cllm_bench.lm_eval_bridge ARGS`` does that and then runs lm-eval's own
   command line (``lm_eval ARGS``) unchanged. From Python, ``import
   cllm_bench.lm_eval_bridge`` before ``lm_eval.simple_evaluate(model="cllm-bench", ...)``.
   ``loglikelihood`` requests are refused: cllm-bench measures generation.

2. **cllm-bench drives, an lm-eval task supplies data, prompts and metrics** (:mod:`.tasks`):
   :func:`make_lm_eval_task` wraps any lm-eval *generation* task (``output_type:
   generate_until``) as a cllm-bench :class:`~cllm_bench.tasks.base.Task`, so
   ``cllm-bench run --tasks lm_eval:<task>`` measures our speed metrics on it. Prompts are
   the contexts lm-eval builds (few-shot examples included); scores are the task's own
   filters + ``process_results``; aggregates its aggregation functions.

Both sides tokenize, render chats and cut at stop strings as lm-eval's ``hf`` model does
(:mod:`.text`). Importing this package without lm-eval installed raises
:class:`~cllm_bench.errors.UserError` (import it lazily, when an ``lm_eval:`` task or the
model type is asked for).
"""

from __future__ import annotations

import sys

from cllm_bench.errors import UserError

MISSING_LM_EVAL = "lm_eval:<task> needs lm-eval: pip install 'cllm-bench[lm-eval]'"

try:
    import lm_eval  # noqa: F401
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models before ours: see get_model)
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise UserError(f"{MISSING_LM_EVAL} ({_err})") from None

from cllm_bench.lm_eval_bridge.model import LOGLIKELIHOOD_REFUSED, MODEL_NAME, CLLMBenchLM, GenerationStats, register
from cllm_bench.lm_eval_bridge.tasks import DEFAULT_FEWSHOT_SEED, LMEvalTask, load_lm_eval_task, make_lm_eval_task
from cllm_bench.lm_eval_bridge.text import cut_at_stops, encode_context, max_gen_tokens, render_chat, stop_sequences

__all__ = [
    "CLLMBenchLM",
    "DEFAULT_FEWSHOT_SEED",
    "GenerationStats",
    "LMEvalTask",
    "LOGLIKELIHOOD_REFUSED",
    "MISSING_LM_EVAL",
    "MODEL_NAME",
    "cut_at_stops",
    "encode_context",
    "load_lm_eval_task",
    "main",
    "make_lm_eval_task",
    "max_gen_tokens",
    "register",
    "render_chat",
    "stop_sequences",
]

register()


def main(argv: list[str] | None = None) -> None:
    """``python -m cllm_bench.lm_eval_bridge ARGS`` = ``lm_eval ARGS`` with ``cllm-bench`` registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv itself
    cli_evaluate()
