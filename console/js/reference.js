// API reference: the OpenAPI document the hub serves at /api/openapi.json (made from the proto
// by `make gen`), rendered here: operations by service, their parameters, bodies and answers,
// and every schema. Descriptions are text; `code` spans are the only formatting.

import { api } from "./api.js";
import { append, h, replace, spinner } from "./dom.js";
import { errorBox } from "./errors.js";

export const OPENAPI_PATH = "/api/openapi.json";

export function render(root) {
  const body = h("div.reference");
  append(root, h("div.page-head.with-action", {},
    h("div", {}, h("h1", { tabindex: "-1" }, "API reference"),
      h("p.lead", {}, "The REST door, generated from the proto. Every operation is also a "
        + "gRPC method at the same address.")),
    h("div.head-actions", {}, h("a.button-link.secondary", { href: OPENAPI_PATH,
      download: "aigne_hub.openapi.json" }, "Download OpenAPI JSON"))),
  body);
  replace(body, h("p.muted", {}, spinner(), " Loading the OpenAPI document…"));
  api(OPENAPI_PATH, { auth: false }).then(({ data }) => draw(body, data),
    (error) => replace(body, errorBox(error, "The OpenAPI document could not be loaded")));
}

function draw(el, doc) {
  const nav = h("nav.ref-nav", { "aria-label": "Operations" });
  const main = h("div.ref-main");
  const operations = [];
  for (const [path, methods] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(methods)) operations.push({ path, method, op });
  }
  append(main, h("section.card.ref-intro", {},
    h("h2", {}, doc.info?.title || "API"), prose(doc.info?.description || ""),
    h("p.muted", {}, `OpenAPI ${doc.openapi} · version ${doc.info?.version || ""} · `
      + "authentication: ", h("code", {}, "Authorization: Bearer <API key>"))));
  // The image API first: it is what most readers came for.
  const tags = [...(doc.tags || [])].sort((a, b) =>
    (b.name === "ImageService") - (a.name === "ImageService"));
  for (const tag of tags) {
    const ops = operations.filter(({ op }) => (op.tags || []).includes(tag.name));
    if (!ops.length) continue;
    const group = h("ul");
    append(nav, h("p.nav-group", {}, tag.name), group);
    const section = h("section.ref-tag", { id: `tag-${tag.name}` },
      h("h2", {}, tag.name), h("div.tag-desc", {}, prose(tag.description || "")));
    for (const entry of ops) {
      const id = `op-${entry.op.operationId}-${entry.method}`;
      group.appendChild(h("li", {}, jump(id, [methodBadge(entry.method), " ",
        h("span.nav-path", {}, entry.path.replace(/^\/api/, ""))])));
      section.appendChild(operation(doc, entry, id));
    }
    main.appendChild(section);
  }
  const schemaGroup = h("ul");
  append(nav, h("p.nav-group", {}, "Schemas"), schemaGroup);
  const schemas = h("section.ref-tag", { id: "schemas" }, h("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components?.schemas || {})) {
    schemaGroup.appendChild(h("li", {}, jump(`schema-${name}`, name)));
    schemas.appendChild(h("article.card.schema", { id: `schema-${name}` },
      h("h3", {}, name), prose(schema.description || ""), schemaTable(doc, schema)));
  }
  main.appendChild(schemas);
  replace(el, nav, main);
}

function jump(id, content) {
  const button = h("button.link", { type: "button" }, content);
  button.addEventListener("click", () => {
    const target = document.getElementById(id);
    target?.scrollIntoView({ behavior: "smooth", block: "start" });
    target?.focus({ preventScroll: true });
  });
  return button;
}

function methodBadge(method) {
  return h(`span.method.m-${method}`, {}, method.toUpperCase());
}

