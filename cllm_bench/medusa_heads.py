"""Medusa-1 heads (Cai et al. 2024): extra next-next-token predictors on a frozen base model.

Head h (h = 0..H-1) reads the base model's last hidden state at position t (after the
final norm, the input of ``lm_head``) and predicts the token at position t + h + 2
(the base model's own head predicts t + 1)::

    y_h = W_h · block_h(x),   block = num_layers x (x + SiLU(Linear(x)))

``W_h``: [V, H] without bias; the residual ``Linear`` has a bias, as in the Medusa repo.
A fresh residual block is zero (identity); initialising ``W_h`` from the base ``lm_head``
(:meth:`MedusaHeads.from_lm_head`) makes every head start as a copy of the base head.

Files (:meth:`MedusaHeads.save` / :meth:`MedusaHeads.load`): a folder holding
``medusa_heads.safetensors`` (tensors ``heads.{h}.blocks.{l}.linear.weight|bias`` and
``heads.{h}.out.weight``) and ``medusa_config.json`` (num_heads, num_layers, hidden_size,
vocab_size, format version). The trainer (``trainers/medusa.py``) writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cllm_bench.errors import UserError

WEIGHTS_FILE = "medusa_heads.safetensors"
CONFIG_FILE = "medusa_config.json"
FORMAT_VERSION = 1


class ResBlock(nn.Module):
    """``x + SiLU(Linear(x))``; starts as the identity (zero weight and bias)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class MedusaHead(nn.Module):
    """One head: ``num_layers`` residual blocks, then a bias-free projection to the vocabulary."""

    def __init__(self, hidden_size: int, vocab_size: int, num_layers: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(hidden_size) for _ in range(num_layers)])
        self.out = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


class MedusaHeads(nn.Module):
    """H Medusa heads over hidden states of size ``hidden_size``.

    forward(hidden [..., hidden_size]) -> logits [H, ..., vocab_size]; row h predicts the
    token h + 2 positions after the hidden state's position.
    """

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 0:
            raise ValueError(f"need num_heads >= 1 and num_layers >= 0, got {num_heads}, {num_layers}")
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.heads = nn.ModuleList([MedusaHead(hidden_size, vocab_size, num_layers) for _ in range(num_heads)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(hidden) for head in self.heads])

    def config_dict(self) -> dict[str, Any]:
        return {
            "format": "cllm-bench-medusa",
            "version": FORMAT_VERSION,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
        }

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def random(
        cls, hidden_size: int, vocab_size: int, num_heads: int = 4, num_layers: int = 1, seed: int = 0, std: float = 0.02
    ) -> "MedusaHeads":
        """Heads with every weight drawn from N(0, std^2) under ``seed`` (tests, smoke benchmarks)."""
        heads = cls(hidden_size, vocab_size, num_heads, num_layers)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in heads.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        return heads

    @classmethod
    def from_lm_head(cls, lm_head: nn.Module, num_heads: int = 4, num_layers: int = 1) -> "MedusaHeads":
        """Heads initialised as copies of the base model's ``lm_head`` (identity residual blocks).

        Each head then predicts the base model's next token; training moves head h to t+h+2.
        """
        weight = lm_head.weight
        vocab, hidden = weight.shape
        heads = cls(hidden, vocab, num_heads, num_layers).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for head in heads.heads:
                head.out.weight.copy_(weight)
        return heads

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``medusa_heads.safetensors`` + ``medusa_config.json`` into folder ``path``."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "cllm-bench-medusa"})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, path: str | Path, device: Any = "cpu", dtype: torch.dtype | None = None) -> "MedusaHeads":
        """Load heads saved by :meth:`save` onto ``device`` in ``dtype`` (default: as stored)."""
        from safetensors.torch import load_file

        folder = Path(path).expanduser()
        if folder.is_file() and folder.name in (WEIGHTS_FILE, CONFIG_FILE):
            folder = folder.parent
        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights_path.is_file():
            raise UserError(
                f"no Medusa heads at {path}: expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE} "
                f"(written by `cllm-bench train medusa`), or use heads=random:4"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
            heads = cls(int(cfg["hidden_size"]), int(cfg["vocab_size"]), int(cfg["num_heads"]), int(cfg.get("num_layers", 1)))
        except (ValueError, KeyError) as exc:
            raise UserError(f"{cfg_path} is not a valid Medusa config: {exc}") from None
        state = load_file(str(weights_path))
        try:
            heads.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{weights_path} does not match {cfg_path}: {str(exc).splitlines()[0]}") from None
        return heads.to(device=device, dtype=dtype) if dtype is not None else heads.to(device=device)
