// "This request as code": tabs for curl, Python (openai) and grpcurl, with a copy button.

import { copyText, h, replace } from "./dom.js";
import { LANGUAGES } from "./snippets.js";

export function updateCode(el, body) {
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
