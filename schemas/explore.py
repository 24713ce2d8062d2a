"""Requests and responses of the exploration API: song path, alchemy, sonic fingerprint, music map, similar
artists and track search. Where AudioMuse-AI has the same endpoint, parameter and field names are its own, so
its clients (the Navidrome plugin, its web pages) work unchanged; see docs/API.md."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelName = Field(default=None, max_length=64, description="embedder whose vectors are used; default: the first enabled")


def _ids(v: list[str], what: str) -> list[str]:
    out: list[str] = []
    for i in v:
        if not isinstance(i, str) or not i.strip() or len(i) > 64:
            raise ValueError(f"each {what} must be a non-empty id of at most 64 characters")
        if i not in out:
            out.append(i)
    return out


# ---- tracks as AudioMuse-AI returns them
class ExploreTrack(BaseModel):
    """A track with AudioMuse-AI's field names (item_id, title, author, album, distance)."""

    item_id: str
    title: str | None = None
    author: str | None = None
    album: str | None = None
    distance: float = Field(description="cosine distance (1 - cosine similarity) to what the endpoint compares with")


class PointTrack(ExploreTrack):
    x: float
    y: float


# ---- /api/find_path
class FindPathQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_song_id: str = Field(min_length=1, max_length=64)
    end_song_id: str = Field(min_length=1, max_length=64)
    max_steps: int = Field(default=25, ge=2, le=200, description="tracks in the path, start and end included")
    model: str | None = ModelName
    path_fix_size: bool | None = Field(
        default=None, description="AudioMuse-AI's flag; accepted and ignored: the path has max_steps tracks whenever the library has enough"
    )


class FindPathResponse(BaseModel):
    path: list[ExploreTrack] = Field(description="start first, end last; distance: to the track's ideal point on the path")
    total_distance: float = Field(description="sum of the cosine distances between consecutive tracks")
    model: str
    requested_steps: int


# ---- /api/alchemy
class AlchemyItem(BaseModel):
    """AudioMuse-AI's form of one ingredient."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)
    op: Literal["ADD", "SUBTRACT", "add", "subtract"]
    type: Literal["song", "artist"] = "song"


class AlchemyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: list[str] = Field(default_factory=list, max_length=100, description="track ids whose centroid is the target")
    subtract: list[str] = Field(default_factory=list, max_length=100, description="track ids whose neighbourhoods are excluded")
    add_artists: list[str] = Field(default_factory=list, max_length=20, description="artist names, each standing for its mean vector")
    subtract_artists: list[str] = Field(default_factory=list, max_length=20)
    items: list[AlchemyItem] = Field(
        default_factory=list, max_length=100, description="AudioMuse-AI's form: [{id, op: ADD|SUBTRACT, type: song|artist}]"
    )
    n: int = Field(default=25, ge=1, le=500)
    subtract_radius: float | None = Field(
        default=None, ge=0, le=2, description="cosine distance: candidates this close to a subtracted track are filtered out; "
        "default: each subtracted track's nearest tenth of the library (its own radius, whatever the model's scale)"
    )
    subtract_distance: float | None = Field(default=None, ge=0, le=2, description="AudioMuse-AI's name for subtract_radius")
    subtract_weight: float = Field(default=0.0, ge=0, le=1, description="also move the target away from the subtract centroid by this much")
    temperature: float = Field(default=0.05, ge=0, le=10, description="softmax temperature over cosine similarity; 0: deterministic top n")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="random seed for the sampling; the one used is returned")
    model: str | None = ModelName

    @field_validator("add", "subtract")
    @classmethod
    def _track_ids(cls, v: list[str]) -> list[str]:
        return _ids(v, "track id")

    @field_validator("add_artists", "subtract_artists")
    @classmethod
    def _artists(cls, v: list[str]) -> list[str]:
        if any(not a.strip() or len(a) > 200 for a in v):
            raise ValueError("each artist must be 1 to 200 characters")
        return v

    @model_validator(mode="after")
    def _merge(self) -> "AlchemyRequest":
        for it in self.items:
            add = it.op.upper() == "ADD"
            if it.type == "artist":
                (self.add_artists if add else self.subtract_artists).append(it.id)
            else:
                target = self.add if add else self.subtract
                if it.id not in target:
                    target.append(it.id)
        self.items = []
        if self.subtract_radius is None:
            self.subtract_radius = self.subtract_distance
        return self


class AlchemyPoint(BaseModel):
    item_id: str
    title: str | None = None
    author: str | None = None
    album: str | None = None
    x: float
    y: float


class AlchemyResult(PointTrack):
    similarity: float = Field(description="cosine similarity to the target")


class FilteredTrack(PointTrack):
    nearest_subtract: str = Field(description="the subtracted track (or artist) it was too close to")
    subtract_distance: float = Field(description="its cosine distance to that one")


class AlchemyResponse(BaseModel):
    results: list[AlchemyResult]
    filtered_out: list[FilteredTrack] = Field(
        description="candidates that would have been eligible but lie within subtract_radius of a subtracted track"
    )
    add_points: list[AlchemyPoint]
    sub_points: list[AlchemyPoint]
    centroid_2d: tuple[float, float] = Field(description="the target (add centroid) in the projection")
    subtract_centroid_2d: tuple[float, float] | None = None
    projection: str = Field(description="pca: a 2-D PCA fitted on the add, subtract and candidate tracks, scaled into [-1, 1]")
    model: str
    temperature: float
    seed: int | None = Field(description="the seed the sampling used; null when temperature is 0")
    subtract_radius: float = Field(description="the radius used (by default, the widest of the subtracted tracks' own)")


# ---- /api/sonic_fingerprint
class FingerprintQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=200)
    n: int = Field(default=25, ge=1, le=500)
    model: str | None = ModelName
    half_life_days: float = Field(default=30.0, gt=0, le=3650, description="a play this many days old weighs half as much as one now")
    include_known: bool = Field(default=False, description="also recommend the seed tracks themselves")
    max_listens: int = Field(default=500, ge=1, le=10000, description="most recent plays considered")
    favorite_weight: float = Field(default=2.0, ge=0, le=100, description="multiplier for starred tracks and tracks rated 4 or 5")


class FingerprintGenerateQuery(BaseModel):
    """AudioMuse-AI's /api/sonic_fingerprint/generate parameters (credentials are accepted and unused: the
    sidecar keeps the history itself)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=25, ge=1, le=500)
    navidrome_user: str | None = Field(default=None, max_length=200)
    navidrome_password: str | None = Field(default=None, max_length=500)
    jellyfin_user_identifier: str | None = Field(default=None, max_length=200)
    jellyfin_token: str | None = Field(default=None, max_length=500)
    user: str | None = Field(default=None, max_length=200)
    model: str | None = ModelName


