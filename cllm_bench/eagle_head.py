"""The EAGLE draft head (Li et al. 2024, EAGLE-1/-2): one decoder layer at the feature level.

Input pair at position t: the target's last hidden state ``h_t`` (after the final norm,
the input of ``lm_head``) and the embedding of the token at t + 1. The head predicts the
next feature ``f_{t+1} ≈ h_{t+1}``; the target's frozen ``lm_head`` turns it into the
distribution of the token at t + 2::

    f = layer(fc(concat(embed(token_{t+1}), h_t)))      fc: [2H] -> [H]
    logits = lm_head(f)                                  (no norm in between, as EAGLE-1/2)

``layer`` is one decoder layer of the target's own architecture (``LlamaDecoderLayer``,
``Qwen2DecoderLayer``, ... built from the head's config) whose input norm is the identity:
EAGLE's layer 0 has no ``input_layernorm``. Rotary position embeddings come from the same
architecture. The head keeps its own KV cache (a one-layer transformers cache).

Files (:meth:`EagleHead.save` / :func:`load_eagle_head`), the layout the EAGLE reference
releases (e.g. ``yuhuili/EAGLE-Vicuna-7B-v1.3``):

* ``config.json``: a transformers config of the head (``model_type``, ``hidden_size``,
  ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``vocab_size``,
  ``rms_norm_eps``, ``rope_theta``..., ``num_hidden_layers`` = 1), optionally ``"bias"``
  (of ``fc``; default true as in the reference);
* ``model.safetensors`` or ``pytorch_model.bin``: tensors ``fc.weight`` [H, 2H],
  ``fc.bias`` [H] (when ``bias``), ``layers.0.self_attn.*``, ``layers.0.mlp.*``,
  ``layers.0.post_attention_layernorm.weight``, and optionally ``embed_tokens.weight``
  [V, H] (used instead of the target's embedding when present, as the reference does).

Without ``model_type`` in ``config.json`` the target's architecture is assumed.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cllm_bench.errors import UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
OPTIONAL_KEYS = ("embed_tokens.weight", "layers.0.input_layernorm.weight")


def architecture_classes(config: Any) -> tuple[type[nn.Module], type[nn.Module]]:
    """(decoder layer class, rotary embedding class) of ``config``'s architecture.

    Looked up in ``transformers.models.<model_type>.modeling_<model_type>`` under the
    prefix of the architecture's causal-LM class (``LlamaForCausalLM`` -> ``Llama``).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "")
    lm_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    try:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        prefix = str(lm_name).removesuffix("ForCausalLM")
        return getattr(module, f"{prefix}DecoderLayer"), getattr(module, f"{prefix}RotaryEmbedding")
    except (ImportError, AttributeError):
        raise UserError(
            f"EAGLE heads need a decoder-only architecture with a DecoderLayer and a RotaryEmbedding class; "
            f"model type {model_type!r} has none — use a Llama-, Qwen2- or Mistral-style model"
        ) from None


def head_config(target_config: Any) -> Any:
    """The config of a head for a target: the target's config with one hidden layer."""
    config = copy.deepcopy(target_config)
    config.num_hidden_layers = 1
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:1]
    return config


