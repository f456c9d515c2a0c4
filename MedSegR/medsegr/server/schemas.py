"""Request and response models of the ``/v1`` API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Finite = Annotated[float, Field(allow_inf_nan=False)]
AxisName = Literal["axial", "coronal", "sagittal", "k", "j", "i"]
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class AskRequest(BaseModel):
    """A question about the session's image: one slice (default: the middle one along
    ``axis``) or, with ``volume``, the whole volume."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="the question (at most the server's "
                          "max_question_chars, 2,000 by default)")
    volume: bool = Field(False, description="answer about the whole volume")
    axis: AxisName | Annotated[int, Field(ge=0, le=2)] = Field(
        "axial", description="axial, coronal, sagittal (from the direction matrix), or a "
        "raw array axis k/j/i or 0/1/2")
    slice_index: Annotated[int, Field(ge=0)] | None = Field(
        None, description="slice along axis (slice mode); default the middle slice")
    box: tuple[Finite, Finite, Finite, Finite] | None = Field(
        None, description="optional box hint x0, y0, x1, y1 in in-plane voxel indices "
        "(axial: i, j; coronal: i, k; sagittal: j, k)")
    points: list[tuple[Finite, Finite, Literal[0, 1]]] | None = Field(
        None, max_length=64, description="optional point hints [x, y, label], label 1 inside, "
        "0 outside")
    request_id: Annotated[str, Field(pattern=REQUEST_ID_PATTERN)] | None = Field(
        None, description="the client's id for this request (used to cancel it); the server "
        "makes one when absent")
    max_new_tokens: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="cap on generated tokens (default: the model's configuration)")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. unknown_session")
    message: str = Field(description="one-line reason")


class ErrorBody(BaseModel):
    """Every error reply."""

    error: ErrorDetail


class CodedConcept(BaseModel):
    scheme: str = Field(description="coding scheme designator, e.g. SCT (SNOMED CT)")
    value: str = Field(description="code value")
    meaning: str = Field(description="code meaning")


class SegmentTerminology(BaseModel):
    """What a segment shows, coded from the anatomy vocabulary; ``coded`` false (and
    every code null) when the name has no standard code: the free-text name is kept."""

    name: str
    coded: bool
    key: str | None = None
    standard_name: str | None = None
    category: CodedConcept | None = None
    type: CodedConcept | None = None
    type_modifier: CodedConcept | None = None
    region: CodedConcept | None = None
    region_modifier: CodedConcept | None = None
    color: list[int] | None = Field(None, description="recommended display colour, 0-255 RGB")


class SegmentMeasurement(BaseModel):
    """What the engine measured on the mask (never what the model wrote)."""

    mode: Literal["slice", "volume"]
    voxels: int
    area_cm2: float | None = Field(None, description="area on the slice (slice answers)")
    volume_ml: float | None = Field(None, description="volume (volume answers)")
    side: Literal["left", "right", "midline", "both"] | None = Field(
        None, description="the patient side of the mask's centroid against the body's "
        "midline, from the image direction; null without a patient orientation")
    intensity_mean: float | None = None
    intensity_sd: float | None = None
    intensity_unit: str = Field(description='"HU" on CT, "" (scanner units) otherwise')
    components: int = Field(description="connected pieces (26-connected)")
    extent_mm: dict[str, float] = Field(description="bounding box along the patient axes "
                                        "(right-left, anterior-posterior, inferior-superior), "
                                        "mm; a slice answer leaves out the axis through it")


class SegmentRecord(BaseModel):
    id: str
    name: str
    index: int
    voxels: int
    terminology: SegmentTerminology | None = None
    measured: SegmentMeasurement | None = None
    mask_url: str = Field(description="GET it (with the token) for the mask as gzip NRRD "
                          "(uint8 0/1) on the session image's exact grid")


class EngineWord(BaseModel):
    model: str = Field(description="the model's next word where the engine wrote its own")
    engine: str = Field(description="the word, name or phrase the engine wrote from its measurements")


