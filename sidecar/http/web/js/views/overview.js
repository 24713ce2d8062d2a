// The library at a glance: counts, per-model state, failures with reasons, and the events flowing in.
import { api, models as allModels, post } from "../api.js";
import { act, basename, empty, errorBox, fmtWhen, html, loading } from "../ui.js";

const POLL_MS = 2000;

export async function render(root) {
  root.innerHTML = html`
    <div class="view-head"><div><h1>Library</h1><p>What the sidecar has analysed, what failed and why, and what is coming in.</p></div></div>
    <div id="ov-cards" class="cards">${loading()}</div>
    <div class="grid two">
      <section class="panel"><h2>Models</h2><div id="ov-models">${loading()}</div></section>
      <section class="panel"><h2>Events flowing in</h2><div id="ov-ingest"></div><ul class="feed" id="ov-feed"></ul></section>
    </div>
    <section class="panel">
      <div class="result-head"><h2>Failures</h2><span class="muted" id="ov-fail-count"></span>
        <button id="ov-retry" type="button" style="margin-left:auto">Retry all</button></div>
      <div id="ov-failures">${loading()}</div>
    </section>
    <section class="panel"><h2>Media server</h2><div id="ov-media">${loading()}</div></section>`;

  const $ = (id) => root.querySelector(`#${id}`);
  const feed = $("ov-feed");
  let last = null;

  const note = (text, kind = "") => {
    feed.prepend(Object.assign(document.createElement("li"), { innerHTML: html`<time>${new Date().toLocaleTimeString()}</time><span class="${kind}">${text}</span>` }));
    while (feed.children.length > 50) feed.lastChild.remove();
  };

  async function refreshStatus() {
    const s = await api("/api/status");
    const done = Object.values(s.models).reduce((m, c) => Math.max(m, c.done), 0);
    $("ov-cards").innerHTML = html`
      <div class="card"><div class="value">${s.tracks}</div><div class="label">tracks</div></div>
      <div class="card"><div class="value">${s.files}</div><div class="label">files</div></div>
      <div class="card good"><div class="value">${done}</div><div class="label">analysed</div></div>
      <div class="card ${s.failed_files ? "bad" : ""}"><div class="value">${s.failed_files}</div><div class="label">failed files</div></div>
      <div class="card ${s.bus_lag ? "" : "good"}"><div class="value">${s.bus_lag}</div><div class="label">events waiting (${s.bus})</div></div>
      <div class="card ${s.dead_letters ? "bad" : ""}"><div class="value">${s.dead_letters}</div><div class="label">dead letters</div></div>`;
    const g = s.ingest;
    $("ov-ingest").innerHTML = html`<div class="stats">
        <div>processed<b>${g.processed}</b></div><div>analysed<b>${g.embedded}</b></div>
        <div>unchanged<b>${g.skipped}</b></div><div>failed<b>${g.failed}</b></div>
        <div>state<b>${g.idle ? "idle" : "working"}</b></div><div>last event<b>${fmtWhen(g.last_event_at)}</b></div></div>
      ${g.current ? html`<p class="small muted">Last file: <code>${basename(g.current)}</code></p>` : ""}`;
    if (last === null) {
      note(`Watching the library: ${s.tracks} tracks, ${s.bus_lag} event(s) waiting on the ${s.bus} bus.`);
    } else {
      const d = (k) => g[k] - last.ingest[k];
      if (d("processed") > 0) {
        note(`${d("processed")} event(s) processed: ${d("embedded")} analysed, ${d("skipped")} unchanged, ${d("failed")} failed`
          + (g.current ? ` (latest ${basename(g.current)})` : ""), d("failed") ? "bad" : "");
      }
      if (s.bus_lag !== last.bus_lag && s.bus_lag > 0) note(`${s.bus_lag} event(s) waiting on the bus`);
      if (s.failed_files > last.failed_files) note(`${s.failed_files - last.failed_files} new failure(s); see below`, "bad");
    }
    const newFailures = last && (s.failed_files !== last.failed_files || g.failed !== last.ingest.failed);
    last = s;
    return { status: s, newFailures };
  }

  async function refreshModels(status) {
    const models = await allModels();
    const rows = models.map((m) => {
      const counts = status.models[m.name] || { done: 0, failed: 0 };
      const state = m.available ? html`<span class="badge good">ready</span>` : html`<span class="badge bad">unavailable</span>`;
      return html`<tr><td><b>${m.name}</b><div class="small muted">${m.kind === "text_encoder" ? "text encoder" : `${m.dim ?? "?"}-d · ${m.version ?? "?"}`}</div></td>
        <td>${state}${m.supports_text && m.kind === "embedder" ? html`<span class="badge accent">text: ${m.text_via}</span>` : ""}
          ${m.reason ? html`<div class="small muted">${m.reason}</div>` : ""}</td>
        <td class="num">${m.kind === "embedder" ? counts.done : "–"}</td><td class="num">${m.kind === "embedder" ? counts.failed : "–"}</td></tr>`;
    });
    $("ov-models").innerHTML = html`<div class="table-wrap"><table><thead><tr><th>Model</th><th>State</th><th class="num">Tracks</th><th class="num">Failed</th></tr></thead>
      <tbody>${rows}</tbody></table></div>`;
  }

  async function refreshFailures() {
    const { failures } = await api("/api/failures", { query: { limit: 100 } });
    $("ov-fail-count").textContent = failures.length ? `${failures.length} shown, newest first` : "";
    $("ov-retry").disabled = !failures.length;
    $("ov-failures").innerHTML = failures.length
      ? html`<div class="table-wrap"><table><thead><tr><th>File</th><th>Model</th><th>Reason</th><th>When</th></tr></thead><tbody>
        ${failures.map((f) => html`<tr><td class="title-cell">${basename(f.path)}<span class="sub">${f.path}</span></td>
          <td>${f.model ? html`<span class="badge">${f.model}</span>` : html`<span class="badge warn">decode</span>`}</td>
          <td>${f.reason}</td><td class="num">${fmtWhen(f.failed_at)}</td></tr>`)}</tbody></table></div>`
      : empty("No failures: every file was read and every model ran.");
  }

  async function refreshMedia() {
    const m = await api("/api/mediaserver");
    $("ov-media").innerHTML = !m.configured
      ? html`<div class="msg info">No media server is configured, so playlists cannot be saved to Navidrome.
          Set <code>SIDECAR_MEDIA_SERVER_URL</code>, <code>SIDECAR_MEDIA_SERVER_USER</code> and <code>SIDECAR_MEDIA_SERVER_PASSWORD</code>.</div>`
      : html`<div class="stats"><div>server<b>${m.server_type || "?"} ${m.server_version || ""}</b></div>
          <div>connection<b>${m.connected ? "connected" : "not connected"}</b></div>
          <div>songs on server<b>${m.songs_on_server ?? "–"}</b></div><div>matched<b>${m.songs_matched}</b></div>
          <div>unmatched<b>${m.songs_unmatched}</b></div><div>last sync<b>${m.last_sync_at ? new Date(m.last_sync_at).toLocaleString() : "–"}</b></div></div>
          <p class="small muted">${m.url}${m.last_error ? html` · <span style="color:var(--bad)">${m.last_error}</span>` : ""}</p>`;
  }

  $("ov-retry").addEventListener("click", (ev) => act(ev.currentTarget, $("ov-failures"), async () => {
    const r = await post("/api/failures/retry", {});
    note(`Retrying ${r.retrying} file(s)`);
    await refreshFailures();
  }));

  try {
    const { status } = await refreshStatus();
    await Promise.all([refreshModels(status), refreshFailures(), refreshMedia()]);
  } catch (e) {
    $("ov-cards").innerHTML = errorBox(e);
  }
  let busy = false;
  const timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      const { newFailures } = await refreshStatus();
      if (newFailures) await refreshFailures();
    } catch (e) {
      note(`Status unavailable: ${e.message}`, "bad");
    } finally {
      busy = false;
    }
  }, POLL_MS);
  return () => clearInterval(timer);
}
