// Usage: images and cost per day and per model over a range (GET /api/usage), and the recent
// requests (GET /api/usage/records) with filters. The numbers are the API's, as it gives them.

import { api, isAdmin, models, utcDay } from "./api.js";
import { colours, horizontalBars, legend, stackedBars } from "./charts.js";
import { append, field, formatBytes, formatMs, formatNumber, formatTime, formatUsd, h, replace,
  select, spinner } from "./dom.js";
import { errorBox } from "./errors.js";

const DAY = 86_400_000;
const STATUSES = ["OK", "INVALID_VALUE", "MISSING_REQUIRED_PARAMETER", "UNSUPPORTED_VALUE",
  "UNSUPPORTED_SIZE", "MODEL_NOT_ALLOWED", "DAILY_QUOTA_EXCEEDED", "MONTHLY_QUOTA_EXCEEDED",
  "RATE_LIMIT_EXCEEDED", "CONTENT_POLICY_VIOLATION", "PROVIDER_NOT_CONFIGURED",
  "UPSTREAM_ERROR", "UPSTREAM_RATE_LIMITED", "TIMEOUT", "CANCELLED", "INTERNAL"];

export function render(root) {
  const today = new Date();
  const state = {
    admin: false, keyNames: new Map(), nextToken: "", loads: 0,
    start: utcDay(new Date(today.getTime() - 13 * DAY)), end: utcDay(today),
    key: "", model: "", status: "",
  };
  const filters = h("form.card.filters", { "aria-label": "Range and filters" });
  const summary = h("div.tiles", { "aria-live": "polite" });
  const charts = h("div.chart-grid");
  const records = h("section.card.records", { "aria-label": "Recent requests" });
  append(root, h("div.page-head", {},
    h("h1", { tabindex: "-1" }, "Usage"),
    h("p.lead", {}, "Images and cost per UTC day and model, and each request as recorded.")),
  filters, summary, charts, records);
  replace(summary, h("p.muted", {}, spinner(), " Loading usage…"));

  // Each refresh is one load: an answer that arrives after a newer refresh began is dropped,
  // so a slow answer for the old filters never replaces the new one.
  const refresh = () => {
    state.loads += 1;
    loadTotals(state, summary, charts);
    loadRecords(state, records, false);
  };
  setup(state, filters, refresh).then(refresh, (error) => {
    replace(summary, errorBox(error, "Usage could not be loaded"));
  });
}

async function setup(state, form, refresh) {
  state.admin = await isAdmin();
  const modelList = await models().catch(() => []);
  const start = h("input", { id: "usage-start", type: "date", value: state.start, max: state.end });
  const end = h("input", { id: "usage-end", type: "date", value: state.end });
  const presets = h("div.presets", { role: "group", "aria-label": "Quick ranges" },
    [7, 30, 90].map((days) => {
      const button = h("button.small.secondary", { type: "button" }, `${days} days`);
      button.addEventListener("click", () => {
        const now = new Date();
        end.value = utcDay(now);
        start.value = utcDay(new Date(now.getTime() - (days - 1) * DAY));
        apply();
      });
      return button;
    }));
  let keyControl;
  if (state.admin) {
    const { data } = await api("/api/admin/keys", { query: { page_size: 1000 } });
    for (const key of data.keys || []) state.keyNames.set(key.id, key.name);
    keyControl = select([["-", "All keys"], ...(data.keys || []).map((k) =>
      [k.id, `${k.name} (${k.prefix})`])], "-", { id: "usage-key" });
    state.key = "-";
  } else {
    keyControl = select([["", "Your key"]], "", { id: "usage-key", disabled: true });
  }
  const model = select([["", "All models"], ...modelList.map((m) => [m.id, m.id])], "",
    { id: "usage-model" });
  const status = h("input", { id: "usage-status", list: "usage-statuses", placeholder: "any",
    autocomplete: "off", spellcheck: "false" });
  const statuses = h("datalist", { id: "usage-statuses" },
    STATUSES.map((s) => h("option", { value: s })));
  const apply = () => {
    state.start = start.value || state.start;
    state.end = end.value || state.end;
    state.key = keyControl.value;
    state.model = model.value;
    state.status = status.value.trim().toUpperCase();
    refresh();
  };
  for (const control of [start, end, keyControl, model]) control.addEventListener("change", apply);
  status.addEventListener("change", apply);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  replace(form,
    h("div.filter-row", {},
      field("From (UTC day)", start), field("To (UTC day)", end),
      h("div.field.range-field", {}, h("span.label", {}, "Quick range"), presets),
      field("Key", keyControl), field("Model", model),
      field("Status (requests)", status), statuses,
      h("div.field.apply", {}, h("button.primary", { type: "submit" }, "Apply"))),
    state.admin ? null : h("p.hint", {}, "Your own usage. Admin keys see every key's."));
}

