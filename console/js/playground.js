// Playground: pick a model, write a prompt, generate; the controls offer only what the model
// accepts (from GET /api/models). One request is sent with the chosen n; each image's tile
// fills as its bytes arrive. With "stream", the answer is OpenAI's image stream: each partial
// image shows as it arrives and gives way to the finished image. With source images (and a
// mask) the request is an edit, sent as OpenAI's multipart form to /api/images/edits. The
// request is shown as curl, Python and grpcurl as it changes.

import { api, models, streamEvents } from "./api.js";
import { updateCode } from "./code-panel.js";
import { append, field, h, replace, spinner } from "./dom.js";
import { errorBox } from "./errors.js";
import { MAX_N, PROVIDERS, renderModelInfo, renderOptions, renderSources, requestBody,
  requestPath, requestPayload } from "./model-form.js";
import { fillTile, placeholder, promptLine, showPreview } from "./results.js";

export function render(root) {
  const state = { models: [], model: null, controller: null, objectUrls: [] };
  const form = h("form.card.play-form", { novalidate: true, "aria-label": "Request" });
  const results = h("section.card.results", { "aria-label": "Results" });
  const code = h("section.card.code", { "aria-label": "The same request as code", hidden: true });
  append(root, h("div.page-head", {},
    h("h1", { tabindex: "-1" }, "Playground"),
    h("p.lead", {}, "Try a model with your key. The controls offer only what the chosen "
      + "model accepts.")),
  h("div.play-grid", {}, form, h("div.play-out", {}, results, code)));
  replace(results, emptyResults());
  replace(form, h("p.muted", {}, spinner("Loading models"), " Loading models…"));

  models().then((list) => {
    state.models = list;
    buildForm(form, state, () => updateCode(code, requestBody(state, form)), (body) =>
      generate(state, results, form, body));
    updateCode(code, requestBody(state, form));
    code.hidden = false;
  }, (error) => {
    replace(form, errorBox(error, "The model list could not be loaded"),
      error.status === 401 ? h("p.hint", {}, "Check the key in the box at the top: "
        + "“Forget key”, then paste another.") : null);
  });
  return () => {
    state.controller?.abort();
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
  };
}

function emptyResults() {
  return h("div.empty", {},
    h("div.empty-art", { "aria-hidden": "true" }, "◐"),
    h("p", {}, "Your images appear here."),
    h("p.muted", {}, "Tip: Ctrl+Enter in the prompt generates."));
}

// ---- the form -------------------------------------------------------------------------

function buildForm(form, state, onChange, onSubmit) {
  const usable = state.models.filter((m) => m.available !== false);
  const byProvider = new Map();
  for (const model of usable) {
    if (!byProvider.has(model.provider)) byProvider.set(model.provider, []);
    byProvider.get(model.provider).push(model);
  }
  const modelSelect = h("select", { id: "model", name: "model" });
  for (const [provider, list] of byProvider) {
    const group = h("optgroup", { label: PROVIDERS[provider] || provider });
    for (const model of list) {
      let label = model.id;
      if (model.lifecycle === "retired") label += ` (retired → ${model.served_by})`;
      else if (model.lifecycle === "deprecated") label += " (deprecated)";
      if (!model.provider_configured) label += " — not configured";
      group.appendChild(h("option", { value: model.id }, label));
    }
    modelSelect.appendChild(group);
  }
  const first = usable.find((m) => m.provider_configured && m.lifecycle === "active") || usable[0];
  modelSelect.value = first ? first.id : "";

  const modelInfo = h("div.model-info", { "aria-live": "polite" });
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: 5,
    placeholder: "A lighthouse at dawn, watercolor", spellcheck: "true" });
  const counter = h("span.counter", { "aria-live": "off" });
  const options = h("div.options");
  const sources = h("div.sources");
  const submit = h("button.primary", { type: "submit", id: "generate" }, "Generate");
  const cancel = h("button.secondary", { type: "button", id: "cancel", hidden: true }, "Cancel");

  replace(form,
    field("Model", modelSelect),
    modelInfo,
    h("div.field", {},
      h("div.label-row", {}, h("label", { for: "prompt" }, "Prompt"), counter),
      prompt),
    options,
    sources,
    h("div.actions", {}, submit, cancel));

  const refreshCounter = () => {
    const limit = state.model?.prompt_limit || 0;
    counter.textContent = limit ? `${prompt.value.length} / ${limit}` : `${prompt.value.length}`;
    counter.classList.toggle("over", limit > 0 && prompt.value.length > limit);
  };
  const choose = () => {
    state.model = state.models.find((m) => m.id === modelSelect.value) || null;
    renderModelInfo(modelInfo, state.model);
    renderOptions(options, state.model, onChange);
    renderSources(sources, state, onChange);
    refreshCounter();
    onChange();
  };
  modelSelect.addEventListener("change", choose);
  prompt.addEventListener("input", () => {
    refreshCounter();
    onChange();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  cancel.addEventListener("click", () => state.controller?.abort());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.controller) return;
    onSubmit(requestBody(state, form));
  });
  choose();
}

