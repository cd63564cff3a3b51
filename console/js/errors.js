// An error as the console shows it: the error body's message, code and the field at fault
// (`param`), all as text.

import { ApiError } from "./api.js";
import { h } from "./dom.js";

export function errorBox(error, title) {
  const isApi = error instanceof ApiError;
  const status = isApi ? ` (HTTP ${error.status}${error.code ? ` · ${error.code}` : ""})` : "";
  return h("div.error-box", { role: "alert" },
    h("p.error-title", {}, title, status),
    h("p.error-message", {},
      isApi ? error.message : `The hub could not be reached: ${error.message}`),
    isApi && error.param ? h("p.error-param", {}, "Field: ", h("code", {}, error.param)) : null,
    isApi && error.retryAfter ? h("p.hint", {}, `Try again in ${error.retryAfter} s.`) : null);
}
