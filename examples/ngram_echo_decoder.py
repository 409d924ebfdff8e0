"""ngram_echo: a complete out-of-tree cllm-bench decoder (walked through in docs/extending.md).

Guess: generated text repeats itself (lists, loops, code). Find the shortest period p
such that the last `ngram` output tokens also occurred p tokens earlier in the OUTPUT
(the prompt is never searched, unlike prompt lookup), and propose the next k tokens as
if the output keeps cycling with period p. The target checks `[x] + proposal` in ONE
forward; the longest prefix that agrees with its argmax predictions is kept, plus the
target's own next token, so the output is exactly greedy `ar`'s (lossless) with
1..k+1 tokens per forward.

    cllm-bench check-decoder ngram_echo --include examples/ngram_echo_decoder.py
    cllm-bench run --include examples/ngram_echo_decoder.py --decoders ar,ngram_echo:k=8
"""

from __future__ import annotations

from dataclasses import dataclass

from cllm_bench import Decoder, OutputBuffer, SingleEngine, Trace, register_decoder


def echo_proposal(output: list[int], ngram: int, k: int, max_period: int) -> list[int]:
    """Up to k tokens continuing `output` with the shortest period p <= max_period whose
    last `ngram` tokens repeat p tokens earlier; [] when there is none."""
    if k < 1:
        return []
    tail = output[-ngram:]
    for p in range(1, min(max_period, len(output) - ngram) + 1):
        if output[-ngram - p : -p] == tail:
            cycle = output[-p:]
            return [cycle[i % p] for i in range(k)]
    return []


def accept_greedy(proposal: list[int], predicted: list[int]) -> list[int]:
    """The longest prefix of `proposal` equal to the target's predictions, plus the
    target's next token. predicted[i] is the argmax after [x] + proposal[:i]."""
    n = 0
    while n < len(proposal) and proposal[n] == predicted[n]:
        n += 1
    return proposal[:n] + [predicted[n]]


@register_decoder("ngram_echo")
@dataclass
class NGramEchoDecoder(Decoder):
    """Propose k tokens by echoing the output's own period; verify them in one forward."""

    ngram: int = 2
    k: int = 8
    max_period: int = 32

    description = "echo the output's own repeating period, verified in one forward (lossless)"

    def __post_init__(self) -> None:
        if min(self.ngram, self.k, self.max_period) < 1:
            raise ValueError("ngram, k and max_period must be >= 1")

    def generate(self, engine: SingleEngine, prompt_ids: list[int], max_new_tokens: int, eos_ids: frozenset[int]) -> Trace:
        trace = Trace(prompt_len=len(prompt_ids))
        out = OutputBuffer(max_new_tokens, eos_ids)  # the shared stopping rule
        x = int(engine.prefill(prompt_ids).argmax())  # forward 1: the prompt
        trace.record("prefill", fed=len(prompt_ids), accepted=out.accept([x]))
        while not out.done:
            budget = min(self.k, out.remaining - 1)  # never verify tokens past the budget
            proposal = echo_proposal(out.tokens, self.ngram, budget, self.max_period)
            start = engine.length  # the cache holds prompt + output[:-1]; x is fed now
            logits = engine.forward(engine.ids_tensor([x] + proposal))
            accepted = accept_greedy(proposal, logits[0].argmax(dim=-1).tolist())
            engine.rollback(start + len(accepted))  # keep x + accepted proposals, drop the rest
            taken = out.accept(accepted)
            trace.record("target", fed=1 + len(proposal), accepted=taken, proposed=len(proposal))
            x = accepted[-1]
        return out.finish(trace)
