"""GSM8K: grade-school math word problems, exact match of the final number.

Data: ``<data_dir>/gsm8k/<split>.jsonl`` (test: 1319, train: 7473 lines; fields
``question`` and ``answer``, the answer ending in ``#### N``). Without a data dir the HF
hub copy is used through ``datasets`` when that package is installed.

Prompts (task argument ``prompt``; default "zeroshot" for models with a chat template,
"8shot" otherwise):

* ``zeroshot``: ask to reason step by step and end with "The answer is N." (chat
  template; a plain "Question: ... Answer:" text for models without one);
* ``8shot``: the 8 chain-of-thought exemplars of Wei et al. (2022) as used by
  lm-evaluation-harness ``gsm8k_cot`` ("Q: ...\\nA: ... The answer is N.\\n\\n"); raw
  text for base models, one user/assistant turn per exemplar for chat models;
* ``abel``: the CLLM reference prompt "Question:\\n{q}\\nAnswer:\\nLet's think step by
  step.\\n" (raw text), which the CLLM GSM8K checkpoints were trained on.

Scoring: the strict prediction is the number after the last "#### " (else after the last
"The answer is"); the flexible prediction is the last number in the text. Both are
normalised (commas, "$", a trailing period and trailing zero decimals removed) and
compared with the gold number as strings. **accuracy = flexible exact match** (it also
credits answers that follow the reasoning but not the format); ``accuracy_strict`` is
reported next to it.
"""

from __future__ import annotations

import re
from typing import Any

from cllm_bench.errors import DataError
from cllm_bench.registry import register_task
from cllm_bench.tasks.base import Sample, Task, TaskArg, encode_chat, encode_raw
from cllm_bench.tasks.data_files import choice_option, cut_at_first, data_file, read_jsonl

PROMPT_STYLES = ("zeroshot", "8shot", "abel")
SPLITS = ("test", "train")

#: Wei et al. (2022) chain-of-thought exemplars, as in lm-evaluation-harness gsm8k-cot.yaml
FEWSHOT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
        "So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
        "How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, "
        "from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
)

ZEROSHOT_INSTRUCTION = (
    "Solve the following math problem step by step. At the end, write the final answer "
    'on its own line as "The answer is N." where N is a number.'
)

#: where a base model's answer ends and it starts inventing the next question
STOP_STRINGS: tuple[str, ...] = ("\n\nQ:", "\nQ:", "\n\nQuestion:", "\nQuestion:")

_NUMBER = r"-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_STRICT_HASH = re.compile(rf"####\s*({_NUMBER})")
_STRICT_SENTENCE = re.compile(rf"[Tt]he (?:final )?answer is[:\s]*\**\s*({_NUMBER})")
_ANY_NUMBER = re.compile(_NUMBER)


# --- answers (pure functions) ----------------------------------------------------------

def normalize_number(text: str) -> str:
    """Canonical string of a number: no spaces, "$" or thousands commas, no trailing
    period, no trailing zero decimals ("1,000.00" -> "1000", "-$5.50" -> "-5.5")."""
    value = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    if value in ("", "-"):
        return value
    sign = "-" if value.startswith("-") else ""
    digits = value.lstrip("-")
    whole, dot, frac = digits.partition(".")
    whole = whole.lstrip("0") or "0"
    result = sign + whole + (dot + frac if frac else "")
    return "0" if result == "-0" else result


def extract_strict(text: str) -> str | None:
    """The number after the last "#### ", else after the last "The answer is"; normalised."""
    for pattern in (_STRICT_HASH, _STRICT_SENTENCE):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    return None


def extract_flexible(text: str) -> str | None:
    """The last number in ``text``, normalised; None when there is none."""
    matches = _ANY_NUMBER.findall(text)
    return normalize_number(matches[-1]) if matches else None


def gold_answer(answer: str) -> str:
    """The normalised number after "####" in a GSM8K reference answer."""
    return normalize_number(answer.split("####")[-1])


def score_completion(completion: str, gold: str) -> dict[str, Any]:
    """Strict and flexible exact match of ``completion`` against the normalised ``gold``."""
    text = cut_at_first(completion, STOP_STRINGS)  # drop the next invented question
    strict, flexible = extract_strict(text), extract_flexible(text)
    return {
        "correct_strict": strict == gold,
        "correct_flexible": flexible == gold,
        "pred_strict": strict,
        "pred_flexible": flexible,
        "gold": gold,
    }


# --- prompts (pure functions) ----------------------------------------------------------

def fewshot_text(question: str) -> str:
    """The 8-shot chain-of-thought prompt for a base model, ending in "A:"."""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in FEWSHOT_EXEMPLARS)
    return f"{shots}Q: {question}\nA:"