class EagleHead(nn.Module):
    """fc + one decoder layer; see the module docstring.

    config: the head's transformers config (``num_hidden_layers`` = 1; hidden size H,
    vocabulary V). bias: whether ``fc`` has a bias. embed_tokens: an own embedding [V, H]
    (released heads may carry one) or None to use the target's.
    """

    def __init__(self, config: Any, bias: bool = True, own_embedding: bool = False) -> None:
        super().__init__()
        self.config = config
        self.bias = bias
        hidden = int(config.hidden_size)
        layer_cls, rotary_cls = architecture_classes(config)
        self.fc = nn.Linear(2 * hidden, hidden, bias=bias)
        layer = layer_cls(config, 0)
        layer.input_layernorm = nn.Identity()  # EAGLE's layer 0 has no input norm
        self.layers = nn.ModuleList([layer])
        self.rotary_emb = rotary_cls(config=config)
        self.embed_tokens = nn.Embedding(int(config.vocab_size), hidden) if own_embedding else None
        params = inspect.signature(layer_cls.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def new_cache(self) -> Any:
        """An empty KV cache for the head's one layer."""
        from cllm_bench.engines import kv_cache

        return kv_cache.new_dynamic_cache(self.config)

    def forward(
        self,
        hidden: torch.Tensor,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: Any = None,
    ) -> torch.Tensor:
        """Predicted features [B, T, H].

        hidden: [B, T, H] target (or predicted) features h_t; embeds: [B, T, H] embeddings
        of the tokens at t + 1; positions: [B, T] long; mask: [B or 1, 1, T, past + T]
        additive (0 = attend, dtype-min = masked); cache: the head's KV cache (appended to)
        or None (training, no cache).
        """
        x = self.fc(torch.cat((embeds.to(hidden.dtype), hidden), dim=-1))
        cos_sin = self.rotary_emb(x, positions)
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.layers[0](x, attention_mask=mask.to(x.dtype), position_ids=positions, position_embeddings=cos_sin, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def embed(self, target_embedding: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``ids`` [B, T] -> [B, T, H]: the head's own table when it has one."""
        table = self.embed_tokens if self.embed_tokens is not None else target_embedding
        return table(ids)

    # -- files -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict()
        cfg["num_hidden_layers"] = 1
        cfg["bias"] = self.bias
        return cfg

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (the release layout) into ``path``."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if "rotary_emb" not in k}
        save_file(state, str(folder / SAFETENSORS_FILE), metadata={"format": "pt"})
        cfg = self.config_dict()
        (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def random(cls, config: Any, seed: int = 0, std: float = 0.02) -> "EagleHead":
        """A head whose linear weights are drawn from N(0, std^2) under ``seed`` (norms = 1)."""
        head = cls(config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in head.named_parameters():
                if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        return head


# ------------------------------------------------------------------ loading
def read_head_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The head folder and its ``config.json`` as a dict; UserError naming the fix otherwise."""
    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    fix = (
        "pass head=DIR with a folder holding config.json + model.safetensors (or pytorch_model.bin), "
        "as written by `cllm-bench train eagle` or released by the EAGLE authors"
    )
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"no EAGLE head at {path}: {cfg_path} is missing; {fix}")
    if not (folder / SAFETENSORS_FILE).is_file() and not (folder / TORCH_FILE).is_file():
        raise UserError(f"no EAGLE head weights in {folder} (neither {SAFETENSORS_FILE} nor {TORCH_FILE}); {fix}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(cfg, dict) or "hidden_size" not in cfg:
        raise UserError(f"{cfg_path} has no hidden_size: not an EAGLE head config; {fix}")
    return folder, cfg


def check_head_fits(cfg: dict[str, Any], target_model: Any, where: str) -> None:
    """UserError when a head config's hidden size or vocabulary differs from the target's."""
    hidden = int(target_model.config.hidden_size)
    vocab = int(target_model.get_output_embeddings().weight.shape[0])
    h, v = int(cfg.get("hidden_size", -1)), int(cfg.get("vocab_size", vocab))
    if h != hidden or v != vocab:
        raise UserError(
            f"the EAGLE head at {where} was trained for hidden size {h} / vocabulary {v}, but the model has "
            f"{hidden} / {vocab}; use a head trained for this model (`cllm-bench train eagle --model ...`)"
        )


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / SAFETENSORS_FILE).is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / SAFETENSORS_FILE))
    return torch.load(str(folder / TORCH_FILE), map_location="cpu", weights_only=True)


def load_eagle_head(path: str | Path, target_model: Any) -> EagleHead:
    """Load a head folder (release layout) for ``target_model``, on its device and dtype."""
    from transformers import CONFIG_MAPPING

    folder, cfg = read_head_config(path)
    check_head_fits(cfg, target_model, str(path))
    model_type = cfg.get("model_type") or target_model.config.model_type
    try:
        config = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in cfg.items() if k != "bias"})
    except Exception as exc:  # unknown model type or an invalid config
        raise UserError(f"{folder / CONFIG_FILE} is not a valid {model_type!r} config: {exc}") from None
    config.num_hidden_layers = 1
    config._attn_implementation = target_model.config._attn_implementation
    state = _read_state(folder)
    bias = bool(cfg.get("bias", "fc.bias" in state))
    emb = state.get("embed_tokens.weight")
    if emb is not None and tuple(emb.shape) != (int(config.vocab_size), int(config.hidden_size)):
        raise UserError(f"{folder}: embed_tokens.weight has shape {tuple(emb.shape)}, not [vocab_size, hidden_size]")
    head = EagleHead(config, bias=bias, own_embedding=emb is not None)
    state.pop("layers.0.input_layernorm.weight", None)  # identity in EAGLE-1/2 heads
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape contradicts config.json
        raise UserError(f"{folder}: the weights do not match its config.json: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise UserError(
            f"{folder} does not hold an EAGLE-1/2 head for {model_type}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; expected fc.*, layers.0.* (and optionally embed_tokens.weight)"
        )
    param = next(target_model.parameters())
    return head.to(device=param.device, dtype=param.dtype).eval()
