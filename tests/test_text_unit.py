"""The zero-shot text search's parts on small libraries made here: the per-library calibration (calibration.py),
the prompt's clauses and the concepts they name, and negations (zero_shot.py). The real sentence encoder."""
from __future__ import annotations

import numpy as np
import pytest

from sidecar.data.catalog import Catalog
from sidecar.text.calibration import Measurements
from sidecar.text.vocabulary import CONCEPTS_BY_NAME, MSD_TAGS, MTT_TAGS, Concept
from sidecar.text.zero_shot import ZeroShotSearch, parse_prompt


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from sidecar.plugins.loader import load_text_encoder

    return load_text_encoder("minilm", tmp_path_factory.mktemp("models"))


def noise_tags(rng: np.random.Generator, mtt: bool = False) -> dict[str, float]:
    """MusiCNN's tags as an analysis stores them, all near the floor."""
    tags = {t: float(rng.uniform(0.001, 0.05)) for t in MSD_TAGS}
    if mtt:
        tags |= {f"mtt:{t}": float(rng.uniform(0.001, 0.05)) for t in MTT_TAGS}
    return tags


def test_a_tag_high_on_every_track_does_not_dominate():
    rng = np.random.default_rng(0)
    common, rare = rng.uniform(0.5, 0.99, 40), rng.uniform(0.001, 0.05, 40)  # "electronic" on every track; "jazz" on few
    common[0], rare[0] = 0.995, 0.0005  # the most electronic track has the least jazz
    common[1], rare[1] = np.median(common), 0.06  # the jazziest is as electronic as the median track
    measured = Measurements()
    for c, r in zip(common, rare):
        measured.add(noise_tags(rng) | {"electronic": float(c), "jazz": float(r)}, {"tempo_bpm": float(rng.uniform(60, 180))})
    cal = measured.calibrate()
    score = cal.concept(Concept("both", (), tags={"electronic": 1, "jazz": 1}))
    # on raw probabilities the common tag's spread decides; calibrated, each tag counts by the track's standing on it
    assert common[0] + rare[0] > common[1] + rare[1] and score[1] > score[0]
    for word in ("electronic", "jazz"):  # each column on the library's own scale
        assert cal.words[word].mean() == pytest.approx(0, abs=1e-5) and cal.words[word].std() == pytest.approx(1, abs=1e-4)
    assert cal.features["tempo_bpm"].std() == pytest.approx(1, abs=1e-4)


def test_words_both_networks_predict_are_averaged_and_missing_values_sit_at_the_mean():
    rng = np.random.default_rng(1)
    measured = Measurements()
    for i in range(20):
        tags = noise_tags(rng, mtt=i < 15) | {"rock": 0.1 + 0.04 * i}  # 5 tracks analysed before the MTT tags
        if i < 15:
            tags["mtt:rock"] = 0.9 - 0.04 * i  # the MTT network disagrees
        measured.add(tags, {} if i == 0 else {"loudness_db": -30.0 + i, "scale": "minor" if i % 2 else "major"})
    cal = measured.calibrate()
    assert "strings" in cal.words and "harp" in cal.words  # MTT-only words, from the tracks that have them
    assert cal.words["rock"][15:].std() > 0 and np.abs(cal.words["rock"][:15]).max() < np.abs(cal.words["rock"][15:]).max()
    assert cal.features["loudness_db"][0] == 0 and cal.features["minor"][0] == 0  # no DSP analysis: no evidence either way
    assert "tempo_bpm" not in cal.features  # no track has it: left out, not a column of zeros


def test_a_concept_falls_back_to_what_the_library_has():
    rng = np.random.default_rng(2)
    without_mtt, with_mtt = Measurements(), Measurements()
    for i in range(30):
        features = {"percussiveness": float(rng.uniform(0.05, 0.5)), "loudness_db": float(rng.uniform(-30, -8))}
        without_mtt.add(noise_tags(rng), features)
        with_mtt.add(noise_tags(rng, mtt=True), features)
    strings, orchestral = CONCEPTS_BY_NAME["strings"], CONCEPTS_BY_NAME["orchestral"]  # strings: MTT tags only
    assert without_mtt.calibrate().concept(strings) is None and with_mtt.calibrate().concept(strings) is not None
    fallback = without_mtt.calibrate().concept(orchestral)  # its MSD tags and features still count
    assert fallback is not None and np.corrcoef(fallback, -without_mtt.calibrate().features["percussiveness"])[0, 1] > 0.3
    assert Measurements().calibrate().concept(orchestral) is None  # an empty library


def test_clauses_split_at_negations_and_keep_names_whole():
    assert [(c.text, c.negative) for c in parse_prompt("calm piano without drums, no vocals")] == [
        ("calm piano", False), ("drums", True), ("vocals", True)]
    assert [(c.text, c.negative) for c in parse_prompt("drum and bass, anything but metal")] == [
        ("drum and bass", False), ("metal", True)]
    assert parse_prompt(" , no ") == []


@pytest.fixture
def library(tmp_path):
    """A catalog of 24 tracks: r1 rock and jazz, r2 rock and no jazz, the rest neither but some jazz."""
    catalog = Catalog(tmp_path / "catalog.db")
    rng = np.random.default_rng(3)
    for i in range(24):
        tags = noise_tags(rng) | ({"rock": 0.9, "jazz": 0.8} if i == 0 else {"rock": 0.85} if i == 1 else {"jazz": float(rng.uniform(0, 0.6))})
        track_id, _ = catalog.resolve_track(f"/music/t{i}.ogg", f"hash-{i}", 1000, 1, {"title": f"t{i}"})
        catalog.record_embedding(track_id, "musicnn", "1", f"hash-{i}", tags=tags)
        catalog.record_embedding(track_id, "dsp", "1", f"hash-{i}", features={"tempo_bpm": 100.0 + i, "loudness_db": -20.0 + i / 4})
    yield catalog
    catalog.close()


def titles(catalog: Catalog, scored) -> list[str]:
    brief = catalog.tracks_brief([s.track_id for s in scored])
    return [brief[s.track_id]["title"] for s in scored]


def test_a_negation_lowers_the_tracks_that_match_it(library, encoder):
    search = ZeroShotSearch(library, encoder)
    rock, matched = search.search("rock", limit=24)
    assert titles(library, rock)[:2] == ["t0", "t1"] and matched[0].concept == "rock"
    no_jazz, matched = search.search("rock, no jazz", limit=24)
    assert titles(library, no_jazz)[0] == "t1" and titles(library, no_jazz).index("t0") > 1
    assert any(m.concept == "jazz" and m.weight < 0 for m in matched)
    assert {r.split(" (")[0] for r in no_jazz[0].reasons} == {"rock", "not jazz"}
    # the same as a negative prompt; and "no jazz" alone does not rank the rest by how little jazz they have
    negative, _ = search.search("rock", negative_prompts=["jazz"], limit=24)
    assert [s.track_id for s in negative] == [s.track_id for s in no_jazz]
    only, _ = search.search("no jazz", limit=24)
    jazzless = {s.track_id for s in only if s.score == 0}
    assert {s.track_id for s in only[:len(jazzless)]} == jazzless and titles(library, only)[-1] == "t0"


def test_a_clause_names_every_concept_it_contains_weighted_by_its_gist(library, encoder):
    search = ZeroShotSearch(library, encoder)
    matched = {m.concept: m.weight for m in search.match("slow dark ambient atmosphere")[0]}
    assert {"ambient", "dark", "calm"} <= set(matched) and matched["ambient"] > matched["calm"] > 0
    assert {m.concept for m in search.match("soundscape for sleeping")[0]} >= {"ambient"}
