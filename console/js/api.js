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
 * Call the API. `query` entries that are empty are left out; `body` is sent as JSON, or as a
 * multipart form when it is a FormData (the browser writes its boundary).
 * Answers { data, headers, status, ms }; throws ApiError on an error status, TypeError when
 * the hub cannot be reached.
 */
export async function api(path, { method = "GET", query, body, signal, auth = true } = {}) {
  const started = performance.now();
  const response = await send(path, { method, query, body, signal, auth,
    accept: "application/json" });
  const text = await response.text();
  const data = parseJson(text);
  if (!response.ok) {
    throw new ApiError(response.status, data, text.slice(0, 300),
      response.headers.get("retry-after"));
  }
  return { data, headers: response.headers, status: response.status,
    ms: performance.now() - started };
}

/**
 * POST a request whose answer is OpenAI's image stream (`stream: true`): Server-Sent Events.
 * Answers { headers, events } once the hub has accepted it; `events` yields each event as
 * { name, data } as it arrives. An error before the first event throws ApiError as api()
 * does; an `error` event ends `events` with an ApiError whose `streamed` is true.
 */
export async function streamEvents(path, { body, signal }) {
  const response = await send(path, { method: "POST", body, signal, auth: true,
    accept: "text/event-stream" });
  if (!response.ok || !response.headers.get("content-type")?.startsWith("text/event-stream")) {
    const text = await response.text();
    throw new ApiError(response.status, parseJson(text),
      response.ok ? `Expected text/event-stream, got ${response.headers.get("content-type")}`
        : text.slice(0, 300), response.headers.get("retry-after"));
  }
  return { headers: response.headers, status: response.status,
    events: imageEvents(response.body) };
}

async function* imageEvents(stream) {
  for await (const event of serverSentEvents(stream)) {
    if (event.name === "error") {
      const error = new ApiError(event.data?.error?.http_status || 500, event.data,
        "The stream stopped with an error");
      error.streamed = true;
      throw error;
    }
    yield event;
  }
}

/** The events of a `text/event-stream` body: `event:` names, `data:` JSON; comments skipped. */
async function* serverSentEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        break;
      }
      buffer += value.replaceAll("\r\n", "\n");
      let end = buffer.indexOf("\n\n");
      while (end >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event) yield event;
        end = buffer.indexOf("\n\n");
      }
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null; // a comment (`: keep-alive`) or an empty block
  return { name, data: parseJson(data.join("\n")) };
}

function send(path, { method = "GET", query, body, signal, auth = true, accept }) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: accept };
  if (auth && apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  const form = body instanceof FormData;
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  return fetch(url, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined || form ? body : JSON.stringify(body),
  });
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
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