// ---- generating -----------------------------------------------------------------------

async function generate(state, results, form, body) {
  const controller = new AbortController();
  state.controller = controller;
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  clearInvalid(form);
  const submit = form.querySelector("#generate");
  const cancel = form.querySelector("#cancel");
  submit.disabled = true;
  submit.replaceChildren(spinner("Generating"), " Generating…");
  cancel.hidden = false;

  const count = Number.isInteger(body.n) && body.n >= 1 && body.n <= MAX_N ? body.n : 1;
  const tiles = Array.from({ length: count }, (_, i) => placeholder(body.size, i));
  const elapsed = h("span.elapsed", {}, "0.0 s");
  const started = performance.now();
  const timer = setInterval(() => {
    elapsed.textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  const status = h("span.progress", {}, ` ${body.stream ? "Streaming" : "Generating"} ${count} `
    + `image${count > 1 ? "s" : ""} with ${body.model}`);
  replace(results,
    h("div.result-head", {},
      h("p.status", { role: "status" }, spinner("Generating"), status, " · ", elapsed)),
    promptLine(body.prompt),
    h("div.image-grid", { id: "images" }, tiles));

  const run = { state, results, tiles, body, status, started, signal: controller.signal };
  try {
    await (body.stream ? answerStream(run) : answerOnce(run));
  } catch (error) {
    if (error.name === "AbortError") {
      replace(results.querySelector(".result-head"), h("p.status", { role: "status" },
        "Cancelled: the hub stops the upstream work."));
      results.querySelector("#images")?.remove();
    } else if (error.streamed) {
      streamStopped(results, error);
    } else {
      replace(results, errorBox(error, "The hub refused the request"), promptLine(body.prompt));
      markInvalid(form, error.param);
    }
  } finally {
    clearInterval(timer);
    state.controller = null;
    submit.disabled = false;
    submit.replaceChildren("Generate");
    cancel.hidden = true;
  }
}

// One answer: the JSON of all images at once.
async function answerOnce({ state, results, tiles, body, signal }) {
  const { data, headers, ms } = await api(requestPath(body), {
    method: "POST", body: requestPayload(body, state), signal });
  const images = data.data || [];
  showDone(results, headers, body, `${images.length} image${images.length === 1 ? "" : "s"} `
    + `in ${(ms / 1000).toFixed(2)} s`);
  images.forEach((image, i) => {
    fillTile(state, tileFor(results, tiles, i, body), image, i, body,
      data.output_format || "png");
  });
}

// OpenAI's image stream: each image's partial images (previews) in its tile as they arrive,
// then its `completed` event replaces them. Images are told in the order they are made.
async function answerStream({ state, results, tiles, body, status, started, signal }) {
  const { headers, events } = await streamEvents(requestPath(body), {
    body: requestPayload(body, state), signal });
  let done = 0;
  let previews = 0;
  for await (const { name, data } of events) {
    const tile = tileFor(results, tiles, done, body);
    if (name.endsWith(".partial_image")) {
      previews += 1;
      showPreview(state, tile, data, done);
    } else if (name.endsWith(".completed")) {
      fillTile(state, tile, data, done, body, data.output_format || "png");
      done += 1;
    }
    status.textContent = ` Streaming: ${done} of ${tiles.length} done, ${previews} partial `
      + `image${previews === 1 ? "" : "s"}`;
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  showDone(results, headers, body, `${done} image${done === 1 ? "" : "s"} in ${seconds} s, `
    + `streamed with ${previews} partial image${previews === 1 ? "" : "s"}`);
}

function tileFor(results, tiles, index, body) {
  if (!tiles[index]) {
    tiles[index] = results.querySelector("#images").appendChild(placeholder(body.size, index));
  }
  return tiles[index];
}

function showDone(results, headers, body, summary) {
  const served = headers.get("x-model-served") || body.model;
  const requestId = headers.get("x-request-id") || "";
  replace(results.querySelector(".result-head"), h("p.status.done", { role: "status" },
    summary, " · served by ", h("code", {}, served),
    requestId ? [" · request ", h("code", {}, requestId)] : null));
}

// An `error` event after the stream began: what arrived stays; tiles not finished say so.
function streamStopped(results, error) {
  replace(results.querySelector(".result-head"),
    errorBox(error, "The stream stopped with an error"));
  for (const tile of results.querySelectorAll("#images .tile.loading, #images .tile.previewing")) {
    tile.classList.remove("loading");
    tile.removeAttribute("aria-busy");
    replace(tile.querySelector("figcaption"), h("p.notice.error", {},
      tile.classList.contains("previewing") ? "Preview only: this image was not finished."
        : "This image was not made."));
    if (!tile.classList.contains("previewing")) tile.querySelector(".frame").replaceChildren();
  }
}

function markInvalid(form, param) {
  if (!param) return;
  const control = form.querySelector(`#${CSS.escape(param)}`);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
}

function clearInvalid(form) {
  form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}
