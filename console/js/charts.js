// Small SVG charts, drawn here: no chart library, nothing from elsewhere. Each bar carries
// its numbers (data-*) and a <title> tooltip; each chart has a label for screen readers.

import { h } from "./dom.js";

export const PALETTE = ["#4f46e5", "#0d9488", "#ea580c", "#db2777", "#65a30d", "#0284c7",
  "#9333ea", "#ca8a04", "#dc2626", "#475569"];

/** A colour per model name, stable for a given list of names. */
export function colours(names) {
  const sorted = [...new Set(names)].sort();
  return new Map(sorted.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
}

/** Round numbers for an axis from 0 to at least `max`. */
function ticks(max, integer, count = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  if (integer) step = Math.max(1, Math.ceil(step));
  const out = [];
  for (let v = 0; v <= max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/**
 * Stacked bars per day. `days`: ["YYYY-MM-DD"...]; `series`: [{name, colour, values: Map
 * day → number}]; `format`: how a value reads.
 */
export function stackedBars({ id, label, days, series, format = String, integer = false }) {
  const width = 1100;
  const height = 260;
  const pad = { top: 12, right: 12, bottom: 28, left: 64 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const totals = days.map((day) => series.reduce((sum, s) => sum + (s.values.get(day) || 0), 0));
  const axis = ticks(Math.max(0, ...totals), integer);
  const top = axis[axis.length - 1] || 1;
  const slot = plotW / Math.max(1, days.length);
  const barW = Math.max(2, Math.min(36, slot * 0.7));
  const y = (v) => pad.top + plotH - (v / top) * plotH;

  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": label, dataset: { chart: id }, preserveAspectRatio: "xMidYMid meet" },
  h("title", {}, label));
  for (const value of axis) {
    svg.appendChild(h("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value),
      class: value === 0 ? "axis" : "grid" }));
    svg.appendChild(h("text", { x: pad.left - 8, y: y(value) + 4, class: "tick",
      "text-anchor": "end" }, format(value)));
  }
  const labelEvery = Math.ceil(days.length / 10);
  days.forEach((day, i) => {
    const x = pad.left + slot * i + (slot - barW) / 2;
    let base = 0;
    for (const s of series) {
      const value = s.values.get(day) || 0;
      if (value <= 0) continue;
      const rect = h("rect", { x, width: barW, y: y(base + value),
        height: Math.max(1, y(base) - y(base + value)), fill: s.colour, class: "bar",
        dataset: { date: day, model: s.name, value: String(value) } },
      h("title", {}, `${day} · ${s.name}: ${format(value)}`));
      svg.appendChild(rect);
      base += value;
    }
    if (i % labelEvery === 0 || i === days.length - 1) {
      svg.appendChild(h("text", { x: x + barW / 2, y: height - 8, class: "tick",
        "text-anchor": "middle" }, day.slice(5)));
    }
  });
  return svg;
}

/** Horizontal bars, one per row: [{name, value, colour}]. */
export function horizontalBars({ id, label, rows, format = String }) {
  const rowH = 30;
  const width = 540;
  const left = 190;
  const right = 90;
  const height = Math.max(1, rows.length) * rowH + 8;
  const max = Math.max(0, ...rows.map((r) => r.value)) || 1;
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": label, dataset: { chart: id } }, h("title", {}, label));
  rows.forEach((row, i) => {
    const y = 4 + i * rowH;
    const w = ((width - left - right) * row.value) / max;
    svg.appendChild(h("text", { x: left - 10, y: y + 19, class: "row-label",
      "text-anchor": "end" }, row.name.length > 26 ? `${row.name.slice(0, 25)}…` : row.name));
    svg.appendChild(h("rect", { x: left, y: y + 5, width: Math.max(row.value > 0 ? 2 : 0, w),
      height: rowH - 10, rx: 3, fill: row.colour, class: "bar",
      dataset: { model: row.name, value: String(row.value) } },
    h("title", {}, `${row.name}: ${format(row.value)}`)));
    svg.appendChild(h("text", { x: left + w + 8, y: y + 19, class: "row-value" },
      format(row.value)));
  });
  return svg;
}

export function legend(colourMap) {
  return h("ul.legend", {}, [...colourMap].map(([name, colour]) => {
    const swatch = h("span.swatch", { "aria-hidden": "true" });
    swatch.style.background = colour;
    return h("li", {}, swatch, name);
  }));
}
