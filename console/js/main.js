// The console's shell: the API key bar, the section links, and a hash router (#/playground,
// #/keys, #/usage, #/reference), so every section is one page the hub serves as it is.

import { apiKey, isAdmin, keyPrefix, setApiKey } from "./api.js";
import { h, replace } from "./dom.js";
import * as keys from "./keys.js";
import * as playground from "./playground.js";
import * as reference from "./reference.js";
import * as usage from "./usage.js";

const ROUTES = {
  playground: { page: playground, title: "Playground", needsKey: true },
  keys: { page: keys, title: "Keys", needsKey: true },
  usage: { page: usage, title: "Usage", needsKey: true },
  reference: { page: reference, title: "API reference", needsKey: false },
};
const DEFAULT_ROUTE = "playground";

let cleanup = null;

function currentRoute() {
  const name = window.location.hash.replace(/^#\/?/, "").split(/[/?]/)[0];
  return ROUTES[name] ? name : DEFAULT_ROUTE;
}

function show() {
  const name = currentRoute();
  const route = ROUTES[name];
  const main = document.getElementById("main");
  if (typeof cleanup === "function") cleanup();
  cleanup = null;
  document.title = `${route.title} · AIGNE Hub console`;
  for (const link of document.querySelectorAll("[data-route]")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const section = h("section.page", { dataset: { page: name } });
  replace(main, section);
  if (route.needsKey && !apiKey()) {
    replace(section, keyNeeded(route.title));
  } else {
    cleanup = route.page.render(section);
  }
  if (show.navigated) section.querySelector("h1")?.focus({ preventScroll: true });
  show.navigated = true;
}

function keyNeeded(title) {
  return h("div.welcome", {},
    h("h1", { tabindex: "-1" }, title),
    h("div.card.welcome-card", {},
      h("h2", {}, "Enter an API key to start"),
      h("p", {}, "Paste a key in the box at the top. It stays in this browser tab only "
        + "(session storage) and is sent as the Authorization header; it never goes into a URL."),
      h("p.muted", {}, "On a fresh machine, `make run` creates an admin key on its first start, "
        + "prints it and keeps it in var/dev-api-key.")));
}

function drawKeyBar() {
  const bar = document.getElementById("keybar");
  if (!apiKey()) {
    const input = h("input", { id: "api-key", type: "password", autocomplete: "off",
      spellcheck: "false", placeholder: "ahk-…", "aria-label": "API key" });
    const form = h("form.keyform", { "aria-label": "API key", novalidate: true },
      h("label.visually-hidden", { for: "api-key" }, "API key"), input,
      h("button.primary.small", { type: "submit", id: "use-key" }, "Use key"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) setApiKey(key);
    });
    replace(bar, form);
    return;
  }
  const role = h("span.chip", { id: "key-role" }, "…");
  const forget = h("button.small.secondary", { type: "button", id: "forget-key" }, "Forget key");
  forget.addEventListener("click", () => setApiKey(""));
  replace(bar, h("div.keyinfo", {}, h("span.muted", {}, "Key "), h("code", {}, keyPrefix()),
    role, forget));
  isAdmin().then((admin) => {
    role.textContent = admin ? "admin" : "standard";
    role.classList.add(admin ? "accent" : "plain");
  }, (error) => {
    role.textContent = error.status === 401 ? "not accepted" : "unchecked";
    role.classList.add("warn");
  });
}

// The skip link moves focus to the content without touching the route in the hash.
document.querySelector(".skip-link")?.addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", show);
window.addEventListener("hub:key-changed", () => {
  drawKeyBar();
  show();
});
drawKeyBar();
show();
