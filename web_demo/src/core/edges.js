// Edge proxies and region selection at the end of RALU stage 1 (spec/RALU.md §4, §9.4; port of
// ralu_edge/edges.py): one score per low-res token from the clean estimate x̂₀, then the top k after a seeded
// N(0, 1e-6²) tie-break jitter. Two proxies: `latent_grad` (Sobel in latent space, no decode) and `canny`
// (half-res decode, grey, OpenCV-style Canny 100/200, block sums).

import { unpackLatents } from './tokens.js';

export const TIE_BREAK_STD = 1e-6; // spec/RALU.md §4 Algorithm R2 line 3
const TAN_22_5_Q15 = 13573; // OpenCV canny.cpp: tan(22.5°)·2^15, direction test in fixed point

/**
 * 3×3 Sobel with replicate padding of `count` images [H, W] stored back to back in `images` (any typed array):
 * {gx, gy} of the same type (OpenCV Sobel(…,1,0,3) and Sobel(…,0,1,3)).
 */
export function sobelGradients(images, height, width, ArrayType = Float64Array) {
  const count = images.length / (height * width);
  const gx = new ArrayType(images.length);
  const gy = new ArrayType(images.length);
  const clampY = (y) => Math.min(Math.max(y, 0), height - 1);
  const clampX = (x) => Math.min(Math.max(x, 0), width - 1);
  for (let n = 0; n < count; n++) {
    const base = n * height * width;
    const at = (y, x) => images[base + clampY(y) * width + clampX(x)];
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const right = at(y - 1, x + 1) + 2 * at(y, x + 1) + at(y + 1, x + 1);
        const left = at(y - 1, x - 1) + 2 * at(y, x - 1) + at(y + 1, x - 1);
        const below = at(y + 1, x - 1) + 2 * at(y + 1, x) + at(y + 1, x + 1);
        const above = at(y - 1, x - 1) + 2 * at(y - 1, x) + at(y - 1, x + 1);
        gx[base + y * width + x] = right - left;
        gy[base + y * width + x] = below - above;
      }
    }
  }
  return { gx, gy };
}

/** Sums over non-overlapping blockH × blockW blocks of one map [H, W], row-major: Float64Array[(H/bh)(W/bw)]. */
export function blockSums(map, height, width, blockH, blockW) {
  const bw = width / blockW;
  const out = new Float64Array((height / blockH) * bw);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) out[Math.floor(y / blockH) * bw + Math.floor(x / blockW)] += map[y * width + x];
  }
  return out;
}

/**
 * Edge score per low-res token (spec §9.4 item 2): Float64Array[lowH·lowW], raster order. Unpacks x̂₀ to
 * [C, 2·lowH, 2·lowW], Σ_c (|S_x∗x| + |S_y∗x|) per pixel, summed over each token's 2×2 patch.
 */
export function latentGradScores(x0, lowH, lowW) {
  const height = 2 * lowH;
  const width = 2 * lowW;
  const latents = Float64Array.from(unpackLatents(x0, lowH, lowW));
  const { gx, gy } = sobelGradients(latents, height, width);
  const magnitude = new Float64Array(height * width);
  const channels = latents.length / (height * width);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < height * width; p++) magnitude[p] += Math.abs(gx[c * height * width + p]) + Math.abs(gy[c * height * width + p]);
  }
  return blockSums(magnitude, height, width, 2, 2);
}

/**
 * 8-bit grey of one RGB image [3, H, W] in [−1, 1] (Float32Array): Uint8Array[H·W]. grey = 0.299R + 0.587G +
 * 0.114B in float32; 'affine' maps (grey+1)/2, 'reference_clip' the reference's quirk (§4); both truncate.
 */
export function grayUint8(image, height, width, mapping = 'affine') {
  if (mapping !== 'affine' && mapping !== 'reference_clip') {
    throw new RangeError(`edge gray mapping must be 'affine' or 'reference_clip', got '${mapping}'`);
  }
  const f32 = Math.fround;
  const n = height * width;
  const out = new Uint8Array(n);
  for (let p = 0; p < n; p++) {
    let g = f32(f32(f32(f32(0.299) * image[p]) + f32(f32(0.587) * image[n + p])) + f32(f32(0.114) * image[2 * n + p]));
    if (mapping === 'affine') g = f32(f32(g + 1.0) / 2.0);
    out[p] = Math.trunc(f32(Math.min(Math.max(g, 0), 1) * 255.0));
  }
  return out;
}