class AnswerRecord(BaseModel):
    request_id: str
    session_id: str
    text: str = Field(description="the answer as a clinician reads it (no [SEG] markers)")
    raw_text: str = Field(description="the model's raw answer")
    mode: Literal["slice", "volume"]
    axis: int
    slice_index: int | None
    key_slices: list[int]
    fine_tuned: bool
    timings: dict[str, float] = Field(description="seconds: encode, prefill, decode, masks, "
                                      "total, queue_wait, server_total")
    tokens: dict[str, int]
    encoded_slices: int = Field(description="slices encoded for this answer (0: every "
                                "embedding was reused)")
    segments: list[SegmentRecord]
    not_found: list[str] = Field(default_factory=list, description="structures the answer "
                                 "named that the grounding module did not find (presence "
                                 "below the engine's threshold on every slice asked about): "
                                 "they have no segment, and the text says so")
    presence: list[float] = Field(default_factory=list, description="the grounding module's "
                                  "presence probability of each [SEG] of the answer, in the "
                                  "order the answer names them (the highest over the slices "
                                  "asked about)")
    engine_words: list[EngineWord] = Field(default_factory=list, description="words of the "
                                           "answer the engine wrote from its measurements where "
                                           "the model had written another ([generation] "
                                           "measured_words): a conclusion's name, a size word, "
                                           "a side, a size answer's opening, partner or "
                                           "conclusion")


class SessionRecord(BaseModel):
    session_id: str
    shape: list[int] = Field(description="numpy order (z, y, x)")
    spacing: list[float] = Field(description="mm, ITK order (x, y, z)")
    origin: list[float] = Field(description="LPS mm")
    direction: list[float] = Field(description="row-major 3x3 ITK direction matrix")
    modality: str
    is_2d: bool
    turns: int
    encoded_slices: int
    memory_bytes: int
    idle_s: float


class ServiceRecord(BaseModel):
    service: Literal["medsegr-engine"]
    api_versions: list[str]
    engine_version: str


class HealthRecord(BaseModel):
    status: Literal["ok"]
    api_version: str
    engine_version: str


class InfoRecord(BaseModel):
    engine_version: str
    api_version: str
    model: dict[str, Any] = Field(description="the loaded model: base parts with their "
                                  "SHA-256, checkpoint, fine-tuned or not, dtype")
    device: str
    memory: dict[str, Any]
    capabilities: dict[str, bool]
    limits: dict[str, float]
    queue: dict[str, Any]
    auth: bool = Field(description="whether requests need a bearer token")


class CancelRecord(BaseModel):
    request_id: str
    state: Literal["queued", "running"] = Field(
        description="queued: removed from the queue; running: stops at the next token")


#: what an answer stream sends (``POST .../ask/stream``), for the OpenAPI document
STREAM_DESCRIPTION = """Server-sent events (`text/event-stream`), each `event: NAME` with one
`data:` line of JSON:

* `queued` `{"request_id", "position"}`: requests ahead of this one;
* `started` `{"request_id", "queue_wait_s"}`: the model took it;
* `progress` `{"stage", "done", "total"}`: the phase of the answer, in order:
  `encoding` (slices encoded of those the question covers, several events in volume
  mode), `answering` (the language model reads and generates; `0` of `0`), `masks`
  (answer segments decoded);
* `text` `{"text"}`: the next piece of the raw answer text (may contain `<p>` and
  `[SEG]` markers), as it is generated;
* `answer`: the final answer (the same JSON as `POST .../ask`); the stream ends;
* `error` `{"error": {"code", "message", "status"}}`: the request failed or was
  cancelled; the stream ends.

Comment lines (`: ping`) keep the connection alive. Closing the connection cancels
the request."""

#: one event of an answer stream, as an OpenAPI 3.1 schema of a ``text/event-stream``
#: describes it (the event name and its ``data`` line; comments are not events)
STREAM_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string",
                  "enum": ["queued", "started", "progress", "text", "answer", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "one line of JSON: queued {request_id, position}; started "
                 "{request_id, queue_wait_s}; progress {stage, done, total}; text {text}; "
                 "answer: the AnswerRecord; error {error: {code, message, status}}"},
    },
}
