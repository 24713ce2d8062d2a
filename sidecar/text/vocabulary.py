"""The words the sidecar understands, in one place: the text search (zero_shot), the instant playlist's
parser (sidecar/instant) and the query schema (schemas/instant.py) all read them from here.

A concept is a word with its synonyms and the measurable side of it: which tags and which DSP features speak
for it, with signed weights. Tags are named by their word, whichever network predicts it: MusiCNN's 50 Million
Song Dataset tags (stored under their own names) and the 50 MagnaTagATune tags of its MTT network (stored as
"mtt:<tag>"); a word both predict ("electronic", "rock") counts once, as the mean of the two.
sidecar/text/calibration.py turns a recipe into a per-track score on the library's own scale.

DESCRIPTORS are the curated concepts (styles, instruments, moods, what the DSP analysis measures), written
from the tags of the quality corpus's dev albums (scripts/quality_text.py measures them); every tag is also a
concept of its own (TAG_CONCEPTS for the MSD tags, which the instant query schema names, MTT_TAG_CONCEPTS for
the MTT tags the MSD set lacks), except where a descriptor already stands for its word.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock",
    "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)
# MagnaTagATune's 50 tags (musicnn's MTT networks), stored in a track's tags with this prefix
MTT_PREFIX = "mtt:"
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano", "ambient",
    "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals", "no vocals",
    "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft", "sitar", "solo",
    "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello",
    "no voice", "weird", "country", "metal", "female voice", "choral",
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

# The DSP features a concept may weigh; "minor" is 1 for a minor scale.
FEATURES = ("tempo_bpm", "loudness_db", "onset_rate", "pulse_clarity", "percussiveness", "brightness", "dynamics_db", "key_strength", "minor")

# Genre names, which also filter on the tracks' genre tags in an instant playlist. Words that describe a sound
# more than name a genre (orchestral, ambient, chill, dance...) are left to the audio tags and concepts alone.
GENRE_WORDS = (
    "rock", "pop", "jazz", "metal", "classical", "electronic", "hip hop", "hip-hop", "rap", "folk", "blues", "country",
    "soul", "funk", "punk", "reggae", "techno", "house", "trance", "disco", "r&b", "rnb", "indie", "alternative",
    "soundtrack", "latin", "gospel", "ska", "grunge", "dubstep", "drum and bass", "new age", "lo-fi", "opera", "swing",
    "bossa nova", "emo", "hardcore", "industrial", "synthwave", "electro", "edm", "trip hop",
)


# Words that make what follows them unwanted ("no vocals", "without drums")
NEGATIONS = ("no", "not", "without", "non", "avoid", "except", "minus", "nothing", "none", "never")


def words_of(text: str) -> list[str]:
    """Text as the lower-case words the vocabulary's phrases are made of."""
    return re.findall(r"[\w&'#+-]+", text.lower())


@dataclass(frozen=True)
class Concept:
    name: str
    phrases: tuple[str, ...]
    tags: dict[str, float] = field(default_factory=dict)  # tag word (either network's, any case) -> signed weight
    features: dict[str, float] = field(default_factory=dict)  # DSP feature -> signed weight (+: higher is more like it)


def _c(name: str, phrases: str, features: dict[str, float] | None = None, **tags: float) -> Concept:
    """A descriptor: its phrases separated by '|', its tags as keywords (underscores stand for spaces)."""
    return Concept(name, tuple(p.strip() for p in phrases.split("|")), {t.replace("_", " "): w for t, w in tags.items()}, features or {})


