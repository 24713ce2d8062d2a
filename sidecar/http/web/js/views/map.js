// The music map: every track in 2-D (t-SNE or PCA of a model's vectors), coloured by its dominant tag or
// another label. Wheel to zoom, drag to pan, hover for title and artist, select a region to make a playlist.
import { api, post } from "../api.js";
import { Scatter } from "../scatter.js";
import { act, colourScale, errorBox, fillModels, fmtDuration, html, loading, resultHead, track, trackTable, wireSavers } from "../ui.js";

export async function render(root) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Music map</h1><p>Close tracks sound alike. Scroll to zoom, drag to pan, hover for a title;
      hold <b>Shift</b> and drag (or press <b>Select</b>) to pick a region and make a playlist of it.</p></div></div>
    <form class="panel row" id="mp-form" style="align-items:end">
      <div style="width:200px"><label for="mp-model">Model</label><select id="mp-model"></select></div>
      <div style="width:170px"><label for="mp-colour">Colour by</label>
        <select id="mp-colour"><option value="tag">dominant tag</option><option value="genre">genre</option><option value="artist">artist</option><option value="album">album</option><option value="none">nothing</option></select></div>
      <div style="width:150px"><label for="mp-percent">Show</label>
        <select id="mp-percent"><option value="100">every track</option><option value="75">75%</option><option value="50">50%</option><option value="25">25%</option></select></div>
      <button class="primary" type="submit" id="mp-go">Draw map</button>
      <span class="muted small" id="mp-info"></span>
    </form>
    <section class="panel"><div id="mp-state"></div><div id="mp-plot"></div><div class="legend" id="mp-legend"></div></section>
    <section class="panel" id="mp-sel"><div class="empty">Select a region of the map to list its tracks here.</div></section>`;

  const $ = (id) => root.querySelector(`#${id}`);
  await fillModels($("mp-model"));
  const plot = new Scatter($("mp-plot"), {
    tooltip: (p) => html`<b>${p.item.title}</b><span>${p.item.artist || "unknown artist"}${p.item.tag ? ` · ${p.item.tag}` : ""}</span>`,
    onSelect: select,
  });

  let selection = [];
  async function select(points) {
    const out = $("mp-sel");
    if (!points.length) {
      out.innerHTML = html`<div class="empty">No tracks in that region.</div>`;
      return;
    }
    out.innerHTML = loading("Listing the selection…");
    try {
      const r = await post("/api/map/selection", { item_ids: points.map((p) => p.item.id) });
      selection = r.tracks.map(track);
      out.innerHTML = html`${resultHead("Selection", `${r.count} tracks · ${fmtDuration(r.duration_s)}`)}${trackTable(selection, {
        extra: [{ label: "Length", cell: (t) => fmtDuration(t.duration_s) }],
      })}`;
      wireSavers(out, () => selection.map((t) => t.id), "Sidecar: map selection");
    } catch (e) {
      out.innerHTML = errorBox(e);
    }
  }

  function draw() {
    const state = $("mp-state");
    return act($("mp-go"), state, async () => {
      const r = await api("/api/map", { query: { model: $("mp-model").value, colour_by: $("mp-colour").value, percent: $("mp-percent").value } });
      state.innerHTML = "";
      const colour = colourScale(r.legend);
      plot.setPoints(r.items.map((i) => {
        const t = track(i);
        return { x: t.x, y: t.y, colour: colour(t.label), r: r.count > 5000 ? 2.5 : 5, item: t };
      }));
      const shown = r.legend.slice(0, 12);
      const rest = r.legend.slice(12).reduce((n, e) => n + e.count, 0);
      $("mp-legend").innerHTML = html`${shown.map((e) => html`<span><i style="background:${colour(e.label)}"></i>${e.label ?? "unlabelled"} <span class="muted">${e.count}</span></span>`)}
        ${rest ? html`<span><i style="background:${colour(null)}"></i>other <span class="muted">${rest}</span></span>` : ""}`;
      $("mp-info").textContent = `${r.count} of ${r.total} tracks · ${r.projection.toUpperCase()} of ${r.model}`;
    }, "Placing the tracks…");
  }
  $("mp-form").addEventListener("submit", (ev) => { ev.preventDefault(); draw(); });
  await draw();
}
