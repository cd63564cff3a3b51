// The hub's REST API, as the console calls it. The API key lives in sessionStorage only: it is
// sent in the Authorization header, never put in a URL, and forgotten when the tab closes.

const KEY_STORE = "aigne-hub.console.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  adminCache = null;
  window.dispatchEvent(new CustomEvent("hub:key-changed"));
}

/** What a key shows of itself: its first 12 characters, like the admin API's `prefix`. */
export function keyPrefix(key = apiKey()) {
  return key ? `${key.slice(0, 12)}…` : "";
}

/** An error answer: the OpenAI-shaped body's message, param, code and type. */
export class ApiError extends Error {
  constructor(status, body, fallback, retryAfter = null) {
    const error = (body && typeof body === "object" && body.error) || {};
    super(error.message || fallback || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
    this.type = error.type || null;
    this.retryAfter = retryAfter;
  }
}

/**
 * Call the API. `query` entries that are empty are left out; `body` is sent as JSON.
 * Answers { data, headers, status, ms }; throws ApiError on an error status, TypeError when
 * the hub cannot be reached.
 */
export async function api(path, { method = "GET", query, body, signal, auth = true } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (auth && apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const started = performance.now();
  const response = await fetch(url, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, data, text.slice(0, 300),
      response.headers.get("retry-after"));
  }
  return { data, headers: response.headers, status: response.status,
    ms: performance.now() - started };
}

let adminCache = null;

/** Whether the key in use is an admin key: the admin API answers it, or refuses with 403. */
export async function isAdmin() {
  if (!apiKey()) return false;
  if (adminCache === null) {
    adminCache = api("/api/admin/keys", { query: { page_size: 1 } }).then(
      () => true,
      (error) => {
        if (error instanceof ApiError && error.status === 403) return false;
        adminCache = null;
        throw error;
      });
  }
  return adminCache;
}

let modelsCache = null;

/** GET /api/models, once per key. */
export function models() {
  if (!modelsCache) {
    modelsCache = api("/api/models").then(({ data }) => data.data || [], (error) => {
      modelsCache = null;
      throw error;
    });
  }
  return modelsCache;
}

window.addEventListener("hub:key-changed", () => {
  modelsCache = null;
});

/** "YYYY-MM-DD" of a Date, in UTC (usage days are UTC days). */
export function utcDay(date) {
  return date.toISOString().slice(0, 10);
}