class SeedTrack(BaseModel):
    item_id: str
    title: str | None = None
    author: str | None = None
    weight: float = Field(description="share of the fingerprint, summing to 1 over the seeds")
    plays: int
    favorite: bool


class TagScore(BaseModel):
    tag: str
    probability: float


class FingerprintResponse(BaseModel):
    user: str
    model: str
    half_life_days: float
    seeds: list[SeedTrack]
    top_tags: list[TagScore] = Field(description="weighted mean of the seeds' MusiCNN tag probabilities, highest first")
    results: list[ExploreTrack] = Field(description="nearest tracks to the fingerprint; distance: cosine distance to it")


# ---- /api/map
class MapQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = ModelName
    colour_by: Literal["tag", "genre", "artist", "album", "none"] = "tag"
    method: Literal["auto", "pca", "tsne", "umap"] = Field(
        default="auto", description="auto: t-SNE from 5 to 2,000 tracks, PCA otherwise; umap is refused (too slow on a CPU)"
    )
    percent: int = Field(default=100, ge=1, le=100, description="deterministic sample of the points (AudioMuse-AI: 25, 50, 75, 100)")

    @model_validator(mode="before")
    @classmethod
    def _british_or_not(cls, data):
        if isinstance(data, dict) and "color_by" in data and "colour_by" not in data:
            data = dict(data)
            data["colour_by"] = data.pop("color_by")
        return data


class MapPoint(BaseModel):
    item_id: str
    x: float
    y: float
    title: str | None = None
    author: str | None = None
    tag: str | None = Field(default=None, description="dominant MusiCNN tag (highest probability)")
    label: str | None = Field(default=None, description="the value of colour_by")


class LegendEntry(BaseModel):
    label: str | None
    count: int


class MapResponse(BaseModel):
    model: str
    projection: str = Field(description="pca or tsne")
    colour_by: str
    count: int
    total: int = Field(description="points before the percent sample")
    computed_at: float
    legend: list[LegendEntry]
    items: list[MapPoint]


class MapSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[str] = Field(min_length=1, max_length=5000)

    @field_validator("item_ids")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        return _ids(v, "item id")


class SelectedTrack(BaseModel):
    item_id: str
    title: str | None = None
    author: str | None = None
    album: str | None = None
    duration_s: float | None = None


class MapSelectionResponse(BaseModel):
    count: int
    duration_s: float
    tracks: list[SelectedTrack]


# ---- /api/similar_artists
class SimilarArtistsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artist: str | None = Field(default=None, min_length=1, max_length=200)
    artist_id: str | None = Field(default=None, min_length=1, max_length=200)
    n: int = Field(default=10, ge=1, le=200)
    include_component_matches: bool = False
    ef_search: int | None = Field(default=None, description="AudioMuse-AI's HNSW knob; accepted and unused (the search is exact)")
    server: str | None = Field(default=None, max_length=200, description="AudioMuse-AI's multi-server selector; accepted and unused")
    model: str | None = ModelName


class SongRef(BaseModel):
    item_id: str
    title: str | None = None


class ComponentMatch(BaseModel):
    artist1_representative_songs: list[SongRef] = Field(description="the queried artist's tracks closest to this artist")
    artist2_representative_songs: list[SongRef] = Field(description="this artist's tracks closest to the queried artist")


class SimilarArtist(BaseModel):
    artist: str
    artist_id: str | None = Field(default=None, description="the media server's artist id, where known")
    divergence: float = Field(description="cosine distance between the artists' mean vectors (AudioMuse-AI's name)")
    distance: float
    track_count: int
    component_matches: list[ComponentMatch] | None = None


# ---- /api/search_tracks
class SearchTracksQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    search_query: str = Field(default="", max_length=200)
    title: str = Field(default="", max_length=200)
    artist: str = Field(default="", max_length=200)
    start: int = Field(default=0, ge=0, le=100000)
    end: int | None = Field(default=None, ge=0, le=100100)
    server: str | None = Field(default=None, max_length=200)


class SearchTrack(BaseModel):
    item_id: str
    title: str | None = None
    author: str | None = None
    album: str = Field(description="'unknown' when missing, as AudioMuse-AI returns it")
    album_artist: str = "unknown"
