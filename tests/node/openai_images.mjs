// Every images.* method of the official Node SDK (npm `openai`), and models.list/retrieve,
// against the base URL given, streaming and not; prints what came back as one JSON object
// (method -> parsed answer, or list of stream events) for tests/test_node_sdk.py to check.
//
//   node tests/node/openai_images.mjs BASE_URL API_KEY IMAGE.png MASK.png OTHER.png
import { readFile } from "node:fs/promises";
import OpenAI, { toFile } from "openai";

const [baseURL, apiKey, imagePath, maskPath, otherPath] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
const file = async (path, name) => toFile(await readFile(path), name, { type: "image/png" });
const events = async (stream) => {
  const out = [];
  for await (const event of stream) out.push(event);
  return out;
};

const results = {};
results.generate = await client.images.generate({ model: "gpt-image-2", prompt: "a fox", n: 2 });
results.generate_url = await client.images.generate({
  model: "gpt-image-2", prompt: "a fox", response_format: "url",
});
results.generate_stream = await events(await client.images.generate({
  model: "gpt-image-2", prompt: "a fox", stream: true, partial_images: 2,
}));
results.edit = await client.images.edit({
  model: "gpt-image-2", prompt: "add a hat", input_fidelity: "high",
  image: [await file(imagePath, "a.png"), await file(otherPath, "b.png")],
  mask: await file(maskPath, "mask.png"),
});
results.edit_stream = await events(await client.images.edit({
  model: "gpt-image-2", prompt: "add a hat", image: await file(imagePath, "a.png"),
  stream: true, partial_images: 1,
}));
results.create_variation = await client.images.createVariation({
  model: "dall-e-2", image: await file(imagePath, "a.png"), size: "256x256",
  response_format: "b64_json",
});
results.models_list = [];
for await (const model of client.models.list()) results.models_list.push(model.id);
results.models_retrieve = await client.models.retrieve("gpt-image-2");
try {
  await client.images.edit({ model: "gemini-3.1-flash-image", prompt: "x",
                             image: await file(imagePath, "a.png"),
                             mask: await file(maskPath, "mask.png") });
  results.edit_refused = null;
} catch (error) {
  results.edit_refused = { status: error.status, param: error.param, code: error.code };
}
process.stdout.write(JSON.stringify(results));