async function loadTotals(state, summary, charts) {
  const load = state.loads;
  replace(charts, h("p.muted", {}, spinner(), " Loading charts…"));
  try {
    const { data } = await api("/api/usage", { query: {
      key_id: state.key, start_date: state.start, end_date: state.end, model: state.model } });
    if (load === state.loads) drawTotals(data, summary, charts);
  } catch (error) {
    if (load !== state.loads) return;
    replace(summary, errorBox(error, "Usage could not be loaded"));
    replace(charts);
  }
}

function drawTotals(data, summary, charts) {
  const total = data.total || {};
  replace(summary,
    tile("Requests", formatNumber(total.requests), `${formatNumber(total.failed_requests)} failed`,
      "requests"),
    tile("Images", formatNumber(total.images), formatBytes(total.bytes), "images"),
    tile("Cost", formatUsd(total.cost_usd), `${formatNumber(Math.round(
      Number(total.cost_credits || 0) * 100) / 100)} credits`, "cost"),
    tile("Range", `${data.start_date} → ${data.end_date}`, "UTC days", "range"));

  const days = [];
  for (let t = Date.parse(`${data.start_date}T00:00:00Z`);
    t <= Date.parse(`${data.end_date}T00:00:00Z`); t += DAY) {
    days.push(utcDay(new Date(t)));
  }
  const modelsSeen = [...new Set((data.models || []).map((m) => m.model))];
  const palette = colours(modelsSeen);
  const seriesOf = (metric) => modelsSeen.map((name) => ({
    name, colour: palette.get(name), values: new Map((data.days || [])
      .filter((d) => d.model === name).map((d) => [d.date, Number(d[metric] || 0)])) }));
  const perModel = (metric) => (data.models || []).map((m) => ({
    name: m.model, value: Number(m[metric] || 0), colour: palette.get(m.model) }));
  const usd = (v) => formatUsd(v);

  if (!modelsSeen.length) {
    replace(charts, h("div.card.empty", {}, h("p", {}, "No requests in this range."),
      h("p.muted", {}, "Generate something in the Playground, then come back.")));
    return;
  }
  replace(charts,
    chartCard("Images per day", stackedBars({ id: "images-per-day",
      label: "Images per UTC day, stacked by model", days, series: seriesOf("images"),
      format: formatNumber, integer: true }), legend(palette), true),
    chartCard("Cost per day", stackedBars({ id: "cost-per-day",
      label: "Cost in US dollars per UTC day, stacked by model", days,
      series: seriesOf("cost_usd"), format: usd }), legend(palette), true),
    chartCard("Images per model", horizontalBars({ id: "images-per-model",
      label: "Images per model over the range", rows: perModel("images"),
      format: formatNumber })),
    chartCard("Cost per model", horizontalBars({ id: "cost-per-model",
      label: "Cost per model over the range", rows: perModel("cost_usd"), format: usd })),
    h("details.card.day-table", {}, h("summary", {}, "The numbers as a table"),
      h("div.table-wrap", {}, h("table.data", { id: "usage-days" },
        h("thead", {}, h("tr", {}, ["Day", "Model", "Requests", "Failed", "Images", "Bytes",
          "Cost (USD)", "Credits"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, (data.days || []).map((d) => h("tr", {},
          h("td", {}, d.date), h("td", {}, d.model), h("td.num", {}, formatNumber(d.requests)),
          h("td.num", {}, formatNumber(d.failed_requests)), h("td.num", {}, formatNumber(d.images)),
          h("td.num", {}, formatBytes(d.bytes)), h("td.num", {}, formatUsd(d.cost_usd)),
          h("td.num", {}, formatNumber(d.cost_credits)))))))));
}

function tile(label, value, detail, id) {
  return h("div.tile-stat", { dataset: { stat: id } },
    h("div.stat-label", {}, label), h("div.stat-value", {}, value),
    h("div.stat-detail", {}, detail));
}

function chartCard(title, chart, after, wide = false) {
  return h(`section.card.chart-card${wide ? ".wide" : ""}`, {}, h("h2", {}, title),
    h("div.chart-scroll", {}, chart), after || null);
}

async function loadRecords(state, el, more) {
  const load = state.loads;
  if (!more) {
    replace(el, h("div.section-head", {}, h("h2", {}, "Recent requests")),
      h("p.muted", {}, spinner(), " Loading requests…"));
  }
  try {
    const { data } = await api("/api/usage/records", { query: {
      key_id: state.key, model: state.model, status: state.status, page_size: 50,
      start_time: `${state.start}T00:00:00Z`,
      end_time: new Date(Date.parse(`${state.end}T00:00:00Z`) + DAY).toISOString(),
      page_token: more ? state.nextToken : "" } });
    if (load !== state.loads) return;
    state.nextToken = data.next_page_token || "";
    drawRecords(state, el, data.records || [], more);
  } catch (error) {
    if (load !== state.loads) return;
    replace(el, h("div.section-head", {}, h("h2", {}, "Recent requests")),
      errorBox(error, "The requests could not be loaded"));
  }
}

function drawRecords(state, el, records, more) {
  let body = el.querySelector("tbody");
  if (!more || !body) {
    body = h("tbody");
    const heads = ["Time", "Key", "Model", "n", "Status", "Images", "Upstream", "Total", "Cost"];
    replace(el, h("div.section-head", {}, h("h2", {}, "Recent requests"),
      h("span.muted", {}, "newest first")),
    h("div.table-wrap", {}, h("table.data", { id: "usage-records" },
      h("caption.visually-hidden", {}, "Recent requests"),
      h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))), body)));
    if (!records.length) {
      body.appendChild(h("tr", {}, h("td.empty-row", { colspan: heads.length },
        "No requests match.")));
    }
  }
  el.querySelector(".more")?.remove();
  for (const record of records) {
    const ok = record.status === "OK";
    const served = record.served_model && record.served_model !== record.model
      ? h("div.muted.small", {}, `→ ${record.served_model}`) : null;
    body.appendChild(h("tr", { dataset: { requestId: record.request_id } },
      h("td", {}, formatTime(record.create_time)),
      h("td", {}, state.keyNames.get(record.key_id) || "", h("div.muted.small", {}, record.key_id)),
      h("td", {}, record.model || "—", served),
      h("td.num", {}, String(record.n)),
      h("td", {}, h(`span.status-pill.${ok ? "ok" : "bad"}`, {}, record.status),
        h("span.muted.small", {}, ` ${record.http_status}`)),
      h("td.num", {}, String(record.images)),
      h("td.num", {}, formatMs(record.upstream_latency_ms)),
      h("td.num", {}, formatMs(record.total_latency_ms)),
      h("td.num", {}, formatUsd(record.cost_usd))));
  }
  if (state.nextToken) {
    const button = h("button.secondary.more", { type: "button" }, "Load more");
    button.addEventListener("click", () => loadRecords(state, el, true));
    el.appendChild(button);
  }
}
