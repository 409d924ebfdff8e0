"""Evaluation tasks: one file per task, registered by name in :data:`cllm_bench.registry.TASKS`;
besides them the task contract (``base``), data-file helpers (``data_files``), task
templates (``template``) and Spider's SQL comparison (``sql_compare``)."""
