// The page's router: one view per hash (#/overview, #/text ...). Each view module exports
// `render(root, params)`, which may return a function that stops what it started (polling, streams).
import { api, getToken, setToken } from "./api.js";
import { errorBox, html } from "./ui.js";

const VIEWS = [
  { id: "overview", icon: "◎", title: "Library" },
  { id: "text", icon: "✎", title: "Text playlist" },
  { id: "similar", icon: "≈", title: "Similar songs" },
  { id: "path", icon: "⇢", title: "Song path" },
  { id: "alchemy", icon: "⚗", title: "Alchemy" },
  { id: "map", icon: "◈", title: "Music map" },
  { id: "clustering", icon: "❖", title: "Clustering" },
  { id: "reembed", icon: "↻", title: "Re-embed" },
];

const nav = document.getElementById("nav");
const root = document.getElementById("view");
let stop = null;

nav.innerHTML = VIEWS.map((v) => html`<a href="#/${v.id}" data-view="${v.id}"><span class="icon">${v.icon}</span>${v.title}</a>`).join("");

function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const view = VIEWS.find((v) => v.id === path) || VIEWS[0];
  return { view, params: new URLSearchParams(query || "") };
}

async function show() {
  const { view, params } = parseHash();
  stop?.();
  stop = null;
  nav.querySelectorAll("a").forEach((a) => a.classList.toggle("active", a.dataset.view === view.id));
  document.title = `${view.title} · music sidecar`;
  document.getElementById("tooltip").hidden = true;
  root.dataset.view = view.id;
  root.innerHTML = "";
  try {
    const module = await import(`./views/${view.id}.js`);
    stop = (await module.render(root, params)) || null;
  } catch (e) {
    root.innerHTML = errorBox(e);
  }
}

const tokenInput = document.getElementById("token");
tokenInput.value = getToken();
if (getToken()) document.getElementById("token-box").open = true;
tokenInput.addEventListener("change", () => setToken(tokenInput.value.trim()));

api("/health").then((h) => { document.getElementById("version").textContent = `sidecar ${h.version}`; }).catch(() => {});
window.addEventListener("hashchange", show);
show();
