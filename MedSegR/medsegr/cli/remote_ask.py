"""``medsegr ask IMAGE "question" --server URL``: the question goes to a running engine
(``medsegr serve``) through :mod:`medsegr.client` instead of a model loaded here; the
same result files are written (segmentation, label map, JSON record, overlay). The
answer's progress (queued, slices encoded of the total, answering, masks) is shown on
stderr as a tqdm bar."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medsegr.errors import InputError, MedSegRError
from medsegr.io.images import MedicalImage


class EngineRequestError(MedSegRError):
    """The engine server could not answer (unreachable, refused, or failed)."""

    code = "engine_error"


class RemoteImageView:
    """What result writing reads from a chat session (the image, its normalised copy,
    slice views), for an image whose question a remote engine answered."""

    def __init__(self, image: MedicalImage, window: str | None) -> None:
        from medsegr.imaging.intensity import normalise

        self.image = image
        self.volume01 = normalise(image.array, image.modality, window)

    def view(self, axis: int, index: int) -> Any:
        from medsegr.imaging.slicing import slice_view

        return slice_view(self.image.shape, self.image.spacing, self.image.direction, axis, index)


#: what the progress bar says for each stage of an answer
STAGE_LABELS = {"queued": "waiting in the engine's queue", "started": "started",
                "encoding": "encoding slices", "answering": "answering", "masks": "decoding masks"}


class ProgressBar:
    """A tqdm bar on stderr that follows :class:`medsegr.client.Progress` reports: its
    description is the stage, its count the stage's done of total."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        self.stage: str | None = None
        self.reports: list[tuple[str, int, int]] = []

    def __call__(self, progress: Any) -> None:
        from tqdm import tqdm

        self.reports.append((progress.stage, progress.done, progress.total))
        label = STAGE_LABELS.get(progress.stage, progress.stage)
        if progress.stage == "queued" and progress.done:
            label += f" ({progress.done} ahead)"
        if self.bar is None or progress.stage != self.stage:
            self.close()
            self.stage = progress.stage
            self.bar = tqdm(total=progress.total or None, desc=label, unit="slice" if
                            progress.stage == "encoding" else "it", file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0)
        if progress.total:
            self.bar.total = progress.total
        self.bar.n = progress.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def ask_remote(args: argparse.Namespace, image: MedicalImage, question: str, hints: Any,
               dicom_seg: Any = None, token: str | None = None, dicom_input: bool = False) -> int:
    """Ask the engine at ``args.server`` (with ``token``, read and checked with the other
    options), write the result files into ``args.out`` (and ``segmentation.dcm`` when
    ``dicom_seg``, a :class:`medsegr.io.dicom_seg.DicomSegPlan`, has a source series:
    the masks come back, the source files are here; ``dicom_input``: the image is DICOM)."""
    from medsegr.client import EngineClient, EngineError

    view = RemoteImageView(image, args.window)  # also checks --window before any upload
    try:
        client = EngineClient(args.server, token=token)
    except EngineError as exc:  # the URL was checked by the parser; this is a safety net
        raise InputError(f"--server {args.server}: {exc}") from None
    session_id = None
    progress = ProgressBar()
    try:
        info = client.check_version()
        session_id = client.create_session(image.array, image.spacing, image.origin,
                                           image.direction, modality=image.modality,
                                           window=args.window)
        answer = client.ask(session_id, question, volume=args.volume, axis=args.axis,
                            slice_index=args.slice, box=hints.box, points=hints.points or None,
                            max_new_tokens=args.max_new_tokens, on_progress=progress)
    except EngineError as exc:
        raise EngineRequestError(f"the engine at {client.url}: {exc}") from None
    finally:
        progress.close()
        if session_id is not None:
            try:
                client.delete_session(session_id)
            except EngineError:
                pass  # it expires on its own
    from medsegr.cli.outputs import write_results

    model = {**info["model"], "server": client.url, "api_version": info["api_version"],
             "engine_version": info["engine_version"]}
    if not answer.fine_tuned:
        print("note: the engine runs no fine-tuned MedSegR checkpoint; answers are not grounded "
              "in the image and masks are not meaningful.", file=sys.stderr)
    from medsegr.io.dicom_seg import answer_segments, staged_writer

    paths = write_results(args.out, view, question, answer, model,
                          extra=staged_writer(dicom_seg, answer_segments(answer), model))
    from medsegr.cli.outputs import print_answer, print_dicom_seg_messages

    print_dicom_seg_messages(dicom_seg, dicom_input)

    print_answer(answer, paths, args.json,
                 f"{answer.timings.get('server_total', answer.timings['total']):.2f} s on the "
                 f"engine at {client.url}")
    return 0
