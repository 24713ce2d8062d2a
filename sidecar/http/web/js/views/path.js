// A song path: a smooth walk from one song to another through the library.
import { api } from "../api.js";
import { act, fillModels, fmtNum, html, resultHead, track, trackPicker, wireSavers } from "../ui.js";

export async function render(root) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Song path</h1><p>From one song to another in small steps: each track sits near its point on the straight line between them.</p></div></div>
    <form class="panel" id="pa-form">
      <div class="grid two">
        <div><label for="pa-start">From</label><div class="picker"><input id="pa-start" type="search" placeholder="First song…" required></div></div>
        <div><label for="pa-end">To</label><div class="picker"><input id="pa-end" type="search" placeholder="Last song…" required></div></div>
      </div>
      <div class="row" style="align-items:end">
        <div style="width:220px"><label for="pa-model">Model</label><select id="pa-model"></select></div>
        <div style="flex:1;min-width:200px"><label for="pa-steps">Steps <span id="pa-steps-v" class="muted">10</span></label>
          <input id="pa-steps" type="range" min="2" max="50" value="10"></div>
        <button class="primary" type="submit" id="pa-go">Draw the path</button>
      </div>
    </form>
    <section class="panel" id="pa-out"><div class="empty">Pick two songs.</div></section>`;

  const $ = (id) => root.querySelector(`#${id}`);
  await fillModels($("pa-model"));
  trackPicker($("pa-start"));
  trackPicker($("pa-end"));
  $("pa-steps").addEventListener("input", () => { $("pa-steps-v").textContent = $("pa-steps").value; });

  let tracks = [];
  $("pa-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = $("pa-out");
    const start = $("pa-start").dataset.id, end = $("pa-end").dataset.id;
    if (!start || !end) {
      out.innerHTML = html`<div class="msg warn">Pick both songs from the lists that appear as you type.</div>`;
      return;
    }
    act($("pa-go"), out, async () => {
      const r = await api("/api/find_path", { query: { start_song_id: start, end_song_id: end, max_steps: $("pa-steps").value, model: $("pa-model").value } });
      tracks = r.path.map(track);
      const first = tracks[0], last = tracks[tracks.length - 1];
      const worst = Math.max(...tracks.map((t) => t.distance), 1e-9);
      out.innerHTML = html`${resultHead(`${first.title} → ${last.title}`, `${tracks.length} songs · total distance ${fmtNum(r.total_distance, 3)} · ${r.model}`)}
        <ol class="timeline">${tracks.map((t, i) => html`<li class="${i === 0 || i === tracks.length - 1 ? "end" : ""}">
          <span class="step">${i + 1}</span>
          <span class="what"><b>${t.title}</b> <span class="muted">${t.artist || "unknown artist"}${t.album && t.album !== "unknown" ? ` · ${t.album}` : ""}</span></span>
          <span class="dist" title="cosine distance to its ideal point on the line">${i === 0 || i === tracks.length - 1 ? "" : html`off the line ${fmtNum(t.distance, 3)}<span class="bar"><i style="width:${(t.distance / worst) * 100}%"></i></span>`}</span>
          <a class="small" href="#/similar?id=${encodeURIComponent(t.id)}">similar ›</a></li>`)}</ol>`;
      wireSavers(out, () => tracks.map((t) => t.id), `Path: ${first.title} to ${last.title}`.slice(0, 200));
    }, "Walking…");
  });
}
