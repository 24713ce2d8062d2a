"""The web page at `/`, driven in headless Chromium (Debian's `chromium`, through Playwright; no browser is
downloaded) against a real `sidecar serve` on the 51 analysed real tracks. The copies carry their original
tags, so the page shows real titles and artists. Each view: load it, do its main action, check that the
results the page shows are the ones the API gives, and save a screenshot (test-output/screenshots/, or
$SIDECAR_SCREENSHOT_DIR)."""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CACHE, REPO
from tests.sidecar_process import SidecarProcess

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(os.environ.get("SIDECAR_SCREENSHOT_DIR") or REPO / "test-output" / "screenshots")
NO_MEDIA_SERVER = "no media server is configured"


def copy_tags(excerpt: Path, music_cache: Path) -> None:
    """Give an excerpt (named PACKAGE-STEM.ogg) the tags of the track it was cut from."""
    import mutagen

    for package in (p.name for p in music_cache.iterdir()):
        if excerpt.stem.startswith(package + "-"):
            original = mutagen.File(music_cache / package / (excerpt.stem[len(package) + 1:] + excerpt.suffix))
            copy = mutagen.File(excerpt)
            for key in ("title", "artist", "album", "genre", "date"):
                if original.tags and key in original.tags:
                    copy[key] = original.tags[key]
            copy.save()
            return


@pytest.fixture(scope="module")
def library(analysed_library, trained, excerpts, tmp_path_factory) -> dict:
    """A copy of the analysed library with a trained text projection, whose files carry their real tags (a tag
    edit re-runs no model), plus one truncated file that cannot be decoded, so the page has a failure to show."""
    root = tmp_path_factory.mktemp("browser")
    music, data = root / "music", root / "data"
    shutil.copytree(analysed_library["music"], music)
    shutil.copytree(trained[0], data, symlinks=True)
    for f in music.rglob("*.ogg"):
        copy_tags(f, CACHE / "music")
    (music / "library" / "broken-download.ogg").write_bytes(excerpts[0].read_bytes()[:6000])
    return {"music": music, "data": data, "extra": excerpts[0]}


@pytest.fixture(scope="module")
def server(library, models_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("browser-log") / "sidecar.log"
    sc = SidecarProcess(library["music"], library["data"], models_dir, log)
    sc.start()
    try:
        status = sc.wait_idle()
        assert status["tracks"] == 51 and status["ingest"]["embedded"] == 0, (status, sc.log())  # tags only: no model ran
        yield sc
    finally:
        sc.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1360, "height": 900},
        )
        context.set_default_timeout(30_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, server):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.base = f"http://127.0.0.1:{server.port}"
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> None:
    page.mouse.move(0, 0) if name != "map" else None  # leave the map's tooltip in its picture
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api_post(server, path: str, body: dict):
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def pick(page, input_selector: str, typed: str, title: str) -> None:
    """Type into a track picker and choose `title` from its autocomplete list."""
    page.fill(input_selector, "")
    page.type(input_selector, typed, delay=15)
    option = page.locator(f"{input_selector} ~ ul li[role=option]", has_text=title).first
    option.click()


def titles(page, selector: str) -> list[str]:
    """The track titles of a result table (each title cell holds the title, then artist and album)."""
    return [t.split("\n")[0].strip() for t in page.locator(f"{selector} table.tracks tbody .title-cell").all_inner_texts()]


def track_id(server, title: str) -> str:
    return next(t["track_id"] for t in server.get("/api/tracks", query=title)["tracks"] if t["title"] == title)


def test_overview_shows_counts_models_failures_and_events_as_they_arrive(page, server, library):
    page.goto(page.base + "/")
    page.wait_for_selector("#ov-models table")
    cards = page.inner_text("#ov-cards")
    assert "51\nTRACKS" in cards.upper() and "1\nFAILED FILES" in cards.upper()
    models = page.inner_text("#ov-models")
    assert "musicnn" in models and "dsp" in models and "51" in models
    failure = page.inner_text("#ov-failures")
    assert "broken-download.ogg" in failure
    reason = server.get("/api/failures")["failures"][0]["reason"]
    assert reason and reason in failure  # the reason, as the catalog recorded it
    assert "No media server is configured" in page.inner_text("#ov-media")

    # a file arriving while the page is open shows up as it is analysed
    shutil.copy(library["extra"], library["music"] / "library" / "new-arrival.ogg")
    page.wait_for_function(
        "document.querySelector('#ov-feed').innerText.includes('1 analysed')", timeout=60_000, polling=500
    )
    page.wait_for_function("document.querySelector('#ov-cards').innerText.startsWith('52')", polling=500)
    assert "new-arrival.ogg" in page.inner_text("#ov-feed")
    shot(page, "overview")


