// A playlist from a description. Two ways: zero-shot over what the analysis measured (tags, tempo...), or
// the text placed in each audio model's space (a model's own text tower or a trained projection), where several
// models are merged (union, intersection, priority) with a minimum agreement and a diversity setting.
import { audioModels, post } from "../api.js";
import { act, fmtNum, html, resultHead, track, trackTable, wireSavers } from "../ui.js";

export async function render(root) {
  const models = await audioModels();
  const textModels = models.filter((m) => m.supports_text);
  root.innerHTML = html`
    <div class="view-head"><div><h1>Text playlist</h1><p>Describe the music; every track says why it is there.</p></div></div>
    <div class="grid side">
      <form class="panel" id="tx-form">
        <label for="tx-prompt">Describe it</label>
        <input id="tx-prompt" type="text" required maxlength="500" placeholder="calm orchestral music with strings">
        <label for="tx-neg">But not (comma-separated)</label>
        <input id="tx-neg" type="text" maxlength="1000" placeholder="drums, vocals">
        <fieldset><legend>Match by</legend>
          <label class="inline"><input type="radio" name="method" value="tags" ${textModels.length ? "" : "checked"}> what the analysis measured</label>
          <label class="inline"><input type="radio" name="method" value="vector" ${textModels.length ? "checked" : "disabled"}> model vectors</label>
          ${textModels.length ? "" : html`<p class="hint">No audio model takes text yet: train a projection with <code>sidecar train-text</code>, or enable CLAP or MuQ-MuLan.</p>`}
        </fieldset>
        <fieldset id="tx-vector"><legend>Models</legend>
          ${models.map((m) => html`<label class="inline" title="${m.supports_text ? `text via ${m.text_via}` : "cannot take text (no projection trained)"}">
            <input type="checkbox" name="model" value="${m.name}" ${m.supports_text ? "checked" : "disabled"}> ${m.name}${m.supports_text ? "" : " (no text)"}</label>`)}
          <label for="tx-merge">Merge strategy</label>
          <select id="tx-merge"><option value="union">union (any model)</option><option value="intersection">intersection (every model)</option><option value="priority">priority (models in order)</option></select>
          <label for="tx-agree">Minimum model agreement</label>
          <input id="tx-agree" type="number" min="1" max="${Math.max(1, textModels.length)}" value="1">
          <label for="tx-div">Diversity <span id="tx-div-v" class="muted">0.00</span></label>
          <input id="tx-div" type="range" min="0" max="1" step="0.05" value="0">
        </fieldset>
        <label for="tx-limit">Tracks</label>
        <input id="tx-limit" type="number" min="1" max="500" value="20">
        <div class="form-actions"><button class="primary" type="submit" id="tx-go">Generate playlist</button></div>
      </form>
      <section class="panel" id="tx-out"><div class="empty">Describe some music and press <b>Generate playlist</b>.</div></section>
    </div>`;

  const $ = (id) => root.querySelector(`#${id}`);
  const form = $("tx-form");
  const method = () => form.querySelector("input[name=method]:checked").value;
  const syncMethod = () => { $("tx-vector").disabled = method() !== "vector"; };
  form.querySelectorAll("input[name=method]").forEach((r) => r.addEventListener("change", syncMethod));
  syncMethod();
  $("tx-div").addEventListener("input", () => { $("tx-div-v").textContent = Number($("tx-div").value).toFixed(2); });

  let tracks = [];
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = $("tx-out");
    const text = $("tx-prompt").value.trim();
    const negatives = $("tx-neg").value.split(",").map((s) => s.trim()).filter(Boolean);
    const limit = Number($("tx-limit").value);
    act($("tx-go"), out, async () => {
      let summary, matched = "";
      if (method() === "tags") {
        const r = await post("/api/recommendations/text", { text, negative_prompts: negatives, limit, method: "tags" });
        tracks = r.tracks.map(track);
        summary = `${tracks.length} tracks, matched on the analysis`;
        matched = r.matched.length ? html`<p class="small">Understood as: ${r.matched.map((m) => html`<span class="badge ${m.weight < 0 ? "bad" : "accent"}" title="from “${m.clause}”, similarity ${fmtNum(m.similarity, 2)}">${m.weight < 0 ? "not " : ""}${m.concept}</span>`)}</p>` : "";
      } else {
        const chosen = [...form.querySelectorAll("input[name=model]:checked")].map((c) => c.value);
        const r = await post("/api/recommendations", {
          seeds: [{ text }], negative_prompts: negatives, limit, models: chosen.length ? chosen : undefined,
          merge_strategy: $("tx-merge").value, min_model_agreement: Number($("tx-agree").value), diversity: Number($("tx-div").value),
        });
        tracks = r.tracks.map(track);
        summary = `${tracks.length} tracks from ${r.models.join(", ")} (${r.merge_strategy}, diversity ${r.diversity})`;
        matched = r.warnings.length ? html`<div class="msg warn">${r.warnings.join(" ")}</div>` : "";
      }
      out.innerHTML = html`${resultHead("Playlist", summary)}${matched}${trackTable(tracks, {
        score: { label: "Score", value: (t) => t.score },
        why: (t) => html`${(t.models || []).map((m) => html`<span class="badge">${m}</span>`)}<ul>${(t.reasons || []).map((r) => html`<li>${r}</li>`)}
          ${(t.nearest_seeds || []).map((n) => html`<li>close to ${n.seed.replace(/^text: /, "“") + (n.seed.startsWith("text: ") ? "”" : "")} (${fmtNum(n.similarity, 2)} in ${n.model})</li>`)}</ul>`,
        emptyText: "Nothing matched; try other words.",
      })}`;
      wireSavers(out, () => tracks.map((t) => t.id), `Sidecar: ${text}`.slice(0, 200));
    }, "Generating…");
  });
}
