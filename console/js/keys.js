// Keys: list, create (the secret shown once), set limits, revoke — through AdminService's
// REST endpoints under /api/admin/keys. Only admin keys get in; others are told why.

import { ApiError, api, isAdmin, keyPrefix, models } from "./api.js";
import { append, copyText, field, formatNumber, formatTime, h, replace, spinner, toast }
  from "./dom.js";
import { errorBox } from "./errors.js";

export function render(root) {
  const body = h("div.keys-body");
  append(root, h("div.page-head.with-action", {},
    h("div", {}, h("h1", { tabindex: "-1" }, "API keys"),
      h("p.lead", {}, "Hand out keys with limits; revoke them when they leak or leave.")),
    h("div.head-actions", { id: "key-actions" })),
  body);
  replace(body, h("p.muted", {}, spinner(), " Checking your key…"));
  isAdmin().then((admin) => {
    if (!admin) {
      replace(body, notAdmin());
      return;
    }
    const create = h("button.primary", { type: "button", id: "create-key" }, "Create key");
    const page = new KeysPage(body);
    create.addEventListener("click", () => page.openCreate());
    replace(root.querySelector("#key-actions"), create);
    page.load();
  }, (error) => replace(body, errorBox(error, "Your key could not be checked")));
}

export function notAdmin() {
  return h("div.error-box.refused", { role: "alert", id: "admin-refused" },
    h("p.error-title", {}, "This page needs an admin key"),
    h("p.error-message", {}, `The key in use (${keyPrefix()}) is not an admin key, so the `
      + "admin API refuses it (HTTP 403, admin_key_required). Enter an admin key above — "
      + "the first key `make run` creates is one — or ask an operator to make one with "
      + "`python -m service keys create NAME --admin`."));
}

class KeysPage {
  constructor(el) {
    this.el = el;
    this.keys = [];
    this.nextToken = "";
    this.loads = 0;
  }

  // A list asked for after another (a key made, revoked) wins: the older answer is dropped.
  async load(more = false) {
    const load = more ? this.loads : ++this.loads;
    if (!more) replace(this.el, h("p.muted", {}, spinner(), " Loading keys…"));
    try {
      const { data } = await api("/api/admin/keys", {
        query: { page_size: 100, page_token: more ? this.nextToken : "" } });
      if (load !== this.loads) return;
      this.keys = more ? [...this.keys, ...(data.keys || [])] : data.keys || [];
      this.nextToken = data.next_page_token || "";
      this.draw();
    } catch (error) {
      if (load !== this.loads) return;
      replace(this.el, errorBox(error, "The keys could not be listed"));
    }
  }