def test_text_playlist_says_why_and_cannot_save_without_a_media_server(page, server):
    page.goto(page.base + "/#/text")
    page.fill("#tx-prompt", "calm orchestral music with strings")
    page.fill("#tx-neg", "drums")
    page.fill("#tx-limit", "15")

    # in the models' space (musicnn takes text through its trained projection), spread out by diversity
    assert page.is_checked("input[name=method][value=vector]") and page.is_checked("input[name=model][value=musicnn]")
    assert page.is_disabled("input[name=model][value=dsp]")  # no projection for it: it cannot take text
    page.select_option("#tx-merge", "intersection")
    page.fill("#tx-div", "0.4")
    page.click("#tx-go")
    page.wait_for_selector("#tx-out table.tracks")
    expected = api_post(server, "/api/recommendations", {
        "seeds": [{"text": "calm orchestral music with strings"}], "negative_prompts": ["drums"], "limit": 15,
        "models": ["musicnn"], "merge_strategy": "intersection", "min_model_agreement": 1, "diversity": 0.4,
    })
    assert titles(page, "#tx-out") == [t["title"] for t in expected["tracks"]] and len(expected["tracks"]) == 15
    assert "musicnn (intersection, diversity 0.4)" in page.inner_text("#tx-out .result-head")
    assert page.locator("#tx-out td.why").first.inner_text().startswith("musicnn")
    shot(page, "text-playlist-vectors")

    # zero-shot over what the analysis measured: says which concepts the words meant
    page.check("input[name=method][value=tags]")
    assert page.is_disabled("#tx-merge")
    page.click("#tx-go")
    page.wait_for_selector("#tx-out .result-head >> text=matched on the analysis")
    expected = api_post(server, "/api/recommendations/text", {
        "text": "calm orchestral music with strings", "negative_prompts": ["drums"], "limit": 15, "method": "tags",
    })
    assert titles(page, "#tx-out") == [t["title"] for t in expected["tracks"]]
    assert "The Battle for Wesnoth OST" in page.inner_text("#tx-out")  # real albums, from the files' tags
    why = page.locator("#tx-out td.why").first.inner_text()
    assert "orchestral (from 'strings'" in why and "not percussive (from 'drums'" in why
    assert "not percussive" in page.inner_text("#tx-out .small")  # what the prompt was understood as

    page.click("#tx-out form[data-saver] button")
    message = page.locator("#tx-out [data-no-media-server]")
    assert NO_MEDIA_SERVER in message.inner_text() and "SIDECAR_MEDIA_SERVER_URL" in message.inner_text()
    shot(page, "text-playlist")


def test_similar_songs_with_autocomplete(page, server):
    page.goto(page.base + "/#/similar")
    page.type("#sim-track", "Battle", delay=15)
    options = page.locator("#sim-track ~ ul li[role=option]")
    options.first.wait_for()
    offered = options.all_inner_texts()
    assert any(o.startswith("Battle Music") and "Aleksi Aubry-Carlson" in o for o in offered), offered
    assert all("battle" in o.lower() for o in offered)
    options.filter(has_text="Battle Music").first.click()  # picking a song searches at once
    page.wait_for_selector("#sim-out table.tracks")
    expected = server.get("/api/similar_tracks", item_id=track_id(server, "Battle Music"), n=20, eliminate_duplicates="true")
    assert titles(page, "#sim-out") == [t["title"] for t in expected] and len(expected) == 20
    assert page.inner_text("#sim-out h2") == "Like Battle Music — Aleksi Aubry-Carlson"
    shot(page, "similar-songs")


def test_song_path_between_two_songs(page, server):
    page.goto(page.base + "/#/path")
    pick(page, "#pa-start", "Battle Mus", "Battle Music")
    pick(page, "#pa-end", "Brainsu", "Brainsukker")
    page.fill("#pa-steps", "8")
    page.click("#pa-go")
    page.wait_for_selector("#pa-out .timeline")
    steps = [t.split("\n")[0] for t in page.locator("#pa-out .timeline .what b").all_inner_texts()]
    expected = server.get("/api/find_path", start_song_id=track_id(server, "Battle Music"),
                          end_song_id=track_id(server, "Brainsukker"), max_steps=8)
    assert steps == [t["title"] for t in expected["path"]] and len(steps) == 8
    assert steps[0] == "Battle Music" and steps[-1] == "Brainsukker"
    shot(page, "song-path")


def test_alchemy_draws_kept_and_filtered_tracks(page, server):
    page.goto(page.base + "/#/alchemy")
    pick(page, "#al-add", "Battle Mus", "Battle Music")
    pick(page, "#al-sub", "City Fa", "The City Falls")
    assert page.locator("#al-add-chips .chip").inner_text().startswith("Battle Music")
    assert page.inner_text("#al-radius-v") == "auto"  # each subtracted track's nearest tenth of the library
    page.fill("#al-n", "10")
    page.click("#al-go")
    page.wait_for_selector("#al-out table.tracks")
    expected = api_post(server, "/api/alchemy", {
        "add": [track_id(server, "Battle Music")], "subtract": [track_id(server, "The City Falls")], "n": 10,
        "temperature": 0,
    })
    assert titles(page, "#al-out > .table-wrap") == [t["title"] for t in expected["results"]] and expected["filtered_out"]
    assert f"{len(expected['filtered_out'])} filtered out" in page.inner_text("#al-out details summary")
    # the picture holds every kept and filtered track, both ingredients and the target
    n_points = page.evaluate("document.querySelector('#al-plot').plot.points.length")
    assert n_points == len(expected["results"]) + len(expected["filtered_out"]) + 2 + 1
    shot(page, "alchemy")


