"""The words the sidecar understands, in one place: the text search (zero_shot), the instant playlist's
parser (sidecar/instant) and the query schema (schemas/instant.py) all read them from here.

A concept is a word with its synonyms and the measurable side of it: which of MusiCNN's 50 MSD tags and which
DSP features speak for it, with signed weights. `Concept.score` turns that recipe into a per-track score from
the library's percentile ranks. New tag sets (another tagger's vocabulary) are more concepts of the same kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock",
    "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)
TAG_SYNONYMS = {
    "electronic": ("electronic music", "synth", "synthesizer music"),
    "dance": ("dance music", "club music", "edm"),
    "instrumental": ("instrumental music", "no vocals", "without singing"),
    "female vocalists": ("female singer", "woman singing"),
    "male vocalists": ("male singer", "man singing"),
    "Hip-Hop": ("hip hop", "rap"),
    "rnb": ("r&b", "rhythm and blues"),
    "House": ("house music", "deep house"),
    "chillout": ("chill out", "lounge"),
    "Mellow": ("mellow", "gentle"),
    "metal": ("heavy music", "metal music"),
    "guitar": ("guitar music", "electric guitar"),
}
VOCAL_TAGS = ("female vocalists", "male vocalists", "female vocalist")
DECADE_TAGS = {1960: "60s", 1970: "70s", 1980: "80s", 1990: "90s", 2000: "00s"}  # a decade's first year -> its MSD tag

# The DSP features a concept may weigh, in the column order of the feature matrices; "minor" is 1 for a minor scale.
FEATURES = ("tempo_bpm", "loudness_db", "onset_rate", "pulse_clarity", "percussiveness", "brightness", "dynamics_db", "key_strength", "minor")

# Genre names, which also filter on the tracks' genre tags in an instant playlist. Words that describe a sound
# more than name a genre (orchestral, ambient, chill, dance...) are left to the audio tags and concepts alone.
GENRE_WORDS = (
    "rock", "pop", "jazz", "metal", "classical", "electronic", "hip hop", "hip-hop", "rap", "folk", "blues", "country",
    "soul", "funk", "punk", "reggae", "techno", "house", "trance", "disco", "r&b", "rnb", "indie", "alternative",
    "soundtrack", "latin", "gospel", "ska", "grunge", "dubstep", "drum and bass", "new age", "lo-fi", "opera", "swing",
    "bossa nova", "emo", "hardcore", "industrial", "synthwave", "electro", "edm", "trip hop",
)


@dataclass(frozen=True)
class Concept:
    name: str
    phrases: tuple[str, ...]
    tags: dict[str, float] = field(default_factory=dict)  # tag -> signed weight
    features: dict[str, float] = field(default_factory=dict)  # DSP feature -> signed weight (+: higher is more like it)

    def score(self, tags: np.ndarray, features: np.ndarray) -> np.ndarray:
        """How much each track is like the concept, in [0, 1], from percentile ranks: `tags` (n, MSD_TAGS) and
        `features` (n, FEATURES), columns in those orders."""
        terms, weights = [], []
        for tag, w in self.tags.items():
            col = tags[:, MSD_TAGS.index(tag)]
            terms.append(col if w > 0 else 1 - col)
            weights.append(abs(w))
        for feat, w in self.features.items():
            col = features[:, FEATURES.index(feat)]
            terms.append(col if w > 0 else 1 - col)
            weights.append(abs(w))
        return np.average(np.stack(terms), axis=0, weights=weights).astype(np.float32)


# Words for what the DSP analysis measures, and for kinds of music the 50 tags lack. Each recipe is the
# measurable side of the word: orchestral music is tonal, dynamic and not percussive; dance music has a
# steady, clear pulse; and so on.
DESCRIPTORS = (
    Concept("upbeat", ("upbeat", "energetic", "fast", "lively", "high energy"),
            features={"tempo_bpm": 1, "loudness_db": 0.5, "onset_rate": 1, "pulse_clarity": 0.5}),
    Concept("calm", ("calm", "relaxing", "slow", "peaceful", "soothing", "sleep"),
            features={"tempo_bpm": -0.5, "loudness_db": -0.5, "onset_rate": -1, "percussiveness": -1}, tags={"chill": 0.5, "Mellow": 0.5}),
    Concept("dark", ("dark", "gloomy", "ominous", "sinister"), features={"brightness": -1}),
    Concept("bright", ("bright", "cheerful", "sunny", "sparkling"), features={"brightness": 1}, tags={"happy": 0.5}),
    Concept("minor", ("minor key", "melancholic", "sad sounding"), features={"minor": 1}, tags={"sad": 0.5}),
    Concept("major", ("major key", "joyful", "uplifting"), features={"minor": -1}, tags={"happy": 0.5}),
    Concept("driving", ("driving", "pounding", "steady beat", "four on the floor"),
            features={"pulse_clarity": 1, "percussiveness": 1}),
    Concept("sparse", ("sparse", "minimal", "spacious"), features={"onset_rate": -1, "loudness_db": -0.5}),
    Concept("busy", ("busy", "dense", "frantic", "hectic"), features={"onset_rate": 1}),
    Concept("loud", ("loud", "aggressive", "intense", "powerful"), features={"loudness_db": 1, "percussiveness": 0.5}),
    Concept("quiet", ("quiet", "soft", "delicate", "hushed"), features={"loudness_db": -1}),
    Concept("dynamic", ("dynamic", "dramatic", "building", "crescendo"), features={"dynamics_db": 1}),
    Concept("percussive", ("percussive", "drums", "drum heavy", "rhythmic"), features={"percussiveness": 1, "onset_rate": 0.5}),
    Concept("orchestral", ("orchestral", "orchestra", "symphonic", "cinematic", "film score", "classical", "strings", "epic score"),
            features={"percussiveness": -1, "brightness": -0.5, "key_strength": 0.5, "dynamics_db": 0.5, "pulse_clarity": -0.5},
            tags={"instrumental": 0.5, "electronic": -0.5, "dance": -0.5}),
    Concept("electronic_dance", ("electronic dance", "techno", "edm", "club", "rave", "trance"),
            features={"pulse_clarity": 1, "percussiveness": 0.5, "brightness": 0.5},
            tags={"electronic": 1, "dance": 1, "electro": 0.5, "House": 0.5, "electronica": 0.5}),
    Concept("vocals", ("vocals", "singing", "singer", "voice", "lyrics"), tags={t: 1 for t in VOCAL_TAGS}),
)
TAG_CONCEPTS = tuple(Concept(t, (t.lower(),) + TAG_SYNONYMS.get(t, ()), tags={t: 1.0}) for t in MSD_TAGS)
LEXICON = TAG_CONCEPTS + DESCRIPTORS
CONCEPTS_BY_NAME = {c.name: c for c in LEXICON}
