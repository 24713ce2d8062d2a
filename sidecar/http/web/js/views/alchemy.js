// Song alchemy: add songs (their centre is the target), subtract songs (their neighbourhoods are filtered
// out), and see both in a 2-D picture: kept tracks, filtered ones, and the ingredients.
import { post } from "../api.js";
import { Scatter } from "../scatter.js";
import { act, fillModels, fmtNum, html, resultHead, track, trackPicker, trackTable, wireSavers } from "../ui.js";

const COLOURS = { kept: "#4f46e5", filtered: "#9aa1b5", add: "#12805c", sub: "#c0362c", target: "#f3a712" };

export async function render(root) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Alchemy</h1><p>Mix songs: more like these, less like those.</p></div></div>
    <div class="grid side">
      <form class="panel" id="al-form">
        <label for="al-add">Add (more like)</label>
        <div class="picker"><input id="al-add" type="search" placeholder="Add a song…"></div>
        <div class="chips" id="al-add-chips"></div>
        <label for="al-sub">Subtract (less like)</label>
        <div class="picker"><input id="al-sub" type="search" placeholder="Subtract a song…"></div>
        <div class="chips" id="al-sub-chips"></div>
        <label for="al-model">Model</label><select id="al-model"></select>
        <label for="al-radius">Subtract radius <span class="muted" id="al-radius-v">auto</span></label>
        <input id="al-radius" type="range" min="0" max="1" step="0.02" value="0">
        <p class="hint">Candidates within this cosine distance of a subtracted song are filtered out; auto (far left):
          each subtracted song's nearest tenth of the library.</p>
        <label for="al-temp">Temperature <span class="muted" id="al-temp-v">0.00</span></label>
        <input id="al-temp" type="range" min="0" max="0.5" step="0.01" value="0">
        <p class="hint">0 takes the closest tracks; higher samples more freely.</p>
        <label for="al-n">Tracks</label><input id="al-n" type="number" min="1" max="500" value="20">
        <div class="form-actions"><button class="primary" type="submit" id="al-go">Run alchemy</button></div>
      </form>
      <section class="panel" id="al-out"><div class="empty">Add at least one song.</div></section>
    </div>`;

  const $ = (id) => root.querySelector(`#${id}`);
  await fillModels($("al-model"));
  const picked = { add: [], sub: [] };
  const drawChips = (kind) => {
    $(`al-${kind}-chips`).innerHTML = picked[kind].map((t, i) => html`<span class="chip ${kind === "sub" ? "sub" : ""}">${t.title}<button type="button" data-i="${i}" aria-label="remove">×</button></span>`).join("");
    $(`al-${kind}-chips`).querySelectorAll("button").forEach((b) => b.addEventListener("click", () => { picked[kind].splice(Number(b.dataset.i), 1); drawChips(kind); }));
  };
  for (const kind of ["add", "sub"]) {
    trackPicker($(`al-${kind}`), (t) => {
      if (!picked[kind].some((p) => p.id === t.id)) picked[kind].push(t);
      $(`al-${kind}`).value = "";
      drawChips(kind);
    });
  }
  for (const [id, digits] of [["al-radius", 2], ["al-temp", 2]]) {
    $(id).addEventListener("input", () => {
      const v = Number($(id).value);
      $(`${id}-v`).textContent = id === "al-radius" && v === 0 ? "auto" : v.toFixed(digits);
    });
  }

  let tracks = [];
  $("al-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = $("al-out");
    if (!picked.add.length) {
      out.innerHTML = html`<div class="msg warn">Add at least one song (type in “Add” and pick from the list).</div>`;
      return;
    }
    act($("al-go"), out, async () => {
      const r = await post("/api/alchemy", {
        add: picked.add.map((t) => t.id), subtract: picked.sub.map((t) => t.id), n: Number($("al-n").value),
        subtract_radius: Number($("al-radius").value) || undefined, temperature: Number($("al-temp").value), model: $("al-model").value || undefined,
      });
      tracks = r.results.map(track);
      const filtered = r.filtered_out.map(track);
      const subName = Object.fromEntries(r.sub_points.map((p) => [p.item_id, p.title]));
      out.innerHTML = html`${resultHead("Result", `${tracks.length} kept, ${filtered.length} filtered out · ${r.model}`)}
        <div id="al-plot" class="short"></div>
        <div class="legend">
          <span><i style="background:${COLOURS.kept}"></i>kept</span><span><i class="cross"></i>filtered out</span>
          <span><i style="background:${COLOURS.add};border-radius:2px;transform:rotate(45deg)"></i>added</span>
          <span><i style="background:${COLOURS.sub};border-radius:2px;transform:rotate(45deg)"></i>subtracted</span>
          <span><i style="background:${COLOURS.target}"></i>target</span></div>
        <h2 style="margin-top:16px">Kept</h2>
        ${trackTable(tracks, { score: { label: "Similarity", value: (t) => t.similarity }, emptyText: "Nothing kept: lower the subtract radius." })}
        ${filtered.length ? html`<details class="more"><summary>${filtered.length} filtered out: too close to a subtracted song</summary>${trackTable(filtered, {
          extra: [{ label: "Too close to", cell: (t) => html`${subName[t.nearest_subtract] || t.nearest_subtract} <span class="muted">(${fmtNum(t.subtract_distance, 3)})</span>` }],
        })}</details>` : ""}`;
      const tip = (p) => html`<b>${p.item.title}</b><span>${p.item.artist || "unknown artist"} · ${p.kind}</span>`;
      const plot = new Scatter($("al-plot"), { tooltip: tip });
      const pts = [
        ...filtered.map((t) => ({ x: t.x, y: t.y, colour: COLOURS.filtered, shape: "cross", r: 4, item: t, kind: "filtered out" })),
        ...tracks.map((t) => ({ x: t.x, y: t.y, colour: COLOURS.kept, r: 5, item: t, kind: "kept" })),
        ...r.add_points.map((p) => ({ x: p.x, y: p.y, colour: COLOURS.add, shape: "diamond", r: 6, text: p.title, item: track(p), kind: "added" })),
        ...r.sub_points.map((p) => ({ x: p.x, y: p.y, colour: COLOURS.sub, shape: "diamond", r: 6, text: p.title, item: track(p), kind: "subtracted" })),
        { x: r.centroid_2d[0], y: r.centroid_2d[1], colour: COLOURS.target, shape: "star", r: 7, item: { title: "target", artist: "centre of the added songs" }, kind: "target" },
      ];
      plot.setPoints(pts);
      wireSavers(out, () => tracks.map((t) => t.id), `Alchemy: ${picked.add.map((t) => t.title).join(" + ")}`.slice(0, 200));
    }, "Mixing…");
  });
}