  draw() {
    const rows = this.keys.map((key) => this.row(key));
    const table = h("div.table-wrap", {}, h("table.data", { id: "keys-table" },
      h("caption.visually-hidden", {}, "API keys"),
      h("thead", {}, h("tr", {}, ["Name", "Key", "Limits", "Today", "This month", "Created",
        "State", h("span.visually-hidden", {}, "Actions")].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
    const more = this.nextToken ? h("button.secondary", { type: "button" }, "Load more") : null;
    more?.addEventListener("click", () => this.load(true));
    replace(this.el, this.keys.length ? table : h("p.empty", {}, "No keys yet."), more);
  }

  row(key) {
    const limits = key.limits || {};
    const state = keyState(key);
    const actions = h("div.row-actions");
    if (state.id !== "revoked") {
      const edit = h("button.small", { type: "button", "aria-label": `Limits of ${key.name}` }, "Limits");
      edit.addEventListener("click", () => this.openLimits(key));
      const revoke = h("button.small.danger", { type: "button", dataset: { revoke: key.id },
        "aria-label": `Revoke ${key.name}` }, "Revoke");
      revoke.addEventListener("click", () => this.openRevoke(key));
      append(actions, edit, revoke);
    }
    return h("tr", { dataset: { keyId: key.id } },
      h("td", {}, h("div.strong", {}, key.name), key.admin ? h("span.chip.accent", {}, "admin") : null,
        h("span.chip", {}, key.source)),
      h("td", {}, h("code", {}, key.prefix), h("div.muted.small", {}, key.id)),
      h("td", {}, limitsSummary(limits)),
      h("td.num", {}, usageCell(key.images_today, limits.daily_image_quota)),
      h("td.num", {}, usageCell(key.images_this_month, limits.monthly_image_quota)),
      h("td", {}, formatTime(key.create_time)),
      h("td", {}, h(`span.state.${state.id}`, {}, state.label)),
      h("td", {}, actions));
  }

  async openCreate() {
    const name = h("input", { id: "new-key-name", required: true, maxlength: 200,
      autocomplete: "off", placeholder: "team blue" });
    const admin = h("input", { id: "new-key-admin", type: "checkbox" });
    const limits = await limitsForm({});
    const error = h("div.form-error");
    const dialog = modal("Create a key", [
      field("Name", name, "Who or what uses it; shown in lists and usage."),
      h("div.check", {}, admin, h("label", { for: admin.id }, "Admin key (may manage keys and read all usage)")),
      limits.el, error,
    ], "Create key", async () => {
      const body = { name: name.value.trim(), admin: admin.checked, limits: limits.value() };
      const { data } = await api("/api/admin/keys", { method: "POST", body });
      showSecret(dialog, data);
      this.load();
      return false; // keep the dialog open: it now shows the secret
    }, error);
    name.focus();
  }

  async openLimits(key) {
    const limits = await limitsForm(key.limits || {});
    const error = h("div.form-error");
    modal(`Limits of “${key.name}”`, [
      h("p.muted", {}, "These replace all of the key's limits; an empty field is no limit. "
        + "They apply from the key's next request."),
      limits.el, error,
    ], "Save limits", async () => {
      await api(`/api/admin/keys/${encodeURIComponent(key.id)}/limits`,
        { method: "PUT", body: limits.value() });
      toast(`Limits of ${key.name} saved.`, "ok");
      this.load();
      return true;
    }, error);
  }

  openRevoke(key) {
    const error = h("div.form-error");
    modal(`Revoke “${key.name}”?`, [
      h("p", {}, "The key ", h("code", {}, key.prefix), " stops working at its next request "
        + "(HTTP 403, key_revoked). This cannot be undone."),
      error,
    ], "Revoke key", async () => {
      await api(`/api/admin/keys/${encodeURIComponent(key.id)}:revoke`, { method: "POST", body: {} });
      toast(`${key.name} revoked.`, "ok");
      this.load();
      return true;
    }, error, "danger");
  }
}

function keyState(key) {
  if (key.revoke_time) return { id: "revoked", label: `revoked ${formatTime(key.revoke_time)}` };
  const expires = key.limits?.expire_time;
  if (expires && new Date(expires) <= new Date()) return { id: "expired", label: "expired" };
  return { id: "active", label: "active" };
}

function limitsSummary(limits) {
  const parts = [];
  if (limits.allowed_models?.length) parts.push(`models: ${limits.allowed_models.join(", ")}`);
  if (limits.daily_image_quota) parts.push(`${formatNumber(limits.daily_image_quota)}/day`);
  if (limits.monthly_image_quota) parts.push(`${formatNumber(limits.monthly_image_quota)}/month`);
  if (limits.requests_per_minute) parts.push(`${limits.requests_per_minute} req/min`);
  if (limits.expire_time) parts.push(`expires ${formatTime(limits.expire_time)}`);
  return parts.length ? h("ul.plain", {}, parts.map((p) => h("li", {}, p)))
    : h("span.muted", {}, "none");
}

function usageCell(used, quota) {
  const count = Number(used || 0);
  if (!quota) return formatNumber(count);
  const share = Math.min(1, count / quota);
  const bar = h("span.meter", { "aria-hidden": "true" }, h("span.meter-fill"));
  bar.firstChild.style.width = `${Math.round(share * 100)}%`;
  if (share >= 1) bar.classList.add("full");
  return h("span.usage-cell", {}, `${formatNumber(count)} / ${formatNumber(quota)}`, bar);
}

/** The limit controls, filled from `limits`; `.value()` is a KeyLimits body. */
async function limitsForm(limits) {
  let list = [];
  try {
    list = await models();
  } catch {
    list = [];
  }
  const allowed = new Set(limits.allowed_models || []);
  const boxes = list.map((model) => {
    const box = h("input", { type: "checkbox", value: model.id, id: `allow-${model.id}`,
      checked: allowed.has(model.id) });
    return h("label.model-check", { for: box.id }, box, model.id);
  });
  const number = (id, value) => h("input", { id, type: "number", min: 0, step: 1,
    inputmode: "numeric", value: value || "", placeholder: "no limit" });
  const daily = number("limit-daily", limits.daily_image_quota);
  const monthly = number("limit-monthly", limits.monthly_image_quota);
  const rpm = number("limit-rpm", limits.requests_per_minute);
  const expires = h("input", { id: "limit-expires", type: "datetime-local",
    value: limits.expire_time ? localInput(limits.expire_time) : "" });
  const el = h("fieldset.limits", {},
    h("legend", {}, "Limits"),
    h("div.option-grid", {},
      field("Images per day", daily), field("Images per month", monthly),
      field("Requests per minute", rpm), field("Expires", expires, "Your local time.")),
    h("div.field", {}, h("p.label", { id: "allowed-label" }, "Allowed models"),
      h("p.hint", {}, "None ticked: every model."),
      h("div.model-checks", { role: "group", "aria-labelledby": "allowed-label" }, boxes)));
  return {
    el,
    value() {
      const body = {};
      const models = boxes.map((b) => b.querySelector("input")).filter((b) => b.checked)
        .map((b) => b.value);
      if (models.length) body.allowed_models = models;
      for (const [name, input] of [["daily_image_quota", daily],
        ["monthly_image_quota", monthly], ["requests_per_minute", rpm]]) {
        if (input.value !== "" && Number(input.value) > 0) body[name] = Number(input.value);
      }
      if (expires.value) body.expire_time = new Date(expires.value).toISOString();
      return body;
    },
  };
}

function localInput(iso) {
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T`
    + `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/**
 * A modal dialog with a form: `onSubmit` may throw (its error is shown in `errorEl`);
 * it answers true to close the dialog.
 */
function modal(title, content, submitLabel, onSubmit, errorEl, kind = "primary") {
  const submit = h(`button.${kind}`, { type: "submit" }, submitLabel);
  const close = h("button.secondary", { type: "button" }, "Cancel");
  const form = h("form.dialog-form", { method: "dialog", novalidate: true },
    h("h2", {}, title), h("div.dialog-body", {}, content),
    h("div.actions", {}, submit, close));
  const dialog = h("dialog.modal", { "aria-label": title }, form);
  document.body.appendChild(dialog);
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(errorEl);
    try {
      if (await onSubmit()) dialog.close();
    } catch (error) {
      replace(errorEl, errorBox(error, error instanceof ApiError ? "Refused" : "Failed"));
    } finally {
      submit.disabled = false;
    }
  });
  dialog.showModal();
  return dialog;
}

function showSecret(dialog, data) {
  const secret = h("input.secret", { id: "new-key-secret", readonly: true, value: data.secret,
    "aria-label": "The new key's secret" });
  const copy = h("button.primary", { type: "button", id: "copy-secret" }, "Copy");
  copy.addEventListener("click", () => copyText(data.secret, copy));
  const done = h("button.secondary", { type: "button" }, "Done");
  done.addEventListener("click", () => dialog.close());
  replace(dialog.querySelector("form"),
    h("h2", {}, `Key “${data.key.name}” created`),
    h("p.notice.warn", {}, "Copy the secret now: it is shown only this once and the hub keeps "
      + "only a digest of it."),
    h("div.secret-row", {}, secret, copy),
    h("p.muted", {}, "Use it as ", h("code", {}, "Authorization: Bearer <secret>"), ". Id: ",
      h("code", {}, data.key.id)),
    h("div.actions", {}, done));
  secret.select();
  copy.focus();
}
