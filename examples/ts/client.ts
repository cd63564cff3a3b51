// Calls ImageService.Generate over gRPC with the generated stubs (@aigne-hub/proto, i.e.
// gen/ts) and Connect's gRPC transport over HTTP/2: two images as URLs, two as bytes, then a
// bad request (n=11) whose google.rpc.Status details it prints.
//
//   node dist/client.js [HOST:PORT] [API_KEY]
//
// The target defaults to $AIGNE_HUB_TARGET or 127.0.0.1:8080 (Envoy; the server's own port,
// 50051 by default, works too), the key to $AIGNE_HUB_API_KEY.
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ImageService } from "@aigne-hub/proto/aigne/hub/v1/image_service_pb";
import { BadRequestSchema, ErrorInfoSchema } from "@aigne-hub/proto/google/rpc/error_details_pb";

const prompt = "a lighthouse at dawn";
const target = process.argv[2] ?? process.env.AIGNE_HUB_TARGET ?? "127.0.0.1:8080";
const apiKey = process.argv[3] ?? process.env.AIGNE_HUB_API_KEY ?? "";
const headers = { authorization: `Bearer ${apiKey}` };

type ImageClient = Client<typeof ImageService>;

/** Asks for two 256x256 images in one response format and reads each of them. */
async function generate(client: ImageClient, format: "url" | "b64_json"): Promise<void> {
  let model = "";
  const reply = await client.generate(
    { prompt, n: 2, size: "256x256", responseFormat: format },
    { headers, timeoutMs: 120_000, onHeader: (h) => (model = h.get("x-model-served") ?? "") },
  );
  console.log(`generate format=${format} images=${reply.data.length} model=${model}`);
  for (const [index, image] of reply.data.entries()) {
    const content = image.content;
    const bytes =
      content.case === "url" ? await fetchImage(content.value)
      : content.case === "b64Json" ? content.value
      : new Uint8Array();
    const { width, height } = pngSize(bytes);
    console.log(`image format=${format} index=${index} type=png width=${width} height=${height} bytes=${bytes.length}`);
  }
}

/** Sends n=11 and prints what the error's google.rpc.Status details say. */
async function badRequest(client: ImageClient): Promise<void> {
  try {
    await client.generate({ prompt, n: 11 }, { headers, timeoutMs: 60_000 });
  } catch (thrown) {
    const error = ConnectError.from(thrown);
    console.log(`error code=${codeName(error.code)} message=${JSON.stringify(error.rawMessage)}`);
    for (const info of error.findDetails(ErrorInfoSchema)) {
      console.log(`error_info reason=${info.reason} domain=${info.domain}`);
    }
    for (const badRequest of error.findDetails(BadRequestSchema)) {
      for (const violation of badRequest.fieldViolations) {
        console.log(`field_violation field=${violation.field} description=${JSON.stringify(violation.description)}`);
      }
    }
    return;
  }
  throw new Error("n=11 was accepted");
}

/** The signed URL needs no API key. */
async function fetchImage(url: string): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Checks the PNG signature and reads the size from the IHDR chunk. */
function pngSize(bytes: Uint8Array): { width: number; height: number } {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ihdr = new TextDecoder().decode(bytes.subarray(12, 16));
  if (bytes.length < 24 || signature.some((b, i) => bytes[i] !== b) || ihdr !== "IHDR") {
    throw new Error("not a PNG");
  }
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/** Connect's Code.InvalidArgument → the canonical gRPC name INVALID_ARGUMENT. */
function codeName(code: Code): string {
  return Code[code].replace(/(?<!^)([A-Z])/g, "_$1").toUpperCase();
}

async function main(): Promise<void> {
  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const client = createClient(ImageService, transport);
  console.log(`target ${target}`);
  for (const format of ["url", "b64_json"] as const) {
    await generate(client, format);
  }
  await badRequest(client);
}

main().catch((error: unknown) => {
  console.error("ts-client:", error);
  process.exit(1);
});
