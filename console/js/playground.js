// Playground: pick a model, write a prompt, generate; the controls offer only what the model
// accepts (from GET /api/models). One request is sent with the chosen n; each image's tile
// fills as its bytes arrive. The request is shown as curl, Python and grpcurl as it changes.

import { ApiError, api, models } from "./api.js";
import { append, copyText, field, formatBytes, h, replace, select, spinner, toast }
  from "./dom.js";
import { LANGUAGES } from "./snippets.js";

const PRESET_SIZES = ["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536",
  "1792x1024", "1024x1792", "2048x2048"];
const MAX_N = 10;

export function render(root) {
  const state = { models: [], model: null, controller: null, objectUrls: [], last: null };
  const form = h("form.card.play-form", { novalidate: true, "aria-label": "Request" });
  const results = h("section.card.results", { "aria-label": "Results" });
  const code = h("section.card.code", { "aria-label": "The same request as code" });
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
  }, (error) => {
    replace(form, errorBox(error, "The model list could not be loaded"));
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

const PROVIDERS = { local: "Built in", openai: "OpenAI", google: "Google (Gemini API)",
  vertex: "Google (Vertex AI)" };

function renderModelInfo(el, model) {
  if (!model) {
    replace(el);
    return;
  }
  const chips = [
    chip(PROVIDERS[model.provider] || model.provider),
    model.lifecycle !== "active" ? chip(model.lifecycle === "retired"
      ? `retired → served by ${model.served_by}` : `deprecated · shuts down ${model.shutdown_on}`,
    "warn") : chip("active", "ok"),
    chip(`n up to ${MAX_N}${model.max_n_per_call < MAX_N ? ` (${model.max_n_per_call} per upstream call)` : ""}`),
    model.edits ? chip(`edits · up to ${model.max_input_images} images`) : chip("no edits"),
    chip(`prompt ≤ ${Number(model.prompt_limit).toLocaleString("en-US")} chars`),
  ];
  replace(el,
    model.description ? h("p.model-desc", {}, model.description) : null,
    h("div.chips", {}, chips),
    model.provider_configured ? null : h("p.notice.warn", {},
      "This model's provider has no credentials on this server: requests will be refused "
      + "(503) until an operator configures it."));
}

function chip(text, kind = "") {
  return h(`span.chip${kind ? `.${kind}` : ""}`, {}, text);
}

function renderOptions(el, model, onChange) {
  if (!model) {
    replace(el);
    return;
  }
  const controls = [];
  // Size: the model's listed sizes, presets its free-size rule allows, its aspect ratios.
  const sizes = sizeOptions(model);
  const sizeSelect = select(sizes, model.default_size && sizes.some(([v]) => v === model.default_size)
    ? model.default_size : sizes[0]?.[0], { id: "size", name: "size" });
  const custom = h("div.custom-size", { hidden: true });
  if (model.size_rule) {
    const rule = model.size_rule;
    const edge = (id, label, value) => h("input", { id, type: "number", inputmode: "numeric",
      min: rule.min_edge || 1, max: rule.max_edge || undefined, step: rule.multiple_of || 1,
      value, "aria-label": label });
    append(custom, edge("size-w", "Width in pixels", 768), h("span", { "aria-hidden": "true" }, "×"),
      edge("size-h", "Height in pixels", 512), h("p.hint", {}, ruleText(rule)));
  }
  sizeSelect.addEventListener("change", () => {
    custom.hidden = sizeSelect.value !== "custom";
  });
  controls.push(h("div.field.size-field", {}, h("label", { for: "size" }, "Size"), sizeSelect,
    custom));

  const n = h("input", { id: "n", name: "n", type: "number", min: 1, max: MAX_N, value: 1,
    inputmode: "numeric" });
  controls.push(field("Images (n)", n));

  if (model.qualities?.length) {
    controls.push(field("Quality", select(model.qualities, model.default_quality,
      { id: "quality", disabled: model.qualities.length < 2 })));
  }
  if (model.styles?.length) {
    controls.push(field("Style", select(model.styles, model.styles[0], { id: "style" })));
  }
  const formats = model.output_formats?.length ? model.output_formats : ["png"];
  const format = select(formats, formats[0], { id: "output_format", disabled: formats.length < 2 });
  controls.push(field("Format", format));
  const compression = h("input", { id: "output_compression", type: "number", min: 0, max: 100,
    value: 100, inputmode: "numeric" });
  const compressionField = field("Compression", compression);
  const showCompression = () => {
    compressionField.hidden = !["jpeg", "webp"].includes(format.value);
  };
  format.addEventListener("change", showCompression);
  showCompression();
  controls.push(compressionField);
  if (model.backgrounds?.length) {
    controls.push(field("Background", select(model.backgrounds, "auto", { id: "background" })));
  }
  if (model.moderations?.length) {
    controls.push(field("Moderation", select(model.moderations, "auto", { id: "moderation" })));
  }
  controls.push(field("Answer as", select([["url", "URL (signed link)"],
    ["b64_json", "b64_json (bytes in the answer)"]], "url", { id: "response_format" })));
  replace(el, h("div.option-grid", {}, controls));
  el.querySelectorAll("input, select").forEach((control) => {
    control.addEventListener("input", onChange);
    control.addEventListener("change", onChange);
  });
}

function sizeOptions(model) {
  const out = [];
  const add = (value, label) => {
    if (!out.some(([v]) => v === value)) out.push([value, label || value.replace("x", " × ")]);
  };
  if (model.default_size && (model.sizes?.includes(model.default_size)
    || (model.size_rule && fitsRule(model.default_size, model.size_rule)))) {
    add(model.default_size);
  }
  for (const size of model.sizes || []) add(size, size === "auto" ? "auto (model decides)" : undefined);
  if (model.size_rule) {
    for (const size of PRESET_SIZES) if (fitsRule(size, model.size_rule)) add(size);
  }
  for (const ratio of model.aspect_ratios || []) {
    const size = sizeForRatio(ratio);
    add(size, `${ratio} · ${size.replace("x", " × ")}`);
  }
  if (model.size_rule) out.push(["custom", "Custom…"]);
  return out;
}

function fitsRule(size, rule) {
  const [w, h] = size.split("x").map(Number);
  if (!w || !h) return false;
  const m = rule.multiple_of || 1;
  const ratio = Math.max(w, h) / Math.min(w, h);
  return w % m === 0 && h % m === 0 && Math.min(w, h) >= (rule.min_edge || 1)
    && (!rule.max_edge || Math.max(w, h) <= rule.max_edge)
    && (!rule.max_ratio || ratio <= rule.max_ratio)
    && (!rule.min_pixels || w * h >= rule.min_pixels)
    && (!rule.max_pixels || w * h <= rule.max_pixels);
}

function ruleText(rule) {
  const parts = [`edges ${rule.min_edge}–${rule.max_edge} px`];
  if (rule.multiple_of > 1) parts.push(`multiples of ${rule.multiple_of}`);
  if (rule.max_ratio) parts.push(`ratio ≤ ${rule.max_ratio}:1`);
  if (rule.min_pixels) parts.push(`≥ ${(rule.min_pixels / 1e6).toFixed(2)} MP`);
  if (rule.max_pixels) parts.push(`≤ ${(rule.max_pixels / 1e6).toFixed(2)} MP`);
  return `Any size: ${parts.join(", ")}.`;
}

function sizeForRatio(ratio) {
  const [a, b] = ratio.split(":").map(Number);
  const round = (x) => Math.max(8, Math.round(x / 8) * 8);
  return a >= b ? `1024x${round((1024 * b) / a)}` : `${round((1024 * a) / b)}x1024`;
}

function renderSources(el, state, onChange) {
  const model = state.model;
  state.sources = [];
  if (!model?.edits) {
    replace(el);
    return;
  }
  const input = h("input", { id: "image", type: "file", multiple: model.max_input_images > 1,
    accept: "image/png,image/jpeg,image/webp,image/gif" });
  const list = h("ul.thumbs");
  input.addEventListener("change", async () => {
    const files = [...input.files].slice(0, model.max_input_images);
    state.sources = await Promise.all(files.map(readAsDataUrl));
    replace(list, state.sources.map((url, i) => h("li", {},
      h("img", { src: url, alt: `Source image ${i + 1}` }))));
    onChange();
  });
  replace(el, h("details.edit-box", {},
    h("summary", {}, "Edit images instead (optional)"),
    field(`Source image${model.max_input_images > 1 ? "s" : ""}`, input,
      `Up to ${model.max_input_images}; sent as base64 in \`image\`.`),
    list));
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** The JSON body for the form as it stands: only what differs from the model's defaults. */
function requestBody(state, form) {
  const model = state.model;
  const value = (id) => form.querySelector(`#${id}`)?.value;
  const visible = (id) => {
    const el = form.querySelector(`#${id}`);
    return el && !el.disabled && !el.closest("[hidden]");
  };
  const body = { model: model?.id, prompt: value("prompt") || "" };
  const n = Number.parseInt(value("n"), 10);
  body.n = Number.isNaN(n) ? value("n") : n;
  body.size = value("size") === "custom" ? `${value("size-w")}x${value("size-h")}` : value("size");
  if (!model) return body;
  if (visible("quality") && value("quality") !== model.default_quality) {
    body.quality = value("quality");
  }
  if (visible("style")) body.style = value("style");
  if (visible("output_format") && value("output_format") !== model.output_formats[0]) {
    body.output_format = value("output_format");
  }
  if (visible("output_compression") && value("output_compression") !== "100") {
    body.output_compression = Number(value("output_compression"));
  }
  if (visible("background") && value("background") !== "auto") body.background = value("background");
  if (visible("moderation") && value("moderation") !== "auto") body.moderation = value("moderation");
  if (value("response_format") === "b64_json") body.response_format = "b64_json";
  if (state.sources?.length) body.image = state.sources;
  return body;
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
  replace(results,
    h("div.result-head", {},
      h("p.status", { role: "status" }, spinner("Generating"),
        ` Generating ${count} image${count > 1 ? "s" : ""} with ${body.model} · `, elapsed)),
    promptLine(body.prompt),
    h("div.image-grid", { id: "images" }, tiles));

  try {
    const { data, headers, ms } = await api("/api/images/generations", {
      method: "POST", body, signal: controller.signal });
    const served = headers.get("x-model-served") || body.model;
    const requestId = headers.get("x-request-id") || "";
    const images = data.data || [];
    replace(results.querySelector(".result-head"), h("p.status.done", { role: "status" },
      `${images.length} image${images.length === 1 ? "" : "s"} in ${(ms / 1000).toFixed(2)} s`,
      " · served by ", h("code", {}, served),
      requestId ? [" · request ", h("code", {}, requestId)] : null));
    images.forEach((image, i) => {
      const tile = tiles[i] || results.querySelector("#images").appendChild(placeholder(body.size, i));
      fillTile(state, tile, image, i, body, data.output_format || "png");
    });
  } catch (error) {
    if (error.name === "AbortError") {
      replace(results.querySelector(".result-head"), h("p.status", { role: "status" },
        "Cancelled: the hub stops the upstream work."));
      results.querySelector("#images")?.remove();
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

function promptLine(prompt) {
  // The prompt as the person wrote it: a text node, never markup.
  return h("p.prompt-echo", {}, h("span.muted", {}, "Prompt: "), h("q", { id: "prompt-echo" }, prompt));
}

function placeholder(size, index) {
  const tile = h("figure.tile.loading", { "aria-busy": "true" },
    h("div.frame", {}, spinner(`Image ${index + 1} loading`)),
    h("figcaption", {}, h("span.muted", {}, `Image ${index + 1}`)));
  const [w, hgt] = String(size).split("x").map(Number);
  if (w > 0 && hgt > 0) tile.querySelector(".frame").style.aspectRatio = `${w} / ${hgt}`;
  return tile;
}

function fillTile(state, tile, image, index, body, format) {
  const frame = tile.querySelector(".frame");
  const caption = tile.querySelector("figcaption");
  let src = image.url;
  let blob = null;
  if (!src && image.b64_json) {
    blob = base64Blob(image.b64_json, `image/${format}`);
    src = URL.createObjectURL(blob);
    state.objectUrls.push(src);
  }
  const img = h("img", { alt: `Image ${index + 1} for the prompt “${body.prompt.slice(0, 200)}”`,
    decoding: "async" });
  img.addEventListener("load", () => {
    tile.classList.remove("loading");
    tile.removeAttribute("aria-busy");
    frame.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
    replace(size, `${img.naturalWidth} × ${img.naturalHeight}`);
  });
  img.addEventListener("error", () => {
    tile.classList.remove("loading");
    replace(frame, h("p.notice.error", {}, "This image could not be loaded."));
  });
  const size = h("span.size", {}, "…");
  const download = h("button.small", { type: "button" }, "Download");
  download.addEventListener("click", () => downloadImage(src, blob, body, index, format));
  const copy = image.url ? h("button.small", { type: "button" }, "Copy URL") : null;
  copy?.addEventListener("click", () => copyText(image.url, copy));
  const open = h("a.small.button-link", { href: src, target: "_blank", rel: "noopener" }, "Open");
  replace(caption,
    h("div.caption-row", {}, h("span.muted", {}, `#${index + 1}`), size,
      h("span.muted", {}, format), blob ? h("span.muted", {}, formatBytes(blob.size)) : null),
    image.revised_prompt ? h("p.revised", {}, "Revised prompt: ", h("q", {}, image.revised_prompt))
      : null,
    h("div.tile-actions", {}, download, copy, open));
  frame.replaceChildren(img);
  img.src = src;
}

function base64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function downloadImage(src, blob, body, index, format) {
  let url = src;
  let made = false;
  try {
    if (!blob) {
      const answer = await fetch(src, { credentials: "omit" });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      blob = await answer.blob();
    }
    url = URL.createObjectURL(blob);
    made = true;
  } catch (error) {
    toast(`Could not fetch the image (${error.message}); opening it instead.`, "warn");
    window.open(src, "_blank", "noopener");
    return;
  }
  const name = `${body.model}-${index + 1}.${format === "jpeg" ? "jpg" : format}`;
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(link);
  link.click();
  link.remove();
  if (made) setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- errors and code ------------------------------------------------------------------

export function errorBox(error, title) {
  const isApi = error instanceof ApiError;
  return h("div.error-box", { role: "alert" },
    h("p.error-title", {}, title, isApi ? ` (HTTP ${error.status}${error.code ? ` · ${error.code}` : ""})` : ""),
    h("p.error-message", {}, isApi ? error.message : `The hub could not be reached: ${error.message}`),
    isApi && error.param ? h("p.error-param", {}, "Field: ", h("code", {}, error.param)) : null);
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

function updateCode(el, body) {
  const origin = window.location.origin;
  let active = el.dataset.active || "curl";
  const tabs = h("div.tabs", { role: "tablist", "aria-label": "Language" });
  const panel = h("div.code-panel", { role: "tabpanel", id: "code-panel" });
  const show = (id) => {
    active = id;
    el.dataset.active = id;
    const [, , make] = LANGUAGES.find(([lang]) => lang === id);
    const text = make(origin, body);
    const copy = h("button.small.copy-code", { type: "button" }, "Copy");
    copy.addEventListener("click", () => copyText(text, copy));
    replace(panel, copy, h("pre", {}, h("code", { id: `code-${id}` }, text)));
    for (const tab of tabs.children) {
      const selected = tab.dataset.lang === id;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
    }
  };
  for (const [id, label] of LANGUAGES) {
    const tab = h("button.tab", { type: "button", role: "tab", dataset: { lang: id },
      "aria-controls": "code-panel" }, label);
    tab.addEventListener("click", () => show(id));
    tab.addEventListener("keydown", (event) => {
      const ids = LANGUAGES.map(([lang]) => lang);
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = ids[(ids.indexOf(id) + step + ids.length) % ids.length];
      show(next);
      tabs.querySelector(`[data-lang="${next}"]`).focus();
    });
    tabs.appendChild(tab);
  }
  replace(el, h("div.code-head", {}, h("h2", {}, "This request as code"), tabs), panel,
    h("p.hint", {}, "Set AIGNE_HUB_API_KEY to your key first; snippets never contain it."));
  show(active);
}
