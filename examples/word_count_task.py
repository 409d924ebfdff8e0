"""word_count: a complete out-of-tree cllm-bench task (walked through in docs/extending.md).

"How many words are in this sentence?" -- scored by the last number in the answer.
Data: `<--data-dir>/word_count/test.jsonl` (one {"id": ..., "sentence": ...} per line)
when a data directory is given, else the built-in sentences below; the file is written
by `python examples/word_count_task.py DIR`.

    cllm-bench run --include examples/word_count_task.py --tasks word_count --decoders ar,jacobi
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from cllm_bench import DataError, Sample, Task, encode_chat, encode_raw, read_jsonl, register_task

SENTENCES = (
    "The cat sat on the mat.",
    "Fast decoding keeps the output exactly the same.",
    "Jacobi iterations converge to the greedy answer.",
    "One two three four five six seven.",
    "Speculative decoding drafts and then verifies.",
    "Tokens per second is the number people quote.",
)


@register_task("word_count")
class WordCount(Task):
    """Count the words of a sentence; accuracy = share of exact counts."""

    description = "count the words of a sentence (example plugin task)"
    default_max_new_tokens = 16

    def samples(self, limit: int | None = None) -> list[Sample]:
        if self.options.data_dir is None:
            records = [{"id": str(i), "sentence": s} for i, s in enumerate(SENTENCES)]
        else:
            path = Path(self.options.data_dir) / "word_count" / "test.jsonl"
            if not path.is_file():
                raise DataError(f"word_count: {path} is missing; write it with `python {__file__} DIR`")
            records = read_jsonl(path, required=("id", "sentence"))
        return [Sample(id=f"word_count/{r['id']}", data=r) for r in records[:limit]]

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        question = f'How many words are in this sentence? "{sample.data["sentence"]}" Answer with a number.'
        if self.use_chat(tokenizer):  # chat template when the tokenizer has one (--prompt-style)
            return encode_chat(tokenizer, [{"role": "user", "content": question}])
        return encode_raw(tokenizer, f"Question: {question}\nAnswer:")

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        gold = len(sample.data["sentence"].split())
        numbers = re.findall(r"\d+", completions[0] if completions else "")
        pred = int(numbers[-1]) if numbers else None
        return {"correct": pred == gold, "pred": pred, "gold": gold}

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        return {"accuracy": sum(s["correct"] for s in scores) / n if n else None, "n": n}


def write_data(data_dir: str) -> Path:
    """Write the built-in sentences as `<data_dir>/word_count/test.jsonl`."""
    path = Path(data_dir) / "word_count" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": str(i), "sentence": s}) for i, s in enumerate(SENTENCES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_data(sys.argv[1] if len(sys.argv) > 1 else "data"))
