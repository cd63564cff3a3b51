// The same request as the playground sends, written for curl, the Python `openai` SDK and
// grpcurl. The key is never written into a snippet: they read $AIGNE_HUB_API_KEY.

const ELIDED = "…";

/** `body` with source images and mask shortened: a snippet shows their shape, not megabytes. */
function printable(body) {
  if (!body.image || !body.image.length) return body;
  const short = (data) => `${data.slice(0, 40)}${ELIDED}`;
  return { ...body, image: body.image.map(short), ...(body.mask ? { mask: short(body.mask) } : {}) };
}

/** The files an edit's snippets upload, by the names they are given there. */
function fileNames(body) {
  return {
    images: (body.image || []).map((_, i) => `image-${i + 1}.png`),
    mask: body.mask ? "mask.png" : null,
  };
}

const shellQuote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;

// JSON string literals are valid Python string literals (same escapes).
const pyLiteral = (value) => {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "boolean") return value ? "True" : "False";
  if (Array.isArray(value)) return `[${value.map(pyLiteral).join(", ")}]`;
  return JSON.stringify(value);
};

// Arguments the SDK's images.generate() and images.edit() name; the others go through
// extra_body.
const SDK_ARGUMENTS = new Set(["prompt", "model", "n", "size", "response_format", "quality",
  "style", "output_format", "output_compression", "background", "moderation", "user", "stream",
  "partial_images"]);
const EDIT_ARGUMENTS = new Set(["prompt", "model", "n", "size", "response_format", "quality",
  "output_format", "output_compression", "background", "input_fidelity", "user", "stream",
  "partial_images"]);

export function curl(origin, body) {
  const auth = `  -H "Authorization: Bearer $AIGNE_HUB_API_KEY" \\`;
  if (body.image) {
    const { images, mask } = fileNames(body);
    const name = images.length > 1 ? "image[]" : "image";
    const parts = [
      ...images.map((file) => `-F ${shellQuote(`${name}=@${file}`)}`),
      ...(mask ? [`-F ${shellQuote(`mask=@${mask}`)}`] : []),
      ...Object.entries(body).filter(([k]) => k !== "image" && k !== "mask")
        .map(([k, v]) => `--form-string ${shellQuote(`${k}=${v}`)}`),
    ];
    return [`curl ${body.stream ? "-N " : ""}${origin}/api/images/edits \\`, auth,
      ...parts.map((part, i) => `  ${part}${i < parts.length - 1 ? " \\" : ""}`)].join("\n");
  }
  const json = JSON.stringify(printable(body), null, 2);
  return [
    `curl ${body.stream ? "-N " : ""}${origin}/api/images/generations \\`,
    auth,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(json)}`,
  ].join("\n");
}

export function python(origin, body) {
  const edit = Boolean(body.image);
  const named = edit ? EDIT_ARGUMENTS : SDK_ARGUMENTS;
  const args = [];
  const extra = {};
  if (edit) {
    const { images, mask } = fileNames(body);
    const files = images.map((file) => `open(${JSON.stringify(file)}, "rb")`);
    args.push(`    image=${files.length > 1 ? `[${files.join(", ")}]` : files[0]},`);
    if (mask) args.push(`    mask=open(${JSON.stringify(mask)}, "rb"),`);
  }
  for (const [name, value] of Object.entries(printable(body))) {
    if (edit && (name === "image" || name === "mask")) continue;
    if (named.has(name)) args.push(`    ${name}=${pyLiteral(value)},`);
    else extra[name] = value;
  }
  if (Object.keys(extra).length) {
    const items = Object.entries(extra).map(([k, v]) => `${JSON.stringify(k)}: ${pyLiteral(v)}`);
    args.push(`    extra_body={${items.join(", ")}},`);
  }
  const bytes = body.stream || body.response_format === "b64_json";
  return [
    ...(bytes ? ["import base64", "import os"] : ["import os"]),
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(`${origin}/api`)},`,
    "                api_key=os.environ[\"AIGNE_HUB_API_KEY\"])",
    `${body.stream ? "stream" : "result"} = client.images.${edit ? "edit" : "generate"}(`,
    ...args,
    ")",
    ...pythonAnswer(body),
  ].join("\n");
}

function pythonAnswer(body) {
  if (body.stream) {
    return [
      "for i, event in enumerate(stream):  # partial images as they come, then each image",
      "    kind = event.type.rsplit(\".\", 1)[1]  # partial_image or completed",
      "    open(f\"{kind}-{i}.png\", \"wb\").write(base64.b64decode(event.b64_json))",
    ];
  }
  if (body.response_format === "b64_json") {
    return [
      "for i, image in enumerate(result.data):",
      "    open(f\"image-{i}.png\", \"wb\").write(base64.b64decode(image.b64_json))",
    ];
  }
  return ["for image in result.data:", "    print(image.url)"];
}

// gRPC: Generate answers at once; StreamGenerate streams (its own richer events).
export function grpcurl(origin, body) {
  const host = new URL(origin).host;
  const request = printable(body);
  const json = JSON.stringify(body.stream ? { request } : request, null, 2);
  return [
    "grpcurl -plaintext \\",
    "  -H \"authorization: Bearer $AIGNE_HUB_API_KEY\" \\",
    `  -d ${shellQuote(json)} \\`,
    `  ${host} aigne.hub.v1.ImageService/${body.stream ? "StreamGenerate" : "Generate"}`,
  ].join("\n");
}

export const LANGUAGES = [
  ["curl", "curl", curl],
  ["python", "Python (openai)", python],
  ["grpcurl", "grpcurl", grpcurl],
];
