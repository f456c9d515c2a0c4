"""The inference pipeline: a model, and chat sessions over one image each.

Shape of the API (as in SAM's predictor): *set the image once*, *ask many times*::

    pipe = MedSegRPipeline.load()                 # bundled parts (+ fine-tuned checkpoint)
    session = pipe.new_session(load_image("ct.nrrd"))
    answer = session.ask("Which organ shows a hypodense lesion?", axis="axial", slice_index=40)
    follow = session.ask("Now only the lesion.")   # same slice: no re-encoding, KV cache reused
    vol = session.ask("Segment the liver in the whole scan.", volume=True)

Masks come back on the session image's own grid (numpy ``(z, y, x)``, same
spacing/origin/direction). Slice embeddings are computed once per session and
reused by every question; the conversation's KV cache is kept between turns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from medsegr import __version__
from medsegr.answers import Answer, Hints, Segment, Turn, measured_span, strip_measured_spans
from medsegr.config import MedSegRConfig
from medsegr.errors import InputError, MedSegRError
from medsegr.io.images import MedicalImage
from medsegr.modeling.generation import ConversationState, generate, prompt_keys
from medsegr.modeling.medsegr_model import Key, MedSegRModel
from medsegr.imaging.channels import hint_maps, input_channels, letterbox_raw, neighbour_indices, raw_volume
from medsegr.imaging.measurements import measure_segment
from medsegr.imaging.postprocess import fill_holes, is_single_object, largest_component
from medsegr.imaging.preprocess import Letterbox, letterbox, letterbox_geometry, normalise, unletterbox
from medsegr.prompts import clean_answer, render, segment_names, validate_question
from medsegr.imaging.slicing import SliceView, resolve_axis, slice_view
from medsegr.measured_words import MeasuredWords, display_patient_left

log = logging.getLogger(__name__)

#: the segment made from the user's box or points when the answer names no structure
HINT_SEGMENT_NAME = "hinted structure"


def bundled_checkpoint(package_dir: Path = Path(__file__).resolve().parent) -> Path | None:
    """The bundled fine-tuned checkpoint: ``Resources/checkpoint`` in the 3D Slicer module
    folder that holds the engine package ``package_dir``, or None when it holds none.

    This is the one place it lives, and the layout is the same in a source checkout
    (``MedSegR/medsegr/`` beside ``MedSegR/Resources/checkpoint/``) and in an installed
    extension (``qt-scripted-modules/medsegr/`` beside
    ``qt-scripted-modules/Resources/checkpoint/``, where CMake installs it)."""
    candidate = package_dir.parent / "Resources" / "checkpoint"
    return candidate if (candidate / "medsegr_config.json").is_file() else None


def _logit(probability: float) -> float:
    """The logit of ``probability``; -inf at 0 or below, +inf at 1 or above."""
    if probability <= 0:
        return float("-inf")
    if probability >= 1:
        return float("inf")
    return float(np.log(probability / (1 - probability)))


class Cancelled(MedSegRError):
    """The caller cancelled generation (``on_token`` returned False)."""

    code = "cancelled"


def default_checkpoint() -> Path | None:
    """``$MEDSEGR_CHECKPOINT`` or the bundled fine-tuned checkpoint, if present."""
    env = os.environ.get("MEDSEGR_CHECKPOINT")
    if env:
        return Path(env)
    return bundled_checkpoint()


class MedSegRPipeline:
    """A loaded model plus everything needed to run questions on images."""

    def __init__(self, model: MedSegRModel, checkpoint: Path | None = None) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.lock = threading.RLock()  # one forward pass at a time on the model
        self._prefix: ConversationState | None = None
        self._encoder_batch: int | None = None
        #: optional ``fn(step, logits)`` applied to every generated token's logits, in
        #: place (benchmarks use it to place a [SEG]); None in normal use
        self.adjust_logits: Callable[[int, torch.Tensor], None] | None = None
        #: seconds per phase of :meth:`load` (vision, llm, hashing, conversion, optimise,
        #: total; a phase that did not run is absent); empty for a pipeline built otherwise
        self.load_timings: dict[str, float] = {}
        #: how many times each of those phases ran (e.g. ``hashing``: files hashed)
        self.load_calls: dict[str, int] = {}

    @classmethod
    def load(cls, checkpoint: str | Path | None = "default", config: MedSegRConfig | None = None,
             device: str = "auto") -> "MedSegRPipeline":
        """Load a fine-tuned checkpoint folder, or (``checkpoint=None``, or no bundled
        checkpoint) the base parts named by ``config``. Where the time went is kept in
        ``load_timings`` and ``load_calls`` (:mod:`medsegr.modeling.load_timings`)."""
        from medsegr.modeling.load_timings import recording

        with recording() as timings:
            t0 = time.perf_counter()
            pipeline = cls._load(checkpoint, config, device)
            timings.add("total", time.perf_counter() - t0)
        pipeline.load_timings, pipeline.load_calls = timings.seconds, timings.calls
        return pipeline

    @classmethod
    def _load(cls, checkpoint: str | Path | None, config: MedSegRConfig | None,
              device: str) -> "MedSegRPipeline":
        from medsegr.modeling.checkpoint import from_pretrained
        from medsegr.modeling.builder import build_model
        from medsegr.modeling.inference_opt import optimise_for_inference
        from medsegr.modeling.load_timings import phase

        path = default_checkpoint() if checkpoint == "default" else (
            Path(checkpoint) if checkpoint else None)
        if config is not None:
            path = None
        effective = config or MedSegRConfig()
        if path is not None:
            from medsegr.modeling.checkpoint import read_checkpoint_config

            effective = MedSegRConfig.from_dict(read_checkpoint_config(path)["config"])
        from medsegr.modeling.load_status import report

        cache = _int8_cache(effective, path, device)
        skeleton = cache is not None and cache.is_file()
        read = None
        if skeleton and cache is not None:  # packing the int8 kernels overlaps with building
            from medsegr.modeling.int8 import read_int8_in_background

            read = read_int8_in_background(cache)
        if path is not None:
            report(f"loading the checkpoint {path}")
            model = from_pretrained(path, device=device, llm_skeleton=skeleton)
        else:
            report("building the base model")
            model = build_model(effective, device=device, llm_skeleton=skeleton)
        if cache is not None:
            report("reading the int8 language model" if skeleton else
                   "quantising the language model to int8 (first run only; cached afterwards)")
        with phase("optimise"):
            optimised = optimise_for_inference(model, int8_cache=cache, int8_read=read)
        pipeline = cls(optimised, checkpoint=path)
        report("the model is ready")
        return pipeline

    @property
    def fine_tuned(self) -> bool:
        return self.model.fine_tuned

    def info(self) -> dict[str, Any]:
        p = next(self.model.parameters())
        return {
            "engine_version": __version__,
            "fine_tuned": self.model.fine_tuned,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "base": self.model.provenance,
            "device": str(p.device),
            "dtype": str(p.dtype).replace("torch.", ""),
            "llm_quantization": self.model.llm_quantized,
            "visual_tokens": self.model.num_visual_tokens,
        }

    def encoder_batch(self) -> int:
        """Slices per image-encoder call: ``generation.encoder_batch``, or when that is 0
        (automatic) 1 on CPU and, on CUDA, as many as fit in half the free memory
        (:func:`batch_for_memory`, from the measured cost of one slice). Lowered for
        the rest of the pipeline's life when a call runs out of memory."""
        if self._encoder_batch is None:
            configured = self.model.config.generation.encoder_batch
            if configured > 0:
                self._encoder_batch = configured
            elif self.model.device.type == "cuda":
                self._encoder_batch = self._fit_encoder_batch()
            else:
                self._encoder_batch = 1
        return self._encoder_batch

    def _fit_encoder_batch(self) -> int:
        device = self.model.device
        size = self.model.vision.image_size
        with self.lock:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.model.encode_images(torch.zeros((1, 1, size, size)))
            per_slice = torch.cuda.max_memory_allocated(device) - base
            free, _ = torch.cuda.mem_get_info(device)
        return batch_for_memory(free, per_slice)

    def encode(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Image embeddings ``(B, C, h, w)`` of ``pixels`` ``(B, 1, S, S)``, in chunks of
        ``batch_size`` (default :meth:`encoder_batch`) slices. A chunk that runs out of
        accelerator memory is split in half (down to one slice, which re-raises) and
        the smaller size is kept for later calls."""
        size = batch_size or self.encoder_batch()
        parts: list[torch.Tensor] = []
        start = 0
        while start < pixels.shape[0]:
            chunk = pixels[start:start + size]
            try:
                with self.lock:
                    parts.append(self.model.encode_images(chunk))
            except torch.OutOfMemoryError:
                if chunk.shape[0] == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = chunk.shape[0] // 2
                self._encoder_batch = min(self.encoder_batch(), size)
                log.warning("image encoder out of memory at %d slices per call; using %d",
                            chunk.shape[0], size)
                continue
            start += chunk.shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def new_session(self, image: MedicalImage, window: str | None = None) -> "ChatSession":
        return ChatSession(self, image, window)

    def prompt_prefix(self) -> ConversationState | None:
        """KV cache of the text every conversation starts with (system prompt and the
        opening of the first user turn, up to the image), computed once per pipeline
        and forked into each new session, so a new session prefills only its image
        and question. Only for the lean decoder's static cache."""
        from medsegr.modeling.fast_llama import StaticKVCache

        if self.model.fast_llm is None:
            return None
        with self.lock:
            if self._prefix is None:
                cfg = self.model.config
                text = render(self.model.tokenizer, cfg.llm.system_prompt,
                              [Turn(question="?", image_id="x")], cfg.model.image_token)
                ids = self.model.tokenizer.encode(text, add_special_tokens=False)
                prefix = [int(t) for t in ids[: ids.index(self.model.image_token_id)]]
                state = ConversationState()
                if prefix:
                    state.cache = self.model.fast_llm.new_cache(
                        self.model.llm.get_input_embeddings().weight.dtype, self.model.device)
                    with torch.no_grad():
                        self.model.fast_llm.forward(self.model.embed_keys(prefix, {}), state.cache)
                    state.keys = list(prefix)
                self._prefix = state
            if not isinstance(self._prefix.cache, StaticKVCache):
                return None
            return ConversationState(keys=list(self._prefix.keys), cache=self._prefix.cache.fork())


def batch_for_memory(free_bytes: int, per_slice_bytes: int, fraction: float = 0.5,
                     limit: int = 64) -> int:
    """How many slices one encoder call may take: ``fraction`` of the free memory
    divided by the cost of one slice, between 1 and ``limit``."""
    if per_slice_bytes <= 0:
        return limit
    return max(1, min(limit, int(free_bytes * fraction) // per_slice_bytes))


def _int8_cache(config: MedSegRConfig, checkpoint: Path | None, device: str) -> Path | None:
    """The int8 LLM cache file for this model on CPU, or None where it does not apply."""
    from medsegr.config import BUNDLED_LLM
    from medsegr.modeling.device import resolve_device
    from medsegr.modeling.int8 import int8_cache_file, int8_cache_key
    from medsegr.modeling.weights import SMOLLM2_GGUF

    from medsegr.modeling.device import cpu_llm_precision

    if resolve_device(device)[0].type != "cpu":
        return None

    if cpu_llm_precision(config.llm.cpu_bf16, config.llm.cpu_int8) != "int8":
        return None
    if config.llm.source == BUNDLED_LLM:
        llm = {"sha256": SMOLLM2_GGUF.sha256}
    elif Path(config.llm.source).is_dir() and not config.llm.gguf_file:
        from medsegr.modeling.weights import folder_hashes

        llm = {"path": str(Path(config.llm.source).resolve()),
               **folder_hashes(Path(config.llm.source))}
    else:
        return None  # tiny test models and GGUF folders are not cached
    digest = None
    if checkpoint is not None:
        from medsegr.modeling.checkpoint import checkpoint_digest

        digest = checkpoint_digest(checkpoint)
    return int8_cache_file(int8_cache_key(llm, digest, [config.model.seg_token,
                                                        config.model.image_token],
                                          config.llm.cpu_int8_keep_float))


class ChatSession:
    """A conversation about one image (2-D, or a volume)."""

    def __init__(self, pipeline: MedSegRPipeline, image: MedicalImage, window: str | None = None) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model
        self.image = image
        self.volume01 = normalise(image.array, image.modality, window)
        #: what the grounding module's channels are made from: Hounsfield units on CT
        #: (whatever window the encoder sees), the percentile-normalised volume otherwise
        self._raw = raw_volume(image.array, image.modality, self.volume01)
        self.turns: list[Turn] = []
        self.state = pipeline.prompt_prefix() or ConversationState()
        self._embeddings: dict[tuple[int, int], torch.Tensor] = {}
        self._visual_bank: dict[str, torch.Tensor] = {}
        self._shown_image: str | None = None
        self.encoder_calls = 0  # slices encoded so far (for tests and the server's stats)
        #: show a tqdm progress bar on stderr when many slices are encoded (the CLI sets it)
        self.show_progress = False
        name = self.model.config.generation.embedding_cache_dtype
        if name not in ("float16", "bfloat16", "float32"):
            raise InputError(f"generation.embedding_cache_dtype must be float16, bfloat16 or "
                             f"float32, not {name!r}")
        self._cache_dtype = getattr(torch, name)
        self.lock = threading.Lock()

    # -- embeddings ------------------------------------------------------------
    def view(self, axis: int, index: int) -> SliceView:
        return slice_view(self.image.shape, self.image.spacing, self.image.direction, axis, index)

    def _letterbox(self, view: SliceView) -> Letterbox:
        return letterbox_geometry(self._display_shape(view), view.pixel_spacing,
                                  self.model.vision.image_size)

    def _display_shape(self, view: SliceView) -> tuple[int, int]:
        raw = [s for a, s in enumerate(self.image.shape) if a != view.axis]
        return (raw[1], raw[0]) if view.transpose else (raw[0], raw[1])

    def embeddings(self, axis: int, indices: Sequence[int],
                   batch_size: int | None = None) -> tuple[list[torch.Tensor], int]:
        """Image embeddings (each ``(C, h, w)``, in the cache's storage type) of the given
        slices, computing only those not cached yet; returns them and how many were
        computed."""
        if batch_size is None:
            batch_size = self.pipeline.encoder_batch()
        missing = [i for i in indices if (axis, i) not in self._embeddings]
        bar = None
        if self.show_progress and len(missing) > 4:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc="encoding slices", unit="slice", leave=False)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            views = [self.view(axis, i) for i in chunk]
            box = self._letterbox(views[0])
            stack = np.stack([v.extract(self.volume01) for v in views])
            emb = self.pipeline.encode(letterbox(stack, box), batch_size)
            for i, e in zip(chunk, emb):
                self._embeddings[(axis, i)] = e.to(self._cache_dtype).clone()
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        self.encoder_calls += len(missing)
        return [self._embeddings[(axis, i)] for i in indices], len(missing)

    def _work(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cached embeddings -> the vision part's compute dtype."""
        return embeddings.to(next(self.model.visual_projector.parameters()).dtype)

    def _visual(self, image_id: str, embedding: torch.Tensor) -> None:
        if image_id not in self._visual_bank:
            with torch.no_grad():
                self._visual_bank[image_id] = self.model.visual_tokens(self._work(embedding[None]))[0]

    # -- prompts ----------------------------------------------------------------
    def _keys(self, turns: list[Turn]) -> list[Key]:
        return prompt_keys(self.model, turns)

    # -- asking -------------------------------------------------------------------
    def _target_slices(self, axis: str | int, slice_index: int | None, volume: bool,
                       key_slices: int) -> tuple[int, list[int], list[int]]:
        """The array axis, the slices a question covers and the key slice(s) the LLM
        sees: one slice (default the middle one), or every slice with ``volume``."""
        ax = 0 if self.image.is_2d else resolve_axis(axis, self.image.direction)
        n_slices = self.image.shape[ax]
        if volume:
            if self.image.is_2d:
                raise InputError("volume mode needs a 3-D image; this image is 2-D")
            return ax, list(range(n_slices)), self._key_slices(ax, key_slices)
        index = n_slices // 2 if slice_index is None else int(slice_index)
        if not 0 <= index < n_slices:
            raise InputError(f"slice index {index} is out of range (0..{n_slices - 1} "
                             f"along axis {ax})")
        return ax, [index], [index]

    def ask(self, question: str, *, axis: str | int = "axial", slice_index: int | None = None,
            volume: bool = False, hints: Hints | None = None,
            on_token: Callable[[str], bool | None] | None = None,
            max_new_tokens: int | None = None,
            on_progress: Callable[[str, int, int], None] | None = None) -> Answer:
        """Answer ``question`` about one slice (default: the middle one along ``axis``)
        or, with ``volume=True``, about the whole volume.

        ``on_token(text_piece)`` streams the answer; returning ``False`` cancels
        (:class:`Cancelled` is raised and the conversation is left as it was).
        ``on_progress(stage, done, total)`` reports the phases: ``encoding`` (slices
        encoded of those the question covers), ``answering`` (the language model
        reads and generates; 0 of 0) and ``masks`` (answer segments decoded).
        """
        report = on_progress or (lambda stage, done, total: None)
        cfg = self.model.config
        question = validate_question(question, (cfg.model.seg_token, cfg.model.image_token))
        hints = hints or Hints()
        with self.lock:
            t0 = time.perf_counter()
            ax, indices, keys_idx = self._target_slices(axis, slice_index, volume,
                                                        cfg.generation.volume_key_slices)
            prompt_hints = self._hint_tensors(hints, self.view(ax, keys_idx[0]))
            t_enc = time.perf_counter()
            embeddings, encoded = self.embeddings(ax, indices)
            encode_s = time.perf_counter() - t_enc
            report("encoding", len(indices), len(indices))

            # --- the LLM: one conversational turn on the central key slice ---
            center = keys_idx[len(keys_idx) // 2]
            image_id = f"{ax}:{center}"
            self._visual(image_id, embeddings[indices.index(center)])
            turn = Turn(question=question, image_id=None if self._shown_image == image_id else image_id)
            keys = self._keys(self.turns + [turn])
            streamer = _Streamer(self.model.tokenizer, on_token) if on_token else None
            report("answering", 0, 0)
            spanned: list[tuple[np.ndarray, float]] = []
            span_s = [0.0]
            guide = self._measured_words(ax, question)
            with self.pipeline.lock:
                gen = generate(self.model, keys, self._visual_bank,
                               max_new_tokens or cfg.generation.max_new_tokens, self.state,
                               use_cache=True, temperature=cfg.generation.temperature,
                               min_new_tokens=cfg.generation.min_new_tokens, on_token=streamer,
                               adjust_logits=self.pipeline.adjust_logits,
                               on_seg=self._span_hook(ax, center, embeddings[indices.index(center)],
                                                      prompt_hints, spanned, span_s),
                               constrain=guide)
            if streamer is not None and streamer.cancelled:
                raise Cancelled("the request was cancelled")
            raw = self.model.tokenizer.decode(gen.token_ids, skip_special_tokens=False)
            if guide is not None:
                raw = guide.settle(raw)  # sides stated before their structure was measured
            turn.answer = raw
            seg_states = {center: self._queries(gen)}
            for k in keys_idx:  # extra key slices: side runs, outside the conversation
                if k != center:
                    seg_states[k] = self._side_run(ax, k, question, embeddings[indices.index(k)],
                                                   prompt_hints)

            # --- the grounding module on every slice: one backbone pass per slice ---
            t_mask = time.perf_counter()
            names = segment_names(raw, cfg.model.seg_token)
            hint_only = not names and prompt_hints is not None
            report("masks", 0, len(names) or int(hint_only))
            if not volume and names and len(spanned) == len(names):
                # a slice answer's masks were decoded for its measured spans already
                masks, presence = [m for m, _ in spanned], [p for _, p in spanned]
            else:
                masks, presence = self._decode(ax, indices, embeddings, seg_states,
                                               len(names) or int(hint_only), prompt_hints)
            if hint_only:
                names = [HINT_SEGMENT_NAME]
            segments, not_found = self._segments(names, masks, ax, volume,
                                                 lambda done: report("masks", done, len(names)))
            mask_s = time.perf_counter() - t_mask + span_s[0]
            self.turns.append(turn)
            self._shown_image = image_id
            total = time.perf_counter() - t0
            return Answer(
                text=with_not_found(clean_answer(strip_measured_spans(raw), cfg.model.seg_token),
                                    not_found, volume),
                raw_text=raw, segments=segments, not_found=not_found,
                presence=[round(p, 4) for p in presence],
                mode="volume" if volume else "slice", axis=ax,
                slice_index=None if volume else indices[0], key_slices=keys_idx,
                fine_tuned=self.model.fine_tuned,
                timings={"encode": encode_s, "prefill": gen.prefill_s,
                         "decode": gen.decode_s - span_s[0], "masks": mask_s, "total": total},
                tokens={"prompt": gen.prompt_tokens, "reused": gen.reused_tokens,
                        "generated": len(gen.token_ids) - len(gen.inserted),
                        **({"inserted": len(gen.inserted)} if gen.inserted else {})},
                encoded_slices=encoded, engine_words=list(guide.changes) if guide else [])

    def reset(self) -> None:
        """Start a new conversation on the same image (embeddings are kept)."""
        with self.lock:
            self.turns = []
            self.state = self.pipeline.prompt_prefix() or ConversationState()
            self._shown_image = None

    def memory_bytes(self) -> int:
        """Bytes this session holds: the image, its normalised copy, the cached slice
        embeddings and visual tokens, and the conversation's KV cache."""
        seen: set[int] = set()
        total = self.image.array.nbytes + int(np.asarray(self.volume01).nbytes)
        if not np.shares_memory(self._raw, self.image.array) and self._raw is not self.volume01:
            total += int(self._raw.nbytes)
        total += sum(_tensor_bytes(t, seen) for t in list(self._embeddings.values()))
        total += sum(_tensor_bytes(t, seen) for t in list(self._visual_bank.values()))
        return total + _tensor_bytes(self.state.cache, seen)

    # -- helpers ------------------------------------------------------------------
    def _key_slices(self, axis: int, count: int) -> list[int]:
        """Slices the LLM looks at in volume mode: evenly inside the extent of the
        slices that hold signal (the middle one when ``count`` is 1)."""
        other = tuple(a for a in (0, 1, 2) if a != axis)
        signal = (self.volume01 > 0.05).mean(axis=other)
        idx = np.nonzero(signal > 0.01)[0]
        lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, self.image.shape[axis] - 1)
        count = max(1, int(count))
        if count == 1:
            return [(lo + hi) // 2]
        return sorted({int(round(v)) for v in np.linspace(lo, hi, count + 2)[1:-1]})

    def _measured_words(self, axis: int, question: str = "") -> MeasuredWords | None:
        """The measurement-guided words of one answer to ``question`` on slices along
        ``axis`` (None without measured spans or with ``[generation] measured_words`` off)."""
        cfg = self.model.config
        if not (cfg.model.measured_spans and cfg.generation.measured_words):
            return None
        return MeasuredWords(self.model.tokenizer, [t.answer for t in self.turns if t.answer],
                             display_patient_left(self.image.direction, axis, self.image.modality),
                             cfg.model.seg_token, question)

    def _side_run(self, axis: int, index: int, question: str, embedding: torch.Tensor,
                  hints: torch.Tensor | None = None) -> torch.Tensor:
        image_id = f"{axis}:{index}"
        self._visual(image_id, embedding)
        keys = self._keys([Turn(question=question, image_id=image_id)])
        with self.pipeline.lock:
            gen = generate(self.model, keys, self._visual_bank,
                           self.model.config.generation.max_new_tokens, None, use_cache=True,
                           on_seg=self._span_hook(axis, index, embedding, hints, [], [0.0]))
        return self._queries(gen)

    def _span_hook(self, axis: int, index: int, embedding: torch.Tensor, hints: torch.Tensor | None,
                   found: list[tuple[np.ndarray, float]], seconds: list[float],
                   ) -> Callable[[Any], list[int]] | None:
        """Under ``[model] measured_spans``, the generation hook that decodes each new
        ``[SEG]`` on slice ``index`` (the key slice the language model sees), measures the
        mask as a slice answer's and returns the span's token ids; each ``(mask,
        presence)`` is appended to ``found`` and the time spent added to ``seconds[0]``."""
        if not self.model.config.model.measured_spans:
            return None

        def on_seg(turn: Any) -> list[int]:
            t = time.perf_counter()
            query = self._queries(turn)[-1:]
            masks, presence = self._decode(axis, [index], [embedding], {index: query}, 1, hints)
            found.append((masks[0], presence[0]))
            measured = (measure_segment(self.image, masks[0], volume=False, axis=axis)
                        if masks[0].any() else None)
            ids = self.model.tokenizer.encode(measured_span(measured), add_special_tokens=False)
            seconds[0] += time.perf_counter() - t
            return ids

        return on_seg

    def _segments(self, names: list[str], masks: list[np.ndarray], axis: int, volume: bool,
                  done: Callable[[int], None] = lambda count: None,
                  ) -> tuple[list[Segment], list[str]]:
        """The answer's segments from the decoded masks (volume answers: holes filled
        with ``[model] volume_fill_holes``, the largest 3-D component of a single-object
        structure), and the names whose mask is empty: the grounding module found no such
        structure, so they get no segment. ``done(j)`` follows the count."""
        segments: list[Segment] = []
        not_found: list[str] = []
        for j, (name, mask) in enumerate(zip(names, masks)):
            if volume:
                if self.model.config.model.volume_fill_holes:
                    mask = fill_holes(mask, axis)
                if is_single_object(name):
                    mask = largest_component(mask)
            if mask.any():
                segments.append(Segment(name=name, mask=mask, index=len(segments),
                                        measured=measure_segment(self.image, mask, volume=volume,
                                                                 axis=axis)))
            else:
                not_found.append(name)
            done(j + 1)
        return segments, not_found

    def _queries(self, gen: Any) -> torch.Tensor:
        """The grounding module's queries of a generated turn ``(K, H)``: the ``[SEG]``
        states, with the pooled name states beside them under ``[grounding] name_pool``."""
        if not self.model.grounding.config.name_pool:
            return gen.seg_states
        return torch.cat([gen.seg_states, gen.name_states(self.model.tokenizer).to(gen.seg_states)], 1)

    def _grounding_box(self, view: SliceView) -> Letterbox:
        return letterbox_geometry(self._display_shape(view), view.pixel_spacing,
                                  self.model.grounding.config.size)

    def _decode(self, axis: int, indices: list[int], embeddings: list[torch.Tensor],
                seg_states: dict[int, torch.Tensor], count: int, hints: torch.Tensor | None,
                ) -> tuple[list[np.ndarray], list[float]]:
        """Masks of the answer's ``count`` segments on every slice in ``indices``: one
        grounding-module backbone pass per slice, shared by every segment; segment ``j``
        of a slice uses the ``[SEG]`` state of the nearest key slice that produced a
        ``j``-th ``[SEG]`` (no state: a hints-only query). A segment whose presence is
        below ``[model] presence_threshold`` on every slice has no voxel; one that reaches
        it somewhere keeps its voxels on the slices where its presence reaches
        ``volume_presence_threshold`` (when lower: on a single slice the two rules are
        one). Also returns each segment's presence probability, the highest over the
        slices."""
        masks = [np.zeros(self.image.shape, dtype=bool) for _ in range(count)]
        presence = [0.0] * count
        if count == 0:
            return masks, presence
        mcfg = self.model.config.model
        gcfg = self.model.grounding.config
        logit_cut = _logit(mcfg.mask_threshold)
        slice_cut = _logit(min(mcfg.presence_threshold, mcfg.volume_presence_threshold))
        is_ct = self.image.modality == "CT"
        n_slices = self.image.shape[axis]
        box = self._grounding_box(self.view(axis, indices[0]))
        batch_size = max(1, self.model.config.generation.decoder_batch)
        states_by_seg: list[dict[int, torch.Tensor]] = [
            {k: s[j] for k, s in seg_states.items() if s.shape[0] > j} for j in range(count)]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            stacks = []
            for i in chunk:
                view = self.view(axis, i)
                near = neighbour_indices(i, n_slices, gcfg.slices)
                stacks.append(letterbox_raw(np.stack([self.view(axis, n).extract(self._raw) for n in near]),
                                            box, is_ct))
            flags = torch.full((len(chunk),), is_ct, dtype=torch.bool)
            hint = None if hints is None else hints[None].expand(len(chunk), -1, -1, -1)
            channels = input_channels(torch.stack(stacks), flags, hint)
            states, owner, null = [], [], []
            hidden = int(self.model.llm.config.hidden_size) * (2 if gcfg.name_pool else 1)
            for b, i in enumerate(chunk):
                for j in range(count):
                    have = states_by_seg[j]
                    if have:
                        states.append(have[min(have, key=lambda k: abs(k - i))].float().cpu())
                        null.append(False)
                    else:
                        states.append(torch.zeros(hidden))
                        null.append(True)
                    owner.append(b)
            # stacked before the autocast: CPU autocast refuses to stack the float16
            # embeddings of the cache ("Unexpected floating ScalarType")
            images = self._work(torch.stack(embeddings[start:start + len(chunk)]))
            with torch.no_grad(), self.pipeline.lock, self._grounding_precision():
                stacked = torch.stack(states)
                if any(null):
                    nq = self.model.grounding.null_query.detach().float().cpu()
                    stacked = torch.where(torch.tensor(null)[:, None], nq[None].expand_as(stacked), stacked)
                out = self.model.ground(channels, images, stacked, torch.tensor(owner))
                logits = unletterbox(out.logits.float(), box).cpu().numpy() > logit_cut
                scores = out.presence.float().cpu().numpy()
                present = scores >= slice_cut
            for q, (b, j) in enumerate((b, j) for b in range(len(chunk)) for j in range(count)):
                presence[j] = max(presence[j], float(1.0 / (1.0 + np.exp(-scores[q]))))
                if not present[q] or not logits[q].any():
                    continue
                i = chunk[b]
                view = self.view(axis, i)
                sl: list[Any] = [slice(None)] * 3
                sl[axis] = i
                masks[j][tuple(sl)] = view.from_display(logits[q])
        for j in range(count):  # found on no slice: no voxel anywhere
            if presence[j] < mcfg.presence_threshold or mcfg.presence_threshold >= 1:
                masks[j][...] = False
        return masks, presence

    def _grounding_precision(self) -> Any:
        """bfloat16 autocast for the grounding module where the CPU computes it natively
        (as the LLM), else nothing."""
        import contextlib

        if self.model.device.type == "cpu" and self.model.llm_quantized == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _hint_tensors(self, hints: Hints, view: SliceView) -> torch.Tensor | None:
        """The hint maps ``(3, S, S)`` on the grounding module's working grid, or None."""
        if hints.empty:
            return None
        box_geom = self._grounding_box(view)
        shape = self.image.shape

        def to_input(x: float, y: float) -> tuple[float, float]:
            # (x, y) = the two in-plane ITK indices -> raw slice (row, col) = (y, x)
            raw_rows = shape[[a for a in (0, 1, 2) if a != view.axis][0]]
            raw_cols = shape[[a for a in (0, 1, 2) if a != view.axis][1]]
            if not (-0.5 <= x <= raw_cols - 0.5 and -0.5 <= y <= raw_rows - 0.5):
                raise InputError(f"hint point ({x}, {y}) lies outside the slice "
                                 f"({raw_cols} x {raw_rows} voxels)")
            r, c = view.display_point(y, x, shape)
            return box_geom.to_input_xy(c, r)

        box = None
        if hints.box is not None:
            x0, y0, x1, y1 = hints.box
            corners = [to_input(x0, y0), to_input(x1, y1)]
            xs = sorted(p[0] for p in corners)
            ys = sorted(p[1] for p in corners)
            box = (xs[0], ys[0], xs[1], ys[1])
        points = []
        for x, y, lab in hints.points:
            if int(lab) not in (0, 1):
                raise InputError("point labels must be 1 (inside) or 0 (outside)")
            px, py = to_input(x, y)
            points.append((px, py, int(lab)))
        return hint_maps(box_geom.size, box, points)


def with_not_found(text: str, not_found: list[str], volume: bool) -> str:
    """The answer text with a note for each structure the grounding module did not find."""
    if not not_found:
        return text
    where = "this volume" if volume else "this slice"
    return (text + " " if text else "") + " ".join(f"[Not found in {where}: {name}.]"
                                                   for name in not_found)


class _Streamer:
    """Turns generated token ids into text pieces for ``on_token`` callbacks."""

    def __init__(self, tokenizer: Any, callback: Callable[[str], bool | None]) -> None:
        self.tokenizer = tokenizer
        self.callback = callback
        self.ids: list[int] = []
        self.sent = ""
        self.cancelled = False

    def __call__(self, token_id: int) -> bool:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for more tokens
            return True
        piece, self.sent = text[len(self.sent):], text
        if piece and self.callback(piece) is False:
            self.cancelled = True
            return False
        return True


def _tensor_bytes(obj: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or a KV cache object holding tensors
    in attributes, lists or dicts, a few levels deep); storages counted once."""
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return int(obj.untyped_storage().nbytes())
    if obj is None or depth > 4 or isinstance(obj, (str, bytes, int, float, bool)):
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o, seen, depth + 1) for o in list(obj))
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o, seen, depth + 1) for o in list(obj.values()))
    if hasattr(obj, "__dict__"):
        return sum(_tensor_bytes(o, seen, depth + 1) for o in list(vars(obj).values()))
    return 0
