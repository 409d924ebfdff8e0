"""cllm-bench: how much faster is decoding method X than autoregressive decoding on task Y,
and what does it cost in accuracy?

Public extension API (see docs/extending.md): decoders and tasks register by name.
"""

from cllm_bench.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
