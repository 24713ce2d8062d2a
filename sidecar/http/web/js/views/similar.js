// Songs like one song: pick it by typing (autocomplete over the library), get the nearest tracks.
import { api } from "../api.js";
import { act, errorBox, fillModels, html, resultHead, track, trackPicker, trackTable, wireSavers } from "../ui.js";

export async function render(root, params) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Similar songs</h1><p>Start typing a title, artist or album, pick a song, and get its nearest neighbours.</p></div></div>
    <form class="panel" id="sim-form">
      <div class="grid two">
        <div><label for="sim-track">Song</label>
          <div class="picker"><input id="sim-track" type="search" placeholder="Type a title, artist or album…" required></div></div>
        <div class="row" style="align-items:end">
          <div style="flex:1"><label for="sim-model">Model</label><select id="sim-model"></select></div>
          <div style="width:90px"><label for="sim-n">Tracks</label><input id="sim-n" type="number" min="1" max="500" value="20"></div>
        </div>
      </div>
      <div class="form-actions">
        <label class="inline"><input type="checkbox" id="sim-dupes" checked> leave out duplicates of the same song</label>
        <span class="spacer"></span><button class="primary" type="submit" id="sim-go">Find similar songs</button>
      </div>
    </form>
    <section class="panel" id="sim-out"><div class="empty">Pick a song to begin.</div></section>`;

  const $ = (id) => root.querySelector(`#${id}`);
  await fillModels($("sim-model"));
  let seed = null;
  trackPicker($("sim-track"), (t) => { seed = t; search(); });

  let tracks = [];
  function search() {
    const out = $("sim-out");
    const id = $("sim-track").dataset.id;
    if (!id) {
      out.innerHTML = html`<div class="msg warn">Pick a song from the list that appears as you type.</div>`;
      return;
    }
    act($("sim-go"), out, async () => {
      const r = await api("/api/similar_tracks", {
        query: { item_id: id, n: $("sim-n").value, model: $("sim-model").value, eliminate_duplicates: $("sim-dupes").checked },
      });
      tracks = r.map(track);
      const name = seed ? `${seed.title}${seed.artist ? ` — ${seed.artist}` : ""}` : "this song";
      out.innerHTML = html`${resultHead(`Like ${name}`, `${tracks.length} tracks`)}${trackTable(tracks, {
        score: { label: "Similarity", value: (t) => 1 - t.distance }, emptyText: "No neighbours found.",
      })}`;
      wireSavers(out, () => [id, ...tracks.map((t) => t.id)], `Like ${name}`.slice(0, 200));
    }, "Searching…");
  }
  $("sim-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });

  // #/similar?id=... (the "similar ›" links in every table): start from that song
  const given = params.get("id");
  if (given) {
    $("sim-track").dataset.id = given;
    try {
      seed = track(await api(`/api/tracks/${encodeURIComponent(given)}`));
      $("sim-track").value = `${seed.title} — ${seed.artist || "unknown artist"}`;
    } catch (e) {
      if (e.status !== 404) return void ($("sim-out").innerHTML = errorBox(e));
      $("sim-track").value = given; // a media server's id: the search takes it, the track page does not
    }
    search();
  }
}
