"""``python -m cllm_bench.lm_eval_bridge ARGS``: lm-eval's command line with ``cllm-bench``
registered (the package is imported under its own name first, so the class lm-eval finds
is :class:`cllm_bench.lm_eval_bridge.CLLMBenchLM`)."""

from __future__ import annotations

from cllm_bench.lm_eval_bridge import main

main()