def fewshot_messages(question: str) -> list[dict[str, str]]:
    """The 8-shot prompt as a multi-turn chat (one user/assistant pair per exemplar)."""
    messages: list[dict[str, str]] = []
    for q, a in FEWSHOT_EXEMPLARS:
        messages += [{"role": "user", "content": f"Q: {q}"}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": f"Q: {question}"}]


def zeroshot_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{ZEROSHOT_INSTRUCTION}\n\n{question}"}]


def zeroshot_text(question: str) -> str:
    return f"{ZEROSHOT_INSTRUCTION}\n\nQuestion: {question}\nAnswer: Let's think step by step."


def abel_text(question: str) -> str:
    """The CLLM reference (Abel) prompt."""
    return f"Question:\n{question}\nAnswer:\nLet's think step by step.\n"


# --- the task --------------------------------------------------------------------------

def _load_from_hub(split: str) -> list[dict[str, Any]]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            "gsm8k: no data directory given and the `datasets` package is not installed; "
            "pass --data-dir pointing to a folder with gsm8k/test.jsonl"
        ) from None
    try:
        return [dict(r) for r in datasets.load_dataset("gsm8k", "main", split=split)]
    except Exception as err:  # offline, hub error: one message naming the fix
        raise DataError(
            f"gsm8k: loading from the Hugging Face hub failed ({err}); "
            "pass --data-dir pointing to a folder with gsm8k/test.jsonl"
        ) from None


@register_task("gsm8k")
class GSM8K(Task):
    """GSM8K exact match; accuracy is the flexible (last number) match."""

    description = "GSM8K: 1319 math word problems, exact match of the final number (strict and flexible)"
    requires_execution = False
    default_max_new_tokens = 256
    accepted_args = {"split": TaskArg(SPLITS), "prompt": TaskArg(PROMPT_STYLES)}

    def samples(self, limit: int | None = None) -> list[Sample]:
        split = choice_option(self.options.extra, "split", "test", SPLITS, "gsm8k")
        if self.options.data_dir is None:
            records = _load_from_hub(split)
        else:
            path = data_file(self.options.data_dir, f"gsm8k/{split}.jsonl", "gsm8k")
            records = read_jsonl(path, required=("question", "answer"))
        if limit is not None:
            records = records[:limit]
        return [
            Sample(
                id=f"gsm8k/{split}/{i}",
                data={"question": r["question"], "answer": r["answer"], "gold": gold_answer(r["answer"])},
            )
            for i, r in enumerate(records)
        ]

    def prompt_style(self, tokenizer: Any) -> str:
        """The prompt kind: the ``prompt`` task argument, else by chat template."""
        default = "zeroshot" if self.use_chat(tokenizer) else "8shot"
        return choice_option(self.options.extra, "prompt", default, PROMPT_STYLES, "gsm8k")

    def prompt_ids(self, sample: Sample, tokenizer: Any, previous_answers: list[str] | None = None) -> list[int]:
        question = sample.data["question"]
        kind, chat = self.prompt_style(tokenizer), self.use_chat(tokenizer)
        if kind == "abel":
            return encode_raw(tokenizer, abel_text(question))
        if kind == "8shot":
            return encode_chat(tokenizer, fewshot_messages(question)) if chat else encode_raw(tokenizer, fewshot_text(question))
        return encode_chat(tokenizer, zeroshot_messages(question)) if chat else encode_raw(tokenizer, zeroshot_text(question))

    def stop_strings(self, sample: Sample) -> list[str]:
        return list(STOP_STRINGS)

    def reference_answer(self, sample: Sample, tokenizer: Any) -> str | None:
        """The reference solution with its calculator annotations (``<<48/2=24>>``) removed
        and ``#### N`` written as the sentence every prompt style asks for, "The answer is N."."""
        answer = sample.data.get("answer")
        if answer is None:
            return None
        reasoning, _, _ = re.sub(r"<<[^>]*>>", "", answer).rpartition("####")
        return f"{reasoning.strip()}\nThe answer is {sample.data['gold']}."

    def score(self, sample: Sample, completions: list[str]) -> dict[str, Any]:
        return score_completion(completions[0] if completions else "", sample.data["gold"])

    def aggregate(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        if n == 0:
            return {"accuracy": None, "accuracy_strict": None, "accuracy_flexible": None, "n": 0}
        strict = sum(bool(s["correct_strict"]) for s in scores) / n
        flexible = sum(bool(s["correct_flexible"]) for s in scores) / n
        return {"accuracy": flexible, "accuracy_strict": strict, "accuracy_flexible": flexible, "n": n}
