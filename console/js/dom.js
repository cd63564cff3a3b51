// Building the page without innerHTML: every string that may come from a person or from the
// server (prompts, error messages, key names) becomes a text node, never markup.

/**
 * h("button.primary", {type: "button", onclick: f}, "Generate") makes an element.
 * The tag may carry classes after dots. Attributes: `on*` functions become listeners,
 * `dataset`, `aria*`/other names become attributes; `false`/`null` attributes are left out.
 * Children: nodes, strings (text nodes), arrays, and null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = name === "svg" || SVG_TAGS.has(name)
    ? document.createElementNS(SVG_NS, name)
    : document.createElement(name || "div");
  if (classes.length) el.setAttribute("class", classes.join(" "));
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "class") {
      el.setAttribute("class", [el.getAttribute("class"), value].filter(Boolean).join(" "));
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else if (key === "checked" || key === "selected" || key === "disabled") {
      el[key] = Boolean(value);
      if (value) el.setAttribute(key, "");
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, ...children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["g", "rect", "line", "path", "text", "title", "circle", "polyline",
  "tspan"]);

export function append(parent, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace everything inside `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

let ids = 0;
/** A fresh id for label/aria wiring. */
export function uid(prefix = "f") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled form field: label above, control, optional hint below. */
export function field(label, control, hint) {
  const id = control.id || (control.id = uid());
  const hintEl = hint ? h("p.hint", { id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div.field", {}, h("label", { for: id }, label), control, hintEl);
}

export function select(options, value, attrs = {}) {
  const el = h("select", attrs);
  for (const option of options) {
    const [optionValue, text] = Array.isArray(option) ? option : [option, option];
    el.appendChild(h("option", { value: optionValue, selected: optionValue === value }, text));
  }
  return el;
}

/** A spinner with words for screen readers. */
export function spinner(label = "Loading") {
  return h("span.spinner", { role: "status" }, h("span.visually-hidden", {}, label));
}

/** Copy text, and say so on the button for a moment. */
export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Clipboard access refused (e.g. not a secure context): select a hidden textarea.
    const area = h("textarea.offscreen", { readonly: true, "aria-hidden": "true" });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const before = button.textContent;
    button.textContent = "Copied";
    button.classList.add("copied");
    setTimeout(() => {
      button.textContent = before;
      button.classList.remove("copied");
    }, 1500);
  }
}

/** An announcement for screen readers and a small toast for everyone. */
export function toast(message, kind = "info") {
  let region = document.getElementById("toasts");
  if (!region) {
    region = h("div.toasts", { id: "toasts", role: "status", "aria-live": "polite" });
    document.body.appendChild(region);
  }
  const item = h(`div.toast.${kind}`, {}, message);
  region.appendChild(item);
  setTimeout(() => item.remove(), 4000);
}

export const formatNumber = (n) => new Intl.NumberFormat("en-US").format(Number(n || 0));

export function formatUsd(value) {
  const n = Number(value || 0);
  const digits = n !== 0 && Math.abs(n) < 0.01 ? 4 : 2;
  return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD",
    minimumFractionDigits: digits, maximumFractionDigits: digits }).format(n);
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit" });
}

export function formatMs(ms) {
  const n = Number(ms || 0);
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
}

export function formatBytes(bytes) {
  const n = Number(bytes || 0);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