def test_music_map_hover_and_select_to_playlist(page, server):
    page.goto(page.base + "/#/map")
    page.wait_for_selector("#mp-legend span")
    expected = server.get("/api/map")
    legend = page.inner_text("#mp-legend")
    assert all(e["label"] in legend for e in expected["legend"])
    points = page.evaluate("""() => { const p = document.querySelector('#mp-plot').plot;
        return p.points.map((q, i) => ({id: q.item.id, title: q.item.title, artist: q.item.artist, ...p.screenOf(i)})); }""")
    assert len(points) == expected["count"] == 52

    # zoom in around a point, then hover it: its title and artist
    target = next(p for p in points if p["artist"] == "Aleksi Aubry-Carlson")
    page.mouse.move(target["x"], target["y"])
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(100)
    where = page.evaluate(f"document.querySelector('#mp-plot').plot.screenOf({points.index(target)})")
    page.mouse.move(where["x"] + 1, where["y"] + 1)
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    assert tip.inner_text().startswith(f"{target['title']}\nAleksi Aubry-Carlson")
    page.click("#mp-plot [data-reset]")

    # shift-drag a rectangle around a region: its tracks are listed, ready to become a playlist
    near = sorted(points, key=lambda p: (p["x"] - target["x"]) ** 2 + (p["y"] - target["y"]) ** 2)[:5]
    x0, y0 = min(p["x"] for p in near) - 6, min(p["y"] for p in near) - 6
    x1, y1 = max(p["x"] for p in near) + 6, max(p["y"] for p in near) + 6
    inside = sorted(p["title"] for p in points if x0 <= p["x"] <= x1 and y0 <= p["y"] <= y1)
    page.keyboard.down("Shift")
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_selector("#mp-sel table.tracks")
    assert sorted(titles(page, "#mp-sel")) == inside and len(inside) >= 5
    page.click("#mp-sel form[data-saver] button")
    assert NO_MEDIA_SERVER in page.locator("#mp-sel [data-no-media-server]").inner_text()
    page.mouse.move(target["x"], target["y"])  # the picture shows a tooltip
    tip.wait_for(state="visible")
    shot(page, "map")


def test_clustering_run_makes_named_playlists(page, server):
    page.goto(page.base + "/#/clustering")
    page.fill("#cl-iter", "20")
    page.click("#cl-go")
    page.wait_for_selector("#cl-job [data-status=done]", timeout=90_000)
    job_id = page.get_attribute("#cl-jobs tr[data-job]", "data-job")
    job = server.get(f"/api/clustering/{job_id}")
    cards = page.locator("#cl-job .playlist-card")
    assert cards.count() == len(job["playlists"]) >= 2
    first = job["playlists"][0]
    assert cards.first.locator("h3").inner_text() == first["name"]
    assert first["tracks"][0]["title"] in cards.first.inner_text()
    shot(page, "clustering")


def test_reembed_shows_progress_and_eta_then_cancels(page, server):
    page.goto(page.base + "/#/reembed")
    page.wait_for_selector("#re-out .empty")
    page.check("input[name=model][value=musicnn]")
    page.click("#re-go")
    # models really run: tracks are analysed one after another
    page.wait_for_function("parseInt(document.querySelector('#re-embedded')?.textContent) >= 2", timeout=60_000, polling=200)
    first = page.inner_text("#re-processed")
    page.wait_for_function(f"document.querySelector('#re-processed').textContent !== {first!r}", timeout=60_000, polling=200)
    assert page.locator("#re-out [data-status=running]").count() == 1
    eta = page.inner_text("#re-eta")
    assert eta[0].isdigit() and ":" in eta, eta  # a time left, in m:ss
    shot(page, "reembed-running")
    page.click("#re-cancel")
    page.wait_for_selector("#re-out [data-status=cancelled]")
    progress = server.get("/api/batch/progress")
    assert progress["status"] == "cancelled" and progress["processed"] < progress["total"]
    shot(page, "reembed-cancelled")


def test_api_token_is_kept_in_the_browser_and_sent_as_bearer(page, server):
    page.goto(page.base + "/#/overview")
    page.click("#token-box summary")
    page.fill("#token", "s3cret-token")
    page.dispatch_event("#token", "change")
    with page.expect_request(lambda r: r.url.endswith("/api/status")) as request:
        page.reload()
    assert request.value.headers.get("authorization") == "Bearer s3cret-token"
    assert page.evaluate("localStorage.getItem('sidecar.apiToken')") == "s3cret-token"
    assert page.input_value("#token") == "s3cret-token"
    page.fill("#token", "")
    page.dispatch_event("#token", "change")
    assert page.evaluate("localStorage.getItem('sidecar.apiToken')") is None
