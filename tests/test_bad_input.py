"""The bad-input corpus (issue #6): broken, lying and oddly named files, and links that loop or lead out of
the library, all made from real music; each goes through the real ingest (walk or watcher, embedded bus,
real models, Milvus Lite). For each: the service stays up, the failure is listed with a clear reason, and
every good track beside it is analysed. Malformed and oversized Kafka messages and malformed HTTP
requests are at the end. (Zero-byte files, a text file named .flac, a truncated OGG and garbage named .mp3
are in tests/test_ingest.py, with retries.)"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
import soundfile as sf
from aiohttp.test_utils import TestClient, TestServer

from schemas.events import TrackUpserted
from sidecar import metrics
from sidecar.http.app import make_app
from sidecar.pipeline.audio import DecodeError, decode
from sidecar.config import Settings
from sidecar.service import Sidecar
from tests.kafka_broker import unique_name
from tests.test_ingest import until_idle

pytestmark = pytest.mark.slow

NFD, NFC = "Ame\u0301lie.ogg", "Am\u00e9lie.ogg"  # the same name to the eye: two files on Linux
NOT_UTF8 = os.fsdecode(b"caf\xe9 latin-1.ogg")  # bytes a Linux name may hold; Python keeps them as surrogates


# -- making the corpus from real files --------------------------------------------------------------------


def _ogg_crc(page: bytes) -> int:
    table = [0] * 256
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if r & 0x80000000 else (r << 1) & 0xFFFFFFFF
        table[i] = r
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


def ogg_with_huge_granule(ogg: bytes) -> bytes:
    """The last page (valid CRC) declares 2**62 samples: the length a reader takes from the header."""
    out = bytearray(ogg)
    last = out.rfind(b"OggS")
    out[last + 6:last + 14] = struct.pack("<q", 2**62)
    out[last + 22:last + 26] = b"\0\0\0\0"
    out[last + 22:last + 26] = struct.pack("<I", _ogg_crc(bytes(out[last:])))
    return bytes(out)


def ogg_with_bad_crc(ogg: bytes) -> bytes:
    """One page in the middle has a flipped byte, so its checksum fails: the reader drops that page."""
    out = bytearray(ogg)
    page = out.find(b"OggS", len(out) // 2)
    out[page + 100] ^= 0xFF
    return bytes(out)


def ogg_with_garbage_spliced(ogg: bytes) -> bytes:
    out = bytearray(ogg)
    page = out.find(b"OggS", len(out) // 2)
    return bytes(out[:page] + bytes(range(256)) * 20 + out[page:])


def pcm_of(path: Path, seconds: float) -> tuple:
    data, sr = sf.read(path, dtype="int16", frames=int(seconds * sf.info(path).samplerate))
    return data, sr


def wav_with_huge_sizes(src: Path) -> bytes:
    """RIFF and data chunks declaring about 4 GiB over 5 s of real audio."""
    buf = io.BytesIO()
    sf.write(buf, *pcm_of(src, 5), format="WAV", subtype="PCM_16")
    out = bytearray(buf.getvalue())
    data = out.find(b"data")
    out[4:8] = struct.pack("<I", 0xFFFFFFF8)
    out[data + 4:data + 8] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(out)


def flac_with_huge_sample_count(src: Path) -> bytes:
    """STREAMINFO declaring 2**36-1 samples (512 GiB as float32 stereo) over 5 s of real audio."""
    buf = io.BytesIO()
    sf.write(buf, *pcm_of(src, 5), format="FLAC")
    out = bytearray(buf.getvalue())
    at = 8 + 10  # "fLaC", the block header, then 10 bytes before rate/channels/bits/total samples
    packed = int.from_bytes(out[at:at + 8], "big") | (2**36 - 1)  # the low 36 bits are the sample count
    out[at:at + 8] = packed.to_bytes(8, "big")
    return bytes(out)


def mp3_with_huge_id3(mp3: bytes) -> bytes:
    """An ID3v2 tag whose header claims 256 MB (the largest syncsafe size) before real MP3 frames."""
    return b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + mp3


# name -> what must come of it: "analysed", or a piece of the failure reason
EXPECTED = {
    "truncated.mp3": "analysed",  # cut mid-stream: the decoder reads what is there, without error
    "header-only.mp3": "too short",
    "huge-riff.wav": "analysed",  # the sizes are clamped to the file
    "huge-granule.ogg": "analysed",
    "huge-sample-count.flac": "damaged or truncated stream",  # FLAC reports the missing samples as an error
    "huge-id3.mp3": "not a recognised audio format",  # the tag swallows the whole file
    "bad-crc.ogg": "analysed",  # the damaged page is skipped
    "spliced.ogg": "analysed",  # the garbage between pages is skipped
    NFD: "analysed",
    NFC: "analysed",
    "\U0001f3b5 emoji \u2014 \u0645\u0648\u0633\u064a\u0642\u0649.ogg": "analysed",
    "new\nline.ogg": "analysed",
    NOT_UTF8: "not valid UTF-8",
    "loop-a.ogg": "Too many levels of symbolic links",
    "loop-b.ogg": "Too many levels of symbolic links",
    "escape.ogg": "outside the music folders",
    "dangling.ogg": "broken symbolic link",
}


def build_corpus(music: Path, outside: Path, excerpts: list[Path], mp3: Path) -> None:
    """Every case of EXPECTED in `music` (the decodable ones from different real tracks, so each is its own
    track), plus a folder symlink loop and a folder symlink to `outside`, which the walk must not follow."""
    mp3_bytes = mp3.read_bytes()
    spare = iter(excerpts)
    ogg = lambda: next(spare).read_bytes()  # noqa: E731
    files = {
        "truncated.mp3": mp3_bytes[: len(mp3_bytes) // 10],
        "header-only.mp3": mp3_bytes[:2000],
        "huge-riff.wav": wav_with_huge_sizes(next(spare)),
        "huge-granule.ogg": ogg_with_huge_granule(ogg()),
        "huge-sample-count.flac": flac_with_huge_sample_count(next(spare)),
        "huge-id3.mp3": mp3_with_huge_id3(mp3_bytes[: len(mp3_bytes) // 10]),
        "bad-crc.ogg": ogg_with_bad_crc(ogg()),
        "spliced.ogg": ogg_with_garbage_spliced(ogg()),
    }
    for name in (NFD, NFC, "\U0001f3b5 emoji \u2014 \u0645\u0648\u0633\u064a\u0642\u0649.ogg", "new\nline.ogg", NOT_UTF8):
        files[name] = ogg()
    for name, data in files.items():
        (music / name).write_bytes(data)
    (music / "loop-a.ogg").symlink_to("loop-b.ogg")
    (music / "loop-b.ogg").symlink_to("loop-a.ogg")
    (music / "dangling.ogg").symlink_to("no-such-file.ogg")
    outside.mkdir(exist_ok=True)
    shutil.copy(next(spare), outside / "private.ogg")
    (music / "escape.ogg").symlink_to(outside / "private.ogg")
    (music / "sub").mkdir()
    shutil.copy(next(spare), music / "sub" / "inner.ogg")
    (music / "sub" / "again").symlink_to("..", target_is_directory=True)  # music/sub/again/sub/again/...
    (music / "elsewhere").symlink_to(outside, target_is_directory=True)


def shown(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def assert_corpus_outcome(sc: Sidecar, music: Path, good: list[str], cases: dict[str, str]) -> None:
    reasons = {Path(f["path"]).name: f["reason"] for f in sc.catalog.failures(1000)}
    analysed = {Path(r["path"]).name for r in sc.catalog._q("SELECT path FROM files")}
    for name, expected in cases.items():
        if expected == "analysed":
            assert name in analysed and name not in reasons, (name, reasons.get(name))
        else:
            assert expected in reasons.get(shown(name), ""), (name, reasons.get(shown(name)))
            assert name not in analysed
    assert set(good) <= analysed  # nothing else lost
    assert not any("again" in p or "elsewhere" in p or "private" in p for p in sc.catalog.files_under("/"))  # not followed
    n_analysed = len(good) + sum(v == "analysed" for v in cases.values())
    counts = sc.catalog.counts()
    assert counts["tracks"] == n_analysed
    for model in ("musicnn", "dsp"):
        assert counts["models"][model]["done"] == n_analysed


@pytest.fixture
async def sidecars(tmp_path, models_dir):
    made: list[Sidecar] = []

    async def start(music: Path, *, watch: bool = False, **overrides) -> Sidecar:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        if not (data / "models").exists():
            (data / "models").symlink_to(models_dir)
        settings = Settings(music_dir=[music], data_dir=data, reconcile_interval_s=0, debounce_s=0.3, **overrides)
        sc = Sidecar(settings)
        made.append(sc)
        await sc.start(watch=watch)
        await until_idle(sc)
        return sc

    yield start
    for sc in made:
        await sc.close()


def service_is_up(sc: Sidecar) -> bool:
    return all(not t.done() for t in sc._tasks if t.get_name() == "ingest") and not (
        sc.watcher and any(t.done() for t in sc.watcher._tasks)
    )


# -- the corpus through the real ingest ---------------------------------------------------------------------


async def test_the_corpus_through_the_startup_walk(sidecars, music_dir, tmp_path, genre_excerpts, demo_tracks):
    good = sorted(p.name for p in music_dir.iterdir())
    mp3 = next(t for t in demo_tracks if t.suffix == ".mp3")
    build_corpus(music_dir, tmp_path / "outside", genre_excerpts["electronic"], mp3)

    sc = await sidecars(music_dir)
    assert service_is_up(sc)
    assert_corpus_outcome(sc, music_dir, good + ["inner.ogg"], EXPECTED)
    assert await sc.bus.dead_letters() == []  # each is a listed failure, not a lost event
    async with TestClient(TestServer(make_app(sc))) as client:
        listed = {Path(f["path"]).name: f["reason"] for f in (await (await client.get("/api/failures")).json())["failures"]}
        assert {shown(n) for n, v in EXPECTED.items() if v != "analysed"} == set(listed)
        assert (await client.get("/health")).status == 200

    # a second walk changes nothing: no failed file is decoded again, nothing is analysed twice
    embedded, before = sc.worker.stats.embedded, sc.worker.stats.processed
    sent = await sc.reconciler.run(sc.roots)
    await until_idle(sc, processed=before + sent)
    assert sc.worker.stats.embedded == embedded
    assert_corpus_outcome(sc, music_dir, good + ["inner.ogg"], EXPECTED)


async def test_the_corpus_through_the_watcher(sidecars, music_dir, tmp_path, genre_excerpts, demo_tracks):
    good = sorted(p.name for p in music_dir.iterdir())
    sc = await sidecars(music_dir, watch=True)
    mp3 = next(t for t in demo_tracks if t.suffix == ".mp3")
    build_corpus(music_dir, tmp_path / "outside", genre_excerpts["electronic"], mp3)
    late = music_dir / "added-after.ogg"
    shutil.copy(genre_excerpts["orchestral"][0], late)  # after the bad names: the watcher must still be announcing files

    deadline = time.monotonic() + 180
    while sc.catalog.file(str(late)) is None or not await sc.is_idle():
        assert time.monotonic() < deadline and service_is_up(sc), sc.worker.stats
        await asyncio.sleep(0.2)
    assert_corpus_outcome(sc, music_dir, good + ["inner.ogg", late.name], EXPECTED)


async def test_a_file_deleted_between_its_event_and_its_decode_is_passed_over(sidecars, music_dir, excerpts, tmp_path):
    from sidecar.pipeline.bus.embedded import EmbeddedBus

    missing = metrics.SKIPPED.labels("missing")._value.get()
    doomed, after = music_dir / "doomed.ogg", music_dir / "after.ogg"
    shutil.copy(excerpts[6], doomed)
    shutil.copy(excerpts[7], after)
    async with EmbeddedBus(tmp_path / "data" / "events.sqlite3") as bus:  # the events wait in the log...
        for path in (doomed, after):
            st = path.stat()
            await bus.publish(TrackUpserted(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, source="test"))
    doomed.unlink()  # ...while the file goes
    sc = await sidecars(music_dir)

    assert metrics.SKIPPED.labels("missing")._value.get() == missing + 1
    assert sc.catalog.file(str(doomed)) is None and not sc.catalog.failures()  # gone: nothing to report
    assert sc.catalog.file(str(after)) is not None and sc.catalog.counts()["tracks"] == 6 and service_is_up(sc)


def test_each_decode_is_bounded_by_the_audio_not_by_the_header(tmp_path, genre_excerpts, demo_tracks):
    """The lying headers declare up to 2**62 samples; a decode holds no more than the audio really there."""
    mp3 = next(t for t in demo_tracks if t.suffix == ".mp3")
    music = tmp_path / "music"
    music.mkdir()
    build_corpus(music, tmp_path / "outside", genre_excerpts["electronic"], mp3)
    for name in ("huge-riff.wav", "huge-granule.ogg", "huge-sample-count.flac", "huge-id3.mp3", "bad-crc.ogg"):
        declared = sf.info(music / name).frames if name != "huge-id3.mp3" else None
        tracemalloc.start()
        try:
            try:
                audio = decode(music / name)
                assert audio.duration_s <= 31, name
            except DecodeError as e:
                assert "MemoryError" not in str(e) and "too big" not in str(e), (name, e)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 2**20, (name, declared, peak)
    # deterministic: the same bytes give the same audio, so a damaged file is not analysed again and again
    assert decode(music / "bad-crc.ogg").content_hash == decode(music / "bad-crc.ogg").content_hash


# -- malformed and oversized events on Kafka ------------------------------------------------------------------


async def test_malformed_and_oversized_kafka_messages_become_dead_letters(sidecars, music_dir, excerpts, kafka_bootstrap):
    from aiokafka import AIOKafkaProducer

    from sidecar.pipeline.bus.base import EventTooLargeError

    sc = await sidecars(
        music_dir, bus="kafka", kafka_bootstrap=kafka_bootstrap, kafka_topic=unique_name("library"),
        kafka_dead_letter_topic=unique_name("dead"), kafka_session_timeout_ms=2000, kafka_heartbeat_interval_ms=500,
    )
    limit = sc.settings.max_event_bytes
    before = sc.worker.stats.processed  # read before sending: the consumer starts on them while the rest are sent
    after, garbage_keyed = music_dir / "after.ogg", music_dir / "garbage-keyed.ogg"
    shutil.copy(excerpts[6], after)
    shutil.copy(excerpts[7], garbage_keyed)
    bad = [  # (value, what its dead letter's reason must say)
        (b"{not json", "Invalid JSON"),
        (b"\xff\xfe\x00\x81 binary", "Invalid JSON"),
        (b"[1, 2, 3]", "Input should be an object"),
        (b'{"type": "track.upserted"}', "path: Field required"),
        (b'{"type": "track.exploded", "path": "/x.ogg"}', "does not match any of the expected tags"),
        (b'{"type": "track.upserted", "path": "/x.ogg", "schema_version": 2}', "schema_version"),
        (b"", "EOF while parsing"),  # a tombstone
        (b'{"type": "track.upserted", "path": "' + b"a" * (limit + 10) + b'"}', "too large"),
    ]
    # another producer (not the sidecar, which refuses events over the limit) writes straight onto the topic;
    # one key keeps them in one partition, in order, with the valid event last
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * limit)
    await producer.start()
    try:
        for value, _ in bad:
            await producer.send_and_wait(sc.settings.kafka_topic, value=value, key=b"one-key")
        await producer.send_and_wait(sc.settings.kafka_topic, value=TrackUpserted(path=str(after)).model_dump_json().encode(), key=b"one-key")
        await producer.send_and_wait(
            sc.settings.kafka_topic, value=TrackUpserted(path=str(garbage_keyed)).model_dump_json().encode(), key=bytes(range(256)) * 4
        )
    finally:
        await producer.stop()
    await until_idle(sc, processed=before + len(bad) + 2)  # lag 0: every offset committed past them

    letters = await sc.bus.dead_letters()
    assert len(letters) == len(bad)
    for (value, expected), (kept, reason) in zip(bad, letters):
        assert expected in reason, (value[:60], reason)
        assert kept == value[:1024]  # an oversized one keeps an excerpt
    assert "over the limit of 1048576" in letters[-1][1]
    assert sc.catalog.file(str(after)) is not None and sc.catalog.file(str(garbage_keyed)) is not None
    assert service_is_up(sc)

    # the sidecar's own producer refuses an event over the limit, with the reason
    with pytest.raises(EventTooLargeError, match="over the bus's limit of 1048576 bytes"):
        await sc.bus.publish_raw(b"k", b"x" * (limit + 1))


# -- malformed HTTP requests ------------------------------------------------------------------------------------


MALFORMED_HTTP = [  # method, url, body, headers, status (None: any 4xx), field named (None: not checked)
    ("POST", "/api/recommendations", b"{not json", {"Content-Type": "application/json"}, 400, None),
    ("POST", "/api/recommendations", b"seeds=a&n=3", {"Content-Type": "application/x-www-form-urlencoded"}, 400, None),
    ("POST", "/api/recommendations", b"\xff\xfe\x00", {"Content-Type": "application/json"}, 400, None),
    ("POST", "/api/recommendations", b"", {"Content-Type": "application/json"}, 400, "body"),
    ("POST", "/api/recommendations", b"[]", {"Content-Type": "application/json"}, 400, None),
    ("POST", "/api/embed_text", b'{"text": "' + b"a" * (2 << 20) + b'"}', {"Content-Type": "application/json"}, 413, None),
    ("GET", "/api/similar_tracks?item_id=x&n=abc", None, {}, 400, "n"),
    ("GET", "/api/similar_tracks?item_id=x&n=-5", None, {}, 400, "n"),
    ("GET", "/api/tracks?limit=99999999999999999999999", None, {}, 400, "limit"),
    ("GET", "/api/tracks?nosuch=1", None, {}, 400, "nosuch"),
    ("GET", "/api/nosuch", None, {}, 404, None),
    ("DELETE", "/api/status", None, {}, 405, None),
]


async def test_malformed_http_requests_get_a_4xx_with_a_json_reason(sidecars, music_dir):
    sc = await sidecars(music_dir)
    async with TestClient(TestServer(make_app(sc))) as client:
        for method, url, body, headers, status, field in MALFORMED_HTTP:
            r = await client.request(method, url, data=body, headers=headers)
            got = await r.json()
            assert 400 <= r.status < 500 and (status is None or r.status == status), (method, url, r.status, got)
            assert got["error"] and (field is None or got["field"] == field), (method, url, got)
        r = await client.get("/api/tracks?query=%ff%fe%00")  # bytes that are not UTF-8: searched as U+FFFD, no error
        assert r.status == 200 and (await r.json())["tracks"] == []
        assert (await client.get("/health")).status == 200
