// Shared pieces of the page: escaping templates, messages, track tables, the track picker, "save as playlist".
import { api, post, audioModels } from "./api.js";

// ---- HTML templates: interpolated values are escaped unless wrapped in raw()
const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
class Raw { constructor(s) { this.s = s; } toString() { return this.s; } }
export const raw = (s) => new Raw(s);
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    const part = Array.isArray(v) ? v.map((x) => (x instanceof Raw ? x.s : esc(x))).join("") : v instanceof Raw ? v.s : esc(v);
    out += part + strings[i + 1];
  });
  return raw(out);
}
export function el(markup) {
  const t = document.createElement("template");
  t.innerHTML = String(markup).trim();
  return t.content.firstElementChild;
}

// ---- formatting
export function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
}
export function fmtWhen(epochSeconds) {
  if (!epochSeconds) return "–";
  const d = new Date(epochSeconds * 1000);
  const ago = (Date.now() - d) / 1000;
  if (ago < 60) return "just now";
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  return d.toLocaleString();
}
export const fmtNum = (n, digits = 3) => (n == null ? "–" : Number(n).toFixed(digits));
export const basename = (p) => (p ? String(p).split(/[\\/]/).pop() : "");

// ---- messages
export function errorBox(err) {
  const field = err?.field ? html` <span class="field">(${err.field})</span>` : "";
  return html`<div class="msg error" role="alert">${err?.message || String(err)}${field}</div>`;
}
export const loading = (what = "Loading…") => html`<div class="loading">${what}</div>`;
export const empty = (what) => html`<div class="empty">${what}</div>`;

// Runs an action from a button: the button is disabled meanwhile, `out` shows loading, then the result or the error.
export async function act(button, out, fn, busyText) {
  button.disabled = true;
  if (out && busyText) out.innerHTML = loading(busyText);
  try {
    return await fn();
  } catch (e) {
    if (e.name !== "AbortError" && out) out.innerHTML = errorBox(e);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// ---- tracks
// The API names things two ways (ours: track_id/artist; AudioMuse-AI's: item_id/author); one shape for the page.
export function track(t) {
  return {
    ...t,
    id: t.item_id ?? t.track_id,
    title: t.title || basename(t.path) || t.item_id || t.track_id,
    artist: t.artist ?? t.author ?? null,
  };
}

const bar = (fraction) => html`<span class="bar"><i style="width:${Math.max(0, Math.min(1, fraction)) * 100}%"></i></span>`;

/* tracks: normalised by track(); opts.score: {label, value: t => number, fraction: t => 0..1, digits};
   opts.why: t => html for a "why" column; opts.extra: [{label, cell: t => html}] */
export function trackTable(tracks, opts = {}) {
  if (!tracks.length) return empty(opts.emptyText || "No tracks.");
  const rows = tracks.map((t, i) => html`<tr data-id="${t.id}">
      <td class="idx">${i + 1}</td>
      <td class="title-cell">${t.title}<span class="sub">${t.artist || "unknown artist"}${t.album && t.album !== "unknown" ? ` · ${t.album}` : ""}</span></td>
      ${(opts.extra || []).map((c) => html`<td>${c.cell(t)}</td>`)}
      ${opts.score ? html`<td class="num">${fmtNum(opts.score.value(t), opts.score.digits ?? 3)}${bar(opts.score.fraction ? opts.score.fraction(t) : opts.score.value(t))}</td>` : ""}
      ${opts.why ? html`<td class="why">${opts.why(t)}</td>` : ""}
      <td class="num"><a href="#/similar?id=${encodeURIComponent(t.id)}" title="Songs like this one">similar ›</a></td>
    </tr>`);
  return html`<div class="table-wrap"><table class="tracks">
    <thead><tr><th>#</th><th>Title</th>${(opts.extra || []).map((c) => html`<th>${c.label}</th>`)}
      ${opts.score ? html`<th class="num">${opts.score.label}</th>` : ""}${opts.why ? html`<th>Why</th>` : ""}<th></th></tr></thead>
    <tbody>${rows}</tbody></table></div>`;
}

// A result header with a title, a summary and "save as a Navidrome playlist".
export function resultHead(title, summary) {
  return html`<div class="result-head"><h2>${title}</h2><span class="muted">${summary || ""}</span>
    <form class="saver" data-saver>
      <input type="text" name="name" aria-label="Playlist name" placeholder="Playlist name" required maxlength="200">
      <button type="submit">Save to Navidrome</button>
    </form></div>`;
}

// Wires every `form[data-saver]` under root: POST /api/playlists with the tracks getIds() returns.
export function wireSavers(root, getIds, defaultName) {
  root.querySelectorAll("form[data-saver]").forEach((form, i) => {
    const input = form.elements.name;
    if (!input.value) input.value = typeof defaultName === "function" ? defaultName(i) : defaultName;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      form.querySelector(".msg")?.remove();
      const button = form.querySelector("button");
      const ids = getIds(i);
      const say = (markup) => form.append(el(markup));
      if (!ids.length) return say(html`<div class="msg warn">Nothing to save yet.</div>`);
      await act(button, null, async () => {
        try {
          const r = await post("/api/playlists", { name: input.value, track_ids: ids });
          const skipped = r.skipped?.length ? `; ${r.skipped.length} not on the server` : "";
          say(html`<div class="msg ok">Saved “${r.name}” with ${r.track_ids.length} songs${skipped}.</div>`);
        } catch (e) {
          say(e.status === 503 && /no media server/.test(e.message)
            ? html`<div class="msg warn" data-no-media-server>Cannot save: ${e.message}. See docs/NAVIDROME.md.</div>`
            : errorBox(e));
        }
      });
    });
  });
}

