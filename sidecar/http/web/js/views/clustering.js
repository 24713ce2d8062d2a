// Clustering the library into named playlists: start a run, follow it, cancel it, browse its playlists.
import { api, post } from "../api.js";
import { act, errorBox, fillModels, fmtDuration, fmtNum, html, loading, wireSavers } from "../ui.js";

const POLL_MS = 1000;

export async function render(root) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Clustering</h1><p>Group the library into playlists by sound and tags; the search tries many clusterings and keeps the purest, most distinct playlists.</p></div></div>
    <div class="grid side">
      <form class="panel" id="cl-form">
        <label for="cl-model">Model</label><select id="cl-model"></select>
        <fieldset><legend>Algorithms</legend>
          ${["kmeans", "gmm", "dbscan", "spectral"].map((a) => html`<label class="inline"><input type="checkbox" name="alg" value="${a}" ${a === "kmeans" ? "checked" : ""}> ${a}</label>`)}
        </fieldset>
        <label for="cl-iter">Iterations</label><input id="cl-iter" type="number" min="1" max="100000" value="100">
        <div class="row"><div style="flex:1"><label for="cl-min">Min songs</label><input id="cl-min" type="number" min="1" value="3"></div>
          <div style="flex:1"><label for="cl-max">Max songs</label><input id="cl-max" type="number" min="1" value="50"></div></div>
        <label for="cl-top">Playlists to keep (0: all)</label><input id="cl-top" type="number" min="0" max="1000" value="20">
        <div class="form-actions"><button class="primary" type="submit" id="cl-go">Start clustering</button></div>
        <div id="cl-msg"></div>
      </form>
      <div>
        <section class="panel"><h2>Runs</h2><div id="cl-jobs">${loading()}</div></section>
        <section class="panel" id="cl-job"><div class="empty">Start a run, or pick one above.</div></section>
      </div>
    </div>`;

  const $ = (id) => root.querySelector(`#${id}`);
  await fillModels($("cl-model"));
  let current = null, timer = null, alive = true;

  async function listJobs() {
    const { jobs } = await api("/api/clustering");
    $("cl-jobs").innerHTML = jobs.length
      ? html`<div class="table-wrap"><table class="jobs"><thead><tr><th>Started</th><th>Model</th><th>Status</th><th class="num">Progress</th><th class="num">Score</th></tr></thead><tbody>
          ${jobs.map((j) => html`<tr data-job="${j.job_id}" class="${j.job_id === current ? "selected" : ""}"><td>${new Date(j.started_at * 1000).toLocaleTimeString()}</td>
            <td>${j.model} <span class="muted small">${j.algorithms.join(", ")}</span></td><td>${badge(j.status)}</td>
            <td class="num">${j.progress.done}/${j.progress.total}</td><td class="num">${fmtNum(j.best_score, 3)}</td></tr>`)}</tbody></table></div>`
      : html`<div class="empty">No clustering has run since the sidecar started.</div>`;
    $("cl-jobs").querySelectorAll("tr[data-job]").forEach((tr) => tr.addEventListener("click", () => follow(tr.dataset.job)));
    return jobs;
  }

  async function follow(jobId) {
    if (!alive) return;
    current = jobId;
    clearTimeout(timer);
    const out = $("cl-job");
    try {
      const j = await api(`/api/clustering/${jobId}`);
      showJob(j);
      await listJobs();
      if (alive && j.status === "running") timer = setTimeout(() => follow(jobId), POLL_MS);
    } catch (e) {
      out.innerHTML = errorBox(e);
    }
  }

  function showJob(j) {
    const out = $("cl-job");
    const pct = j.progress.total ? (100 * j.progress.done) / j.progress.total : 0;
    out.innerHTML = html`<div class="result-head"><h2>Run ${j.job_id.slice(0, 8)}</h2>${badge(j.status)}
        <span class="muted">${j.tracks} tracks · ${j.model} · seed ${j.seed}</span>
        ${j.status === "running" ? html`<button class="danger" type="button" id="cl-cancel" style="margin-left:auto">Cancel</button>` : ""}</div>
      <div class="progress"><i style="width:${pct}%"></i></div>
      <div class="stats"><div>iterations<b>${j.progress.done} / ${j.progress.total}</b></div><div>elapsed<b>${fmtDuration(j.elapsed_s)}</b></div>
        <div>time left<b>${j.status === "running" ? fmtDuration(j.eta_s) : "–"}</b></div><div>best score<b>${fmtNum(j.best_score, 3)}</b></div>
        <div>purity<b>${fmtNum(j.best_purity, 3)}</b></div><div>diversity<b>${fmtNum(j.best_diversity, 3)}</b></div></div>
      ${j.error ? html`<div class="msg error">${j.error}</div>` : ""}
      ${j.playlists ? html`<h2 style="margin-top:14px">${j.playlists.length} playlists</h2><div class="playlists">${j.playlists.map((p) => html`<div class="playlist-card">
          <h3>${p.name}</h3><div class="muted small">${p.size} songs${p.tempo_bpm ? ` · ${Math.round(p.tempo_bpm)} BPM` : ""} · purity ${fmtNum(p.purity, 2)}</div>
          <div>${p.top_tags.slice(0, 4).map((t) => html`<span class="badge accent">${t.tag}</span>`)}</div>
          <ol>${p.tracks.map((t) => html`<li>${t.title || t.track_id}<span class="muted">${t.artist ? ` — ${t.artist}` : ""}</span></li>`)}</ol>
          <form class="saver" data-saver><input type="text" name="name" aria-label="Playlist name" required maxlength="200"><button type="submit">Save to Navidrome</button></form>
        </div>`)}</div>` : ""}`;
    $("cl-cancel")?.addEventListener("click", (ev) => act(ev.currentTarget, $("cl-msg"), async () => {
      showJob(await post(`/api/clustering/${j.job_id}/cancel`, {}));
      await listJobs();
    }));
    if (j.playlists) wireSavers(out, (i) => j.playlists[i].tracks.map((t) => t.track_id), (i) => j.playlists[i].name);
  }

  $("cl-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act($("cl-go"), $("cl-msg"), async () => {
      $("cl-msg").innerHTML = "";
      const j = await post("/api/clustering/start", {
        model: $("cl-model").value || undefined,
        algorithms: [...root.querySelectorAll("input[name=alg]:checked")].map((c) => c.value),
        iterations: Number($("cl-iter").value), min_songs_per_playlist: Number($("cl-min").value),
        max_songs_per_playlist: Number($("cl-max").value), top_n_playlists: Number($("cl-top").value),
      });
      await follow(j.job_id);
    });
  });

  try {
    const jobs = await listJobs();
    if (jobs.length) await follow(jobs[0].job_id);
  } catch (e) {
    $("cl-jobs").innerHTML = errorBox(e);
  }
  return () => { alive = false; clearTimeout(timer); };
}

export function badge(status) {
  const kind = { done: "good", running: "accent", cancelling: "warn", cancelled: "warn", failed: "bad", interrupted: "bad" }[status] || "";
  return html`<span class="badge ${kind}" data-status="${status}">${status}</span>`;
}
