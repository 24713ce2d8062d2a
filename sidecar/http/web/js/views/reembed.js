// The re-embed: the library's events consumed again, with live progress (server-sent events), ETA and cancel.
// Search keeps answering from the old vectors until each track's new one is written.
import { audioModels, post, stream } from "../api.js";
import { act, basename, errorBox, fmtDuration, html } from "../ui.js";
import { badge } from "./clustering.js";

export async function render(root) {
  const models = await audioModels();
  root.innerHTML = html`
    <div class="view-head"><div><h1>Re-embed</h1><p>Run models again over the whole library (or one folder), for instance after a model update. Search keeps answering throughout.</p></div></div>
    <div class="grid side">
      <form class="panel" id="re-form">
        <fieldset><legend>Models to run again</legend>
          ${models.map((m) => html`<label class="inline"><input type="checkbox" name="model" value="${m.name}"> ${m.name}</label>`)}
          <p class="hint">None ticked: only files whose audio or model version changed are processed.</p>
        </fieldset>
        <label for="re-scope">Only this folder (optional)</label>
        <input id="re-scope" type="text" maxlength="4096" placeholder="/music/Some Artist">
        <div class="form-actions"><button class="primary" type="submit" id="re-go">Start re-embed</button></div>
        <div id="re-msg"></div>
      </form>
      <section class="panel" id="re-out"><div class="empty">No re-embed is running.</div></section>
    </div>`;

  const $ = (id) => root.querySelector(`#${id}`);
  let abort = new AbortController();

  function show(p) {
    const live = p.status === "running" || p.status === "cancelling";
    const pct = p.total ? Math.min(100, (100 * p.processed) / p.total) : 0;
    $("re-out").innerHTML = html`<div class="result-head"><h2>Re-embed ${p.replay_id.slice(0, 8)}</h2>${badge(p.status)}
        <span class="muted">${p.models.length ? p.models.join(", ") : "changed files only"}${p.scope ? ` · ${p.scope}` : ""}</span>
        ${live ? html`<button class="danger" type="button" id="re-cancel" style="margin-left:auto" ${p.status === "cancelling" ? "disabled" : ""}>Cancel</button>` : ""}</div>
      <div class="progress" role="progressbar" aria-valuenow="${Math.round(pct)}" aria-valuemin="0" aria-valuemax="100"><i style="width:${pct}%"></i></div>
      <div class="stats">
        <div>processed<b id="re-processed">${p.processed}${p.total != null ? ` / ${p.total}` : ""}</b></div>
        <div>analysed<b id="re-embedded">${p.embedded}</b></div><div>unchanged<b>${p.skipped}</b></div><div>failed<b>${p.failed}</b></div>
        <div>rate<b>${p.rate_per_s.toFixed(2)}/s</b></div>
        <div>time left<b id="re-eta">${live ? (p.eta_s != null ? fmtDuration(p.eta_s) : "estimating…") : "–"}</b></div>
        <div>elapsed<b>${fmtDuration(p.elapsed_s)}</b></div></div>
      ${p.current ? html`<p class="small muted">${live ? "Now" : "Last"}: <code>${basename(p.current)}</code></p>` : ""}`;
    $("re-cancel")?.addEventListener("click", (ev) => act(ev.currentTarget, $("re-msg"), async () => show(await post("/api/batch/cancel", {}))));
  }

  async function follow() {
    abort.abort();
    abort = new AbortController();
    try {
      await stream("/api/batch/progress", show, abort.signal);
    } catch (e) {
      if (e.name === "AbortError") return;
      if (e.status === 404) $("re-out").innerHTML = html`<div class="empty">No re-embed has run since the sidecar started.</div>`;
      else $("re-out").innerHTML = errorBox(e);
    }
  }

  $("re-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act($("re-go"), $("re-msg"), async () => {
      $("re-msg").innerHTML = "";
      const p = await post("/api/batch/start", {
        models: [...root.querySelectorAll("input[name=model]:checked")].map((c) => c.value),
        scope: $("re-scope").value.trim() || undefined,
      });
      show(p);
      follow();
    });
  });

  follow();
  return () => abort.abort();
}
