"""Evaluation tasks: one file per task, registered by name in :data:`cllm_bench.registry.TASKS`."""