// ---- the track picker: autocomplete over /api/tracks?query=
export function trackPicker(input, onPick) {
  const box = input.closest(".picker");
  let list = null, items = [], active = -1, timer = null, seq = 0;
  const close = () => { list?.remove(); list = null; active = -1; };
  const choose = (t) => {
    input.value = `${t.title} — ${t.artist || "unknown artist"}`;
    input.dataset.id = t.id;
    close();
    onPick?.(t);
  };
  const show = () => {
    close();
    list = el(`<ul role="listbox"></ul>`);
    if (!items.length) list.append(el(html`<li class="none">No track matches “${input.value}”.</li>`));
    items.forEach((t, i) => {
      const li = el(html`<li role="option" class="${i === active ? "active" : ""}">${t.title}<span class="sub">${t.artist || "unknown artist"}${t.album ? ` · ${t.album}` : ""}</span></li>`);
      li.addEventListener("mousedown", (ev) => { ev.preventDefault(); choose(t); });
      list.append(li);
    });
    box.append(list);
  };
  input.setAttribute("autocomplete", "off");
  input.addEventListener("input", () => {
    delete input.dataset.id;
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) return close();
    timer = setTimeout(async () => {
      const mine = ++seq;
      try {
        const r = await api("/api/tracks", { query: { query: q, limit: 10 } });
        if (mine !== seq) return;
        items = r.tracks.map(track);
        active = items.length ? 0 : -1;
        show();
      } catch { close(); }
    }, 150);
  });
  input.addEventListener("keydown", (ev) => {
    if (!list) return;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      active = (active + (ev.key === "ArrowDown" ? 1 : -1) + items.length) % Math.max(items.length, 1);
      show();
    } else if (ev.key === "Enter" && active >= 0) {
      ev.preventDefault();
      choose(items[active]);
    } else if (ev.key === "Escape") close();
  });
  input.addEventListener("blur", () => setTimeout(close, 100));
}

// Fills a <select> with the models that are ready; `filter` keeps some, `preferred` is selected.
export async function fillModels(select, { filter = () => true, withDefault = true } = {}) {
  const models = (await audioModels()).filter(filter);
  select.innerHTML = (withDefault ? html`<option value="">default (${models[0]?.name || "none"})</option>` : "")
    + models.map((m) => html`<option value="${m.name}">${m.name} · ${m.dim}-d</option>`).join("");
  return models;
}

// Colours for labels (dominant tag, genre...): the commonest get distinct hues, the rest grey.
export const PALETTE = ["#4f46e5", "#e4572e", "#17a398", "#f3a712", "#a23b72", "#2e86ab", "#76b041", "#d1495b", "#8e6c8a", "#00798c", "#edae49", "#5c6f7e"];
export const OTHER = "#b8bdcc";
export function colourScale(legend) {
  const map = new Map();
  legend.slice(0, PALETTE.length).forEach((e, i) => map.set(e.label, PALETTE[i]));
  return (label) => map.get(label) ?? OTHER;
}
