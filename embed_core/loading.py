"""Loading a transformers model the way every embed_core model needs it (the embedder now, a
reranker next): a fast tokenizer, the network with the best attention kernel that loads (the chosen
one, else SDPA, else eager) on the chosen device and dtype, and a sentence-transformers Dense head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedrail.embed_core.spec import DenseLayer
from embedrail.errors import ModelError

if TYPE_CHECKING:  # torch is imported where a model is loaded, not by the tokenizer-only remote backend
    import torch

    from embedrail.embed_core.device import Placement

__all__ = ["load_dense_head", "load_fast_tokenizer", "load_transformer"]

log = logging.getLogger(__name__)


def load_fast_tokenizer(path: Path | str, model_id: str, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer; a fast (Rust) one is required (exact offsets, batch encoding)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {model_id}: {exc}") from exc
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ModelError(f"{model_id}: a fast (Rust) tokenizer is required (tokenizer.json)")
    return tok


def load_transformer(
    path: Path, model_id: str, placement: Placement, *, trust_remote_code: bool = False, auto_class: Any = None
) -> tuple[torch.nn.Module, Placement]:
    """The network (``auto_class``, default ``AutoModel``) in eval mode on ``placement``'s device and
    dtype. Returns it with the placement it really got: the attention kernel falls back from the chosen
    one to SDPA to eager when a kernel does not support the architecture (BERT has no flash-attention-2)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from embedrail.embed_core.device import Placement

    auto_class = auto_class or AutoModel
    kwargs: dict[str, Any] = {"dtype": placement.dtype, "trust_remote_code": trust_remote_code}
    chain = list(dict.fromkeys([placement.attn_implementation, "sdpa", "eager"]))
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        for i, attn in enumerate(chain):
            try:
                net = auto_class.from_pretrained(str(path), attn_implementation=attn, **kwargs)
            except (ValueError, ImportError) as exc:
                if i + 1 == len(chain):
                    raise
                log.info("%s: attention %s unavailable (%s); trying %s", model_id, attn, exc, chain[i + 1])
                continue
            net.eval()
            net.to(placement.device)
            return net, Placement(placement.device, placement.dtype, attn, placement.compute_dtype)
    except Exception as exc:
        raise ModelError(f"cannot load model {model_id} from {path}: {exc}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    raise AssertionError("unreachable")  # pragma: no cover


def load_dense_head(layers: list[DenseLayer], device: torch.device) -> list[torch.nn.Module]:
    """The sentence-transformers ``Dense`` modules after pooling (fp32, on ``device``)."""
    import torch

    out: list[torch.nn.Module] = []
    for d in layers:
        linear = torch.nn.Linear(d.in_features, d.out_features, bias=d.bias)
        st_file = d.path / "model.safetensors"
        if st_file.is_file():
            from safetensors.torch import load_file

            state = load_file(str(st_file))
        else:
            state = torch.load(str(d.path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        act: torch.nn.Module = torch.nn.Tanh() if d.activation == "Tanh" else torch.nn.Identity()
        out.append(torch.nn.Sequential(linear, act).to(device, torch.float32).eval())
    return out
