// The results grid: a tile per image, shown at once and filled as the image's bytes arrive,
// with its real size, download, copy-URL and open. A stream's partial images show in the
// tile of the image they preview until that image is done.

import { copyText, formatBytes, h, replace, spinner, toast } from "./dom.js";

export function promptLine(prompt) {
  // The prompt as the person wrote it: a text node, never markup.
  return h("p.prompt-echo", {}, h("span.muted", {}, "Prompt: "), h("q", { id: "prompt-echo" }, prompt));
}

export function placeholder(size, index) {
  const tile = h("figure.tile.loading", { "aria-busy": "true" },
    h("div.frame", {}, spinner(`Image ${index + 1} loading`)),
    h("figcaption", {}, h("span.muted", {}, `Image ${index + 1}`)));
  const [w, hgt] = String(size).split("x").map(Number);
  if (w > 0 && hgt > 0) tile.querySelector(".frame").style.aspectRatio = `${w} / ${hgt}`;
  return tile;
}

/** A partial image (`*.partial_image` event) in the tile of the image it previews. */
export function showPreview(state, tile, event, index) {
  const src = URL.createObjectURL(base64Blob(event.b64_json,
    `image/${event.output_format || "png"}`));
  state.objectUrls.push(src);
  const preview = Number(event.partial_image_index) + 1;
  const img = h("img.preview", { alt: `Preview ${preview} of image ${index + 1}`,
    dataset: { partialImageIndex: String(event.partial_image_index) } });
  tile.classList.remove("loading");
  tile.classList.add("previewing");
  tile.querySelector(".frame").replaceChildren(img);
  img.src = src;
  replace(tile.querySelector("figcaption"), h("div.caption-row", {},
    h("span.muted", {}, `#${index + 1}`), spinner(`Image ${index + 1} in the making`),
    h("span.preview-note", {}, `Preview ${preview}`)));
}

export function fillTile(state, tile, image, index, body, format) {
  tile.classList.remove("previewing");
  const frame = tile.querySelector(".frame");
  const caption = tile.querySelector("figcaption");
  let src = image.url;
  let blob = null;
  if (!src && image.b64_json) {
    blob = base64Blob(image.b64_json, `image/${format}`);
    src = URL.createObjectURL(blob);
    state.objectUrls.push(src);
  }
  const img = h("img", { alt: `Image ${index + 1} for the prompt “${body.prompt.slice(0, 200)}”`,
    decoding: "async" });
  img.addEventListener("load", () => {
    tile.classList.remove("loading");
    tile.removeAttribute("aria-busy");
    frame.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
    replace(size, `${img.naturalWidth} × ${img.naturalHeight}`);
  });
  img.addEventListener("error", () => {
    tile.classList.remove("loading");
    replace(frame, h("p.notice.error", {}, "This image could not be loaded."));
  });
  const size = h("span.size", {}, "…");
  const download = h("button.small", { type: "button" }, "Download");
  download.addEventListener("click", () => downloadImage(src, blob, body, index, format));
  const copy = image.url ? h("button.small", { type: "button" }, "Copy URL") : null;
  copy?.addEventListener("click", () => copyText(image.url, copy));
  const open = h("a.small.button-link", { href: src, target: "_blank", rel: "noopener" }, "Open");
  replace(caption,
    h("div.caption-row", {}, h("span.muted", {}, `#${index + 1}`), size,
      h("span.muted", {}, format), blob ? h("span.muted", {}, formatBytes(blob.size)) : null),
    image.revised_prompt ? h("p.revised", {}, "Revised prompt: ", h("q", {}, image.revised_prompt))
      : null,
    h("div.tile-actions", {}, download, copy, open));
  frame.replaceChildren(img);
  img.src = src;
}

function base64Blob(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

async function downloadImage(src, blob, body, index, format) {
  let url = src;
  let made = false;
  try {
    if (!blob) {
      const answer = await fetch(src, { credentials: "omit" });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      blob = await answer.blob();
    }
    url = URL.createObjectURL(blob);
    made = true;
  } catch (error) {
    toast(`Could not fetch the image (${error.message}); opening it instead.`, "warn");
    window.open(src, "_blank", "noopener");
    return;
  }
  const name = `${body.model}-${index + 1}.${format === "jpeg" ? "jpg" : format}`;
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(link);
  link.click();
  link.remove();
  if (made) setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
