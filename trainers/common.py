"""What every trainer shares, one module per concern, re-exported here so that trainers and
plugins keep writing ``common.X``:

* :mod:`~cllm_bench.trainers.data` — data sources -> :class:`Example` (task prompts through the
  task objects, JSONL files, trajectories folders), gold answers, supervised sequence items;
* :mod:`~cllm_bench.trainers.batching` — batch tensors (labels, shifted CE, padding
  collator), the target's greedy answers sharded over processes, hidden states;
* :mod:`~cllm_bench.trainers.loop` — the Accelerator, optimiser, cosine schedule, the
  resumable training loop (``fit``) and its progress record;
* :mod:`~cllm_bench.trainers.checkpoint` — HF checkpoint, manifest, throughput, and the check
  that trajectories belong to the model being trained.
"""

from __future__ import annotations

from cllm_bench.engines.batch import pad_batch  # noqa: F401  (trainers pad with common.pad_batch)
from cllm_bench.trainers.data import (  # noqa: F401
    SOURCE_NAMES,
    TASK_SOURCES,
    TRAJECTORY_FILE,
    CODE_CHAT,
    CHAT_RAW,
    CODE_PROMPTS,
    Example,
    use_chat_template,
    encode_prompt,
    encode_answer,
    answer_eos_id,
    read_jsonl,
    read_json,
    data_path,
    require_tokenizer,
    code_examples,
    mt_bench_examples,
    jsonl_example,
    file_examples,
    read_trajectories,
    trajectory_examples,
    load_examples,
    task_samples,
    task_examples,
    sequence_items,
    gold_answers,
)
from cllm_bench.trainers.batching import (  # noqa: F401
    answer_labels,
    shifted_cross_entropy,
    pad_token_id,
    greedy_answers,
    shard,
    gather_lists,
    model_answers,
    final_hidden,
    place_frozen,
    SequenceCollator,
)
from cllm_bench.trainers.loop import (  # noqa: F401
    STATE_DIR,
    resolve_mixed_precision,
    make_accelerator,
    load_for_training,
    TrainSettings,
    settings_from_args,
    TrainProgress,
    make_optimizer,
    cosine_schedule,
    epoch_loader,
    progress_bar,
    fit,
    run_epoch,
    save_training_state,
)
from cllm_bench.trainers.checkpoint import (  # noqa: F401
    MANIFEST_FILE,
    check_trajectories_match,
    model_fingerprint,
    throughput,
    save_hf_checkpoint,
    peak_gpu_memory_gib,
    cast_state_dict,
    package_versions,
    write_manifest,
    settings_summary,
)