/**
 * Canny edge map Uint8Array[H·W] (0 or 255) of one grey image, after OpenCV Canny(gray, low, high), aperture 3,
 * L1 gradient: non-maximum suppression in 4 directions, then hysteresis over 8-connected pixels.
 */
export function cannyEdges(gray, height, width, low = 100, high = 200) {
  const { gx, gy } = sobelGradients(Int32Array.from(gray), height, width, Int32Array);
  const n = height * width;
  const mag = new Int32Array(n);
  for (let p = 0; p < n; p++) mag[p] = Math.abs(gx[p]) + Math.abs(gy[p]);
  const m = (y, x) => (y < 0 || y >= height || x < 0 || x >= width ? 0 : mag[y * width + x]); // zero border
  const candidate = new Uint8Array(n);
  let edges = new Uint8Array(n);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = y * width + x;
      const centre = mag[p];
      const ax = Math.abs(gx[p]);
      const ay = Math.abs(gy[p]) * 32768;
      const tg22x = ax * TAN_22_5_Q15;
      let keep;
      if (ay < tg22x) keep = centre > m(y, x - 1) && centre >= m(y, x + 1);
      else if (ay > tg22x + ax * 65536) keep = centre > m(y - 1, x) && centre >= m(y + 1, x);
      else if ((gx[p] ^ gy[p]) >= 0) keep = centre > m(y - 1, x - 1) && centre > m(y + 1, x + 1);
      else keep = centre > m(y - 1, x + 1) && centre > m(y + 1, x - 1);
      candidate[p] = keep && centre > low ? 1 : 0;
      edges[p] = candidate[p] && centre > high ? 1 : 0;
    }
  }
  for (let changed = true; changed;) { // grow strong edges into connected candidates until nothing changes
    changed = false;
    const grown = new Uint8Array(n);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const p = y * width + x;
        if (!candidate[p]) continue;
        let hit = 0;
        for (let dy = -1; dy <= 1 && !hit; dy++) {
          for (let dx = -1; dx <= 1; dx++) {
            const yy = y + dy;
            const xx = x + dx;
            if (yy >= 0 && yy < height && xx >= 0 && xx < width && edges[yy * width + xx]) { hit = 1; break; }
          }
        }
        grown[p] = hit;
        if (hit !== edges[p]) changed = true;
      }
    }
    edges = grown;
  }
  return edges.map((e) => (e ? 255 : 0));
}

/**
 * Edge score per low-res token from a half-resolution decode (spec §4 "Reference edge proxy"). decoded:
 * {data: Float32Array[3·H·W] in [−1, 1], height, width} of the x̂₀ latent; scores are Canny pixel counts ×255
 * per (H/lowH) × (W/lowW) block.
 */
export function cannyScores(decoded, lowH, lowW, mapping = 'affine') {
  const { data, height, width } = decoded;
  if (height % lowH || width % lowW) {
    throw new RangeError(`decoded ${height}×${width} does not divide into the low-res grid ${lowH}×${lowW}`);
  }
  const edges = cannyEdges(grayUint8(data, height, width, mapping), height, width);
  return blockSums(edges, height, width, height / lowH, width / lowW);
}

/**
 * Indices Int32Array[k], ascending, of the k largest scores after N(0, 1e-6²) jitter from `rng` (one
 * normal(0, 1e-6, L) draw; spec §4 Algorithm R2 lines 3–4). Plain top-k: no dilation, no threshold.
 */
export function selectRegions(scores, k, rng) {
  const jitter = rng.normal(0.0, TIE_BREAK_STD, scores.length);
  const jittered = Array.from(scores, (s, i) => s + jitter[i]);
  const order = jittered.map((v, i) => [-v, i]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((t) => t[1]);
  return Int32Array.from(order.slice(0, k)).sort();
}
