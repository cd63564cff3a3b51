// The same request as the playground sends, written for curl, the Python `openai` SDK and
// grpcurl. The key is never written into a snippet: they read $AIGNE_HUB_API_KEY.

const ELIDED = "…";

/** `body` with source images shortened: a snippet shows their shape, not megabytes. */
function printable(body) {
  if (!body.image || !body.image.length) return body;
  return { ...body, image: body.image.map((data) => `${data.slice(0, 40)}${ELIDED}`) };
}

const shellQuote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;

// JSON string literals are valid Python string literals (same escapes).
const pyLiteral = (value) => {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "boolean") return value ? "True" : "False";
  if (Array.isArray(value)) return `[${value.map(pyLiteral).join(", ")}]`;
  return JSON.stringify(value);
};

// Arguments the SDK's images.generate() names; the others go through extra_body.
const SDK_ARGUMENTS = new Set(["prompt", "model", "n", "size", "response_format", "quality",
  "style", "output_format", "output_compression", "background", "moderation", "user"]);

export function curl(origin, body) {
  const json = JSON.stringify(printable(body), null, 2);
  return [
    `curl ${origin}/api/images/generations \\`,
    `  -H "Authorization: Bearer $AIGNE_HUB_API_KEY" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(json)}`,
  ].join("\n");
}

export function python(origin, body) {
  const shown = printable(body);
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries(shown)) {
    if (SDK_ARGUMENTS.has(name)) args.push(`    ${name}=${pyLiteral(value)},`);
    else extra[name] = value;
  }
  if (Object.keys(extra).length) {
    const items = Object.entries(extra).map(([k, v]) => `${JSON.stringify(k)}: ${pyLiteral(v)}`);
    args.push(`    extra_body={${items.join(", ")}},`);
  }
  const url = body.response_format === "b64_json"
    ? [
      "for i, image in enumerate(result.data):",
      "    open(f\"image-{i}.png\", \"wb\").write(base64.b64decode(image.b64_json))",
    ]
    : ["for image in result.data:", "    print(image.url)"];
  return [
    ...(body.response_format === "b64_json" ? ["import base64", "import os"] : ["import os"]),
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(`${origin}/api`)},`,
    "                api_key=os.environ[\"AIGNE_HUB_API_KEY\"])",
    "result = client.images.generate(",
    ...args,
    ")",
    ...url,
  ].join("\n");
}

export function grpcurl(origin, body) {
  const host = new URL(origin).host;
  const json = JSON.stringify(printable(body), null, 2);
  return [
    "grpcurl -plaintext \\",
    "  -H \"authorization: Bearer $AIGNE_HUB_API_KEY\" \\",
    `  -d ${shellQuote(json)} \\`,
    `  ${host} aigne.hub.v1.ImageService/Generate`,
  ].join("\n");
}

export const LANGUAGES = [
  ["curl", "curl", curl],
  ["python", "Python (openai)", python],
  ["grpcurl", "grpcurl", grpcurl],
];
