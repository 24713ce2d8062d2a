// Talking to the sidecar's JSON API. Errors carry the API's own message and the field it names.
const TOKEN_KEY = "sidecar.apiToken";

export const getToken = () => localStorage.getItem(TOKEN_KEY) || "";
export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `request failed (${status})`);
    this.status = status;
    this.field = body?.field || null;
  }
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u;
}

export async function api(path, { method = "GET", query, body, signal } = {}) {
  let response;
  try {
    response = await fetch(url(path, query), {
      method,
      signal,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: `the sidecar did not answer (${e.message})` });
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: say what came back */ }
  if (!response.ok) throw new ApiError(response.status, data?.error ? data : { error: `${response.status} ${response.statusText}` });
  return data;
}

export const post = (path, body, options = {}) => api(path, { ...options, method: "POST", body });

// Server-sent events read with fetch (an EventSource cannot send the token); calls onEvent with each JSON payload.
export async function stream(path, onEvent, signal) {
  const response = await fetch(url(path), { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(response.status, body);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// Small caches for what every view wants: the models, and whether a media server is configured.
let modelsPromise = null;
export function models() {
  modelsPromise ??= api("/api/models").then((r) => r.models).catch((e) => { modelsPromise = null; throw e; });
  return modelsPromise;
}
export async function audioModels() {
  return (await models()).filter((m) => m.kind === "embedder" && m.available);
}
