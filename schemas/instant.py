"""Instant playlists from a sentence: the request, the structured query it is understood as, and the answer.

`InstantQuery` is all that either parser may produce: the deterministic one in sidecar/instant/parser.py, or an
optional LLM, whose JSON answer is validated against this model and dropped when it does not fit. It holds
names from closed vocabularies, numbers and plain words, never SQL or code.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from sidecar.text.vocabulary import DESCRIPTORS, MSD_TAGS

RANGE_FEATURES = (
    "tempo_bpm", "energy", "loudness_db", "brightness", "percussiveness", "dynamics_db", "pulse_clarity", "onset_rate", "key_strength",
)
CONCEPTS = tuple(c.name for c in DESCRIPTORS)
KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"DB": "C#", "EB": "D#", "GB": "F#", "AB": "G#", "BB": "A#", "CB": "B", "FB": "E", "E#": "F", "B#": "C"}

MsdTag = Literal[MSD_TAGS]  # type: ignore[valid-type]
Concept = Literal[CONCEPTS]  # type: ignore[valid-type]
Feature = Literal[RANGE_FEATURES]  # type: ignore[valid-type]
Key = Literal[KEYS]  # type: ignore[valid-type]
_TAG_BY_LOWER = {t.lower(): t for t in MSD_TAGS}


class FeatureRange(BaseModel):
    """A hard filter on one DSP feature: min <= value <= max (either may be open)."""

    model_config = ConfigDict(extra="forbid")
    feature: Feature
    min: float | None = None
    max: float | None = None
    percentile: bool = Field(
        default=False, description="min and max are the library's percentile ranks (0..1), for relative words (loud, quiet)"
    )

    @model_validator(mode="after")
    def _sane(self):
        if self.min is None and self.max is None:
            raise ValueError("a feature range needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        if self.percentile and any(v is not None and not 0 <= v <= 1 for v in (self.min, self.max)):
            raise ValueError("percentile bounds lie in 0..1")
        return self


class InstantQuery(BaseModel):
    """What a sentence asks for. Tags and concepts are soft-ish (per-library percentile thresholds); feature
    ranges, key, scale and metadata are hard filters; `text` is what is left, for the text search."""

    model_config = ConfigDict(extra="forbid")
    include_tags: list[MsdTag] = Field(default_factory=list, max_length=20, description="MusiCNN tags the tracks should have")
    exclude_tags: list[MsdTag] = Field(default_factory=list, max_length=20)
    include_concepts: list[Concept] = Field(default_factory=list, max_length=20, description="descriptors: calm, orchestral, ...")
    exclude_concepts: list[Concept] = Field(default_factory=list, max_length=20)
    features: list[FeatureRange] = Field(default_factory=list, max_length=10)
    key: Key | None = None
    scale: Literal["major", "minor"] | None = None
    year_min: int | None = Field(default=None, ge=1000, le=2999)
    year_max: int | None = Field(default=None, ge=1000, le=2999)
    artist: str | None = Field(default=None, min_length=1, max_length=200)
    album: str | None = Field(default=None, min_length=1, max_length=200)
    genres: list[str] = Field(default_factory=list, max_length=10, description="genre words matched against the tracks' genre tags")
    text: str = Field(default="", max_length=500, description="the rest of the request, for the text search")
    exclude_text: list[str] = Field(default_factory=list, max_length=10, description="other things not wanted, for the text search")

    @field_validator("include_tags", "exclude_tags", mode="before")
    @classmethod
    def _tag_case(cls, v):
        if isinstance(v, list):
            return [_TAG_BY_LOWER.get(t.lower(), t) if isinstance(t, str) else t for t in v]
        return v

    @field_validator("include_tags", "exclude_tags", "include_concepts", "exclude_concepts", "genres", "exclude_text")
    @classmethod
    def _unique(cls, v: list) -> list:
        return list(dict.fromkeys(v))

    @field_validator("genres", "exclude_text")
    @classmethod
    def _short_words(cls, v: list[str]) -> list[str]:
        if any(not w.strip() or len(w) > 100 for w in v):
            raise ValueError("each entry must be 1 to 100 characters")
        return [w.strip() for w in v]

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v):
        if isinstance(v, str):
            k = v.strip().replace("♯", "#").replace("♭", "b")
            k = k[:1].upper() + k[1:]
            return _FLATS.get(k.upper(), k)
        return v

    @field_validator("year_max")
    @classmethod
    def _years(cls, v: int | None, info: ValidationInfo) -> int | None:
        lo = info.data.get("year_min")
        if v is not None and lo is not None and v < lo:
            raise ValueError("year_max must be at least year_min")
        return v

    def is_empty(self) -> bool:
        return self == InstantQuery()


class InstantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=25, ge=1, le=200)
    model: str | None = Field(default=None, max_length=64, description="audio model for the text search (vector where it takes text)")
    use_llm: bool = Field(default=False, description="ask the configured LLM to fill the query; the rules parse is the fallback")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be blank")
        return v


class InstantTrack(BaseModel):
    track_id: str
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    genre: str | None = None
    year: int | None = None
    tempo_bpm: float | None = None
    key: str | None = None
    scale: str | None = None
    score: float
    reasons: list[str] = Field(default_factory=list)


class InstantPlaylist(BaseModel):
    text: str
    query: InstantQuery = Field(description="how the request was understood")
    applied: InstantQuery = Field(description="what was applied: metadata no track has dropped, fallbacks added (see notes)")
    parsed_by: Literal["rules", "llm"]
    llm_error: str | None = Field(default=None, description="why the LLM's answer was not used, when it was asked")
    notes: list[str] = Field(default_factory=list, description="filters not applied, thresholds relaxed, conflicts resolved")
    ranked_by: list[str] = Field(default_factory=list)
    tag_threshold: float | None = Field(default=None, description="percentile threshold the tag and concept filters used")
    library: int = Field(description="analysed tracks")
    candidates: int = Field(description="tracks that passed every filter")
    tracks: list[InstantTrack]