# Each recipe is the measurable side of the word. Tags one network lacks simply do not count where a library has
# no analysis by it (calibration.py), so every concept keeps a part the MSD tags or the DSP features can score.
DESCRIPTORS = (
    _c("orchestral", "orchestral | orchestra | symphonic | symphony | film score | cinematic | epic score | classical music | "
       "classical | strings", {"percussiveness": -0.5},
       classical=1, strings=1, violin=0.5, cello=0.5, instrumental=0.3, electronic=-0.5, techno=-0.5, beat=-0.3, dance=-0.3),
    _c("strings", "string section | violin | violins | cello | string orchestra | string instruments",
       strings=1, violin=1, cello=0.5, classical=0.5),
    _c("choir", "choir | choral | chanting | voices in unison | chorus of singers", choir=1, choral=1, opera=0.5),
    _c("brass", "brass | horns | trumpets | fanfare | battle music | march", {"loudness_db": 0.5, "dynamics_db": 0.5},
       classical=0.5, loud=0.5),
    # electronic music as libraries mostly hold it, with produced beats (the 1980s chip sound is chiptune's)
    _c("electronic", "electronic | electronic music | synth | synths | synthesizer | synthesizers | synthesizer music | "
       "electronica | electro",
       electronic=1, synth=0.5, electronica=0.5, electro=0.5, beats=0.5, drums=0.5, classical=-0.5, strings=-0.5, guitar=-0.3,
       metal=-0.3, **{"Hip-Hop": 0.3, "80s": -0.3}),
    _c("electronic_dance", "electronic dance | techno | edm | dance music | club music | rave | trance | house music | "
       "four on the floor | club", {"pulse_clarity": 0.5},
       techno=1, dance=1, House=0.5, beat=0.5, beats=0.5, electronic=0.5, party=0.3, **{"Hip-Hop": 0.3, "80s": -0.3}),
    _c("bass", "bass | bassline | heavy bass | sub bass | drum and bass | dnb | breakbeat | dubstep", {"percussiveness": 0.3},
       beats=1, drums=0.5, electronic=0.5, dance=0.3, **{"Hip-Hop": 0.3}),
    _c("percussive", "percussive | drums | drum heavy | rhythmic | beat | beats | groove",
       {"percussiveness": 0.5, "pulse_clarity": 0.5}, beat=1, beats=1, drums=1),
    # "ambient" in the MSD (last.fm) sense goes with chillout and electronica; MTT's own "ambient" also fires on
    # quiet classical music, so the orchestral instruments count against it
    _c("ambient", "ambient | atmospheric | atmosphere | soundscape | drone | drones | ambient electronica | space music",
       {"percussiveness": -0.3}, ambient=1, chillout=1, chill=0.5, electronica=0.5, new_age=0.5, no_vocals=0.3,
       loud=-0.5, metal=-0.5, vocals=-0.5, classical=-0.3, strings=-0.3),
    _c("calm", "calm | slow | relaxing | peaceful | soothing | meditative | sleep", {"onset_rate": -0.5, "tempo_bpm": -0.3,
       "loudness_db": -0.3}, slow=1, soft=0.5, quiet=0.5, Mellow=0.5, chill=0.3, fast=-0.5),
    _c("quiet", "quiet | soft | delicate | hushed", {"loudness_db": -0.5}, quiet=1, soft=1, loud=-0.5),
    _c("dark", "dark | gloomy | ominous | sinister | eerie | menacing", {"brightness": -1, "minor": 0.5}, sad=0.3, happy=-0.3),
    _c("bright", "bright | cheerful | sunny | sparkling | uplifting | joyful", {"brightness": 0.5, "minor": -0.5}, happy=1),
    _c("sad", "sad | melancholic | mournful | sorrowful | sad sounding", {"minor": 0.5}, sad=1),
    _c("minor", "minor key | minor tonality", {"minor": 1}),
    _c("major", "major key | major tonality", {"minor": -1}),
    _c("upbeat", "upbeat | energetic | fast | lively | high energy", {"tempo_bpm": 0.5, "onset_rate": 0.5, "loudness_db": 0.3},
       fast=1),
    _c("driving", "driving | pounding | steady beat", {"pulse_clarity": 1, "percussiveness": 1}),
    _c("sparse", "sparse | minimal | spacious", {"onset_rate": -1, "loudness_db": -0.5}),
    _c("busy", "busy | dense | frantic | hectic", {"onset_rate": 1}),
    _c("loud", "loud | aggressive | intense | powerful | heavy | brutal", {"loudness_db": 1, "dynamics_db": -0.3},
       loud=1, metal=0.3),
    _c("dynamic", "dynamic | dramatic | building | crescendo", {"dynamics_db": 1}),
    _c("metal", "metal | metal music | heavy metal | death metal | thrash metal | black metal | female fronted metal | heavy music",
       metal=1, heavy_metal=1, hard_rock=0.5, guitar=0.3, loud=0.3, classical=-0.3),
    _c("rock", "rock | rock music | hard rock | guitar rock | rock band",
       rock=1, hard_rock=0.5, classic_rock=0.3, alternative_rock=0.3, guitar=0.5),
    _c("guitar", "guitar | guitars | guitar music | electric guitar | distorted guitar | riffs | shredding",
       guitar=1, rock=0.5, metal=0.5),
    # chip music: the synthetic, bright, catchy instrumental sound of 1980s home computers and consoles
    _c("chiptune", "chiptune | 8-bit | 8 bit | chip music | retro video game music | tracker module | amiga | demoscene | bleeps",
       synth=0.5, electro=0.5, catchy=0.5, happy=0.3, no_vocals=0.3, electronic=0.3, classical=-0.5, strings=-0.5,
       ambient=-0.3, vocals=-0.3, **{"80s": 1}),
    _c("vocals", "vocals | vocal | singing | singer | voice | lyrics | sung",
       vocals=1, singing=1, vocal=1, voice=0.5, female_vocalists=0.5, male_vocalists=0.5, instrumental=-0.5, no_vocals=-0.5),
    _c("female_vocals", "female vocals | female singer | woman singing | female voice",
       female_vocal=1, female=1, woman=0.5, female_vocalists=1, female_voice=0.5),
    _c("male_vocals", "male vocals | male singer | man singing | male voice",
       male_vocal=1, male=1, man=0.5, male_vocalists=1, male_voice=0.5),
    _c("instrumental", "instrumental | instrumental music | no vocals | without singing",
       instrumental=1, no_vocals=1, no_vocal=1, no_voice=0.5, vocals=-0.5),
)  # fmt: skip

_DESCRIBED = {w.lower() for c in DESCRIPTORS for w in (c.name, *c.phrases)}
TAG_CONCEPTS = tuple(Concept(t, (t.lower(),) + TAG_SYNONYMS.get(t, ()), tags={t: 1.0}) for t in MSD_TAGS)
TAG_CONCEPTS_BY_NAME = {c.name: c for c in TAG_CONCEPTS}
# (not the negative tags: "no vocal" is the instrumental concept; a clause "no vocal" is a negated "vocal")
MTT_TAG_CONCEPTS = tuple(
    Concept(t, (t,), tags={t: 1.0}) for t in MTT_TAGS if t not in {m.lower() for m in MSD_TAGS} and not t.startswith("no ")
)
# what the text search matches prompts against: the descriptors, and every tag no descriptor stands for
LEXICON = DESCRIPTORS + tuple(c for c in TAG_CONCEPTS + MTT_TAG_CONCEPTS if c.name.lower() not in _DESCRIBED)
CONCEPTS_BY_NAME = {c.name: c for c in LEXICON}