function operation(doc, { path, method, op }, id) {
  const auth = op.security && op.security.length === 0 ? "public: no key"
    : op.tags?.includes("AdminService") ? "admin key" : "API key";
  const parts = [
    h("header.op-head", {}, methodBadge(method), h("code.op-path", {}, path),
      h("span.chip", {}, auth)),
    h("p.op-summary", {}, op.operationId),
    prose(op.description || op.summary || ""),
    op["x-grpc-method"] ? h("p.muted.small", {}, "gRPC: ", h("code", {}, op["x-grpc-method"]))
      : null,
  ];
  if (op.parameters?.length) {
    parts.push(h("h4", {}, "Parameters"), h("div.table-wrap", {}, h("table.data.props", {},
      h("thead", {}, h("tr", {}, ["Name", "In", "Type", "Description"].map((t) =>
        h("th", { scope: "col" }, t)))),
      h("tbody", {}, op.parameters.map((p) => h("tr", {},
        h("td", {}, h("code", {}, p.name), p.required ? h("span.req", {}, " required") : null),
        h("td", {}, p.in), h("td", {}, typeOf(doc, p.schema)),
        h("td", {}, prose(p.description || ""))))))));
  }
  const request = op.requestBody?.content?.["application/json"]?.schema;
  if (request) {
    parts.push(h("h4", {}, "Request body ", h("span.muted", {}, "application/json")),
      schemaBlock(doc, request));
  }
  for (const [status, response] of Object.entries(op.responses || {})) {
    const resolved = response.$ref ? doc.components.responses[response.$ref.split("/").pop()]
      : response;
    const [media, content] = Object.entries(resolved.content || {})[0] || [];
    parts.push(h("h4", {}, `Answer ${status} `, media ? h("span.muted", {}, media) : null),
      h("p.small", {}, resolved.description || ""),
      status === "200" && content?.schema ? schemaBlock(doc, content.schema) : null);
  }
  return h("article.card.op", { id, tabindex: "-1" }, parts);
}

function schemaBlock(doc, schema) {
  if (schema?.allOf?.length > 1) {  // a flat body: a message, and fields beside it
    return h("div", {}, schema.allOf.map((part) => schemaBlock(doc, part)));
  }
  const ref = refName(schema);
  if (ref) {
    return h("div.schema-ref", {}, "Schema ", jump(`schema-${ref}`, h("code", {}, ref)),
      schemaTable(doc, doc.components.schemas[ref]));
  }
  return schemaTable(doc, schema);
}

function schemaTable(doc, schema) {
  const props = Object.entries(schema?.properties || {});
  if (!props.length) return h("p.muted.small", {}, typeOf(doc, schema));
  const required = new Set(schema.required || []);
  return h("div.table-wrap", {}, h("table.data.props", {},
    h("thead", {}, h("tr", {}, ["Field", "Type", "Description"].map((t) =>
      h("th", { scope: "col" }, t)))),
    h("tbody", {}, props.map(([name, prop]) => h("tr", {},
      h("td", {}, h("code", {}, name), required.has(name) ? h("span.req", {}, " required") : null),
      h("td", {}, typeOf(doc, prop)),
      h("td", {}, prose(prop.description || "")))))));
}

function refName(schema) {
  const ref = schema?.$ref || schema?.allOf?.[0]?.$ref;
  return ref ? ref.split("/").pop() : null;
}

function typeOf(doc, schema) {
  if (!schema) return "";
  const ref = refName(schema);
  if (ref) return jump(`schema-${ref}`, h("code", {}, ref));
  if (schema.type === "array") return h("span", {}, "array of ", typeOf(doc, schema.items));
  if (schema.enum) return h("span", {}, `enum: ${schema.enum.join(", ")}`);
  if (schema.type === "object" && schema.additionalProperties) {
    return h("span", {}, "map of ", typeOf(doc, schema.additionalProperties));
  }
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  return h("span.type", {}, schema.format ? `${type} (${schema.format})` : type);
}

/** Text with `code` spans and paragraphs; never markup. */
function prose(text) {
  if (!text) return null;
  return h("div.prose", {}, text.split(/\n\s*\n/).map((para) => h("p", {},
    para.replace(/\s*\n\s*/g, " ").split(/(`[^`]+`)/).map((part) =>
      part.startsWith("`") && part.endsWith("`") && part.length > 1
        ? h("code", {}, part.slice(1, -1)) : part))));
}
