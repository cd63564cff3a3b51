// The request form's model-dependent part: what the chosen model is (from GET /api/models)
// and the controls it accepts — sizes (listed, a free-size rule, or aspect ratios), n,
// quality, style, format, compression, background, moderation, streaming with partial
// images, source images and a mask — and the body they make: JSON for a generation, OpenAI's
// multipart form for an edit.

import { append, field, h, replace, select } from "./dom.js";

const PRESET_SIZES = ["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536",
  "1792x1024", "1024x1792", "2048x2048"];
export const MAX_N = 10;

export const PROVIDERS = { local: "Built in", openai: "OpenAI", google: "Google (Gemini API)",
  vertex: "Google (Vertex AI)" };

export function renderModelInfo(el, model) {
  if (!model) {
    replace(el);
    return;
  }
  const chips = [
    chip(PROVIDERS[model.provider] || model.provider),
    // The listing leaves out what is not known: a shutdown date, a serving model.
    model.lifecycle !== "active" ? chip(model.lifecycle === "retired"
      ? `retired${model.served_by ? ` → served by ${model.served_by}` : ""}`
      : `deprecated${model.shutdown_on ? ` · shuts down ${model.shutdown_on}` : ""}`,
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

export function renderOptions(el, model, onChange) {
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
    const [w, hgt] = /^\d+x\d+$/.test(model.default_size || "")
      ? model.default_size.split("x") : ["1024", "1024"];
    append(custom, edge("size-w", "Width in pixels", w), h("span", { "aria-hidden": "true" }, "×"),
      edge("size-h", "Height in pixels", hgt), h("p.hint", {}, ruleText(rule)));
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
  const answerAs = field("Answer as", select([["url", "URL (signed link)"],
    ["b64_json", "b64_json (bytes in the answer)"]], "url", { id: "response_format" }));
  controls.push(answerAs);
  replace(el, h("div.option-grid", {}, controls), streamControls(model, answerAs));
  el.querySelectorAll("input, select").forEach((control) => {
    control.addEventListener("input", onChange);
    control.addEventListener("change", onChange);
  });
}

// `stream: true`: OpenAI's image stream, with `partial_images` previews where the model
// makes them. A stream's events carry the image bytes, so "Answer as" does not apply.
function streamControls(model, answerAs) {
  const stream = h("input", { id: "stream", type: "checkbox" });
  const partial = h("input", { id: "partial_images", type: "number", min: 0, max: 3, value: 2,
    inputmode: "numeric", disabled: true });
  const partialField = field("Partial images", partial, model.partial_images
    ? "Previews of each image, 0–3, shown as they arrive."
    : "This model sends each image when it is done: no previews.");
  stream.addEventListener("change", () => {
    partial.disabled = !stream.checked || !model.partial_images;
    answerAs.hidden = stream.checked;
  });
  return h("div.stream-box", {},
    h("div.check", {}, stream, h("label", { for: "stream" },
      "Stream the answer (partial images as they are made)")),
    partialField);
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

export function renderSources(el, state, onChange) {
  const model = state.model;
  Object.assign(state, { sources: [], sourceFiles: [], mask: null, maskFile: null });
  if (!model?.edits) {
    replace(el);
    return;
  }
  const input = h("input", { id: "image", type: "file", multiple: model.max_input_images > 1,
    accept: "image/png,image/jpeg,image/webp,image/gif" });
  const list = h("ul.thumbs");
  input.addEventListener("change", async () => {
    state.sourceFiles = [...input.files].slice(0, model.max_input_images);
    state.sources = await Promise.all(state.sourceFiles.map(readAsDataUrl));
    replace(list, state.sources.map((url, i) => h("li", {},
      h("img", { src: url, alt: `Source image ${i + 1}` }))));
    onChange();
  });
  replace(el, h("details.edit-box", {},
    h("summary", {}, "Edit images instead (optional)"),
    field(`Source image${model.max_input_images > 1 ? "s" : ""}`, input,
      `Up to ${model.max_input_images}; sent to POST /api/images/edits as a multipart form.`),
    list,
    model.masks ? maskField(state, onChange) : null));
}

// The mask: where it is fully transparent the first image is edited, elsewhere kept.
function maskField(state, onChange) {
  const input = h("input", { id: "mask", type: "file", accept: "image/png" });
  const thumb = h("ul.thumbs");
  input.addEventListener("change", async () => {
    state.maskFile = input.files[0] || null;
    state.mask = state.maskFile ? await readAsDataUrl(state.maskFile) : null;
    replace(thumb, state.mask ? h("li", {}, h("img", { src: state.mask, alt: "Mask" })) : null);
    onChange();
  });
  return h("div.mask-field", {},
    field("Mask (optional)", input, "A PNG with an alpha channel, the size of the first "
      + "image: the image is edited where the mask is transparent."),
    thumb);
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

export function requestBody(state, form) {
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
  // Sent when it differs from the model's own default (gpt-image models answer b64_json).
  if (visible("response_format")
    && value("response_format") !== (model.default_response_format || "url")) {
    body.response_format = value("response_format");
  }
  if (form.querySelector("#stream")?.checked) {
    body.stream = true;
    const partial = Number.parseInt(value("partial_images"), 10);
    if (visible("partial_images") && partial !== 0) {
      body.partial_images = Number.isNaN(partial) ? value("partial_images") : partial;
    }
  }
  if (state.sources?.length) body.image = state.sources;
  if (body.image && state.mask) body.mask = state.mask;
  return body;
}

/** Where the body goes: an edit (source images given) to /api/images/edits. */
export function requestPath(body) {
  return body.image ? "/api/images/edits" : "/api/images/generations";
}

/**
 * What is sent for the body: an edit as OpenAI's multipart form (the files as chosen,
 * `image` or `image[]`, and `mask`; every other field as text), a generation as JSON.
 */
export function requestPayload(body, state) {
  if (!body.image) return body;
  const form = new FormData();
  for (const [name, value] of Object.entries(body)) {
    if (name !== "image" && name !== "mask") form.append(name, String(value));
  }
  const files = state.sourceFiles || [];
  for (const file of files) form.append(files.length > 1 ? "image[]" : "image", file, file.name);
  if (state.maskFile) form.append("mask", state.maskFile, state.maskFile.name);
  return form;
}
