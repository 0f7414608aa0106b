// Token bookkeeping for RALU (spec/RALU.md §3, §5, §6; port of ralu_edge/tokens.py): FLUX 2×2 packing, position
// ids, the nearest downsample of stage 1, the mixed-resolution assemblies of stages 2 and 3 with their
// correlated-noise groups, and the raster restore. Pure functions; inputs are never mutated.
//
// Conventions (one image, batch 1): tokens are { length, channels, data: Float32Array[length·channels] } with
// channels = 4·latent_channels in FLUX's (c, dy, dx) order; positions are Float64Array[L·3] rows (0, row, col);
// groups are Int32Array[G·4], each 4 consecutive entries the sequence indices of one duplicated token's children.

/** (row, col) offsets of the 4 children of a duplicated token, in this order (spec/RALU.md §5, Algorithm R3). */
export const CHILD_OFFSETS = [[0, 0], [0, 0.5], [0.5, 0], [0.5, 0.5]];

export function makeTokens(length, channels, data = new Float32Array(length * channels)) {
  if (data.length !== length * channels) throw new RangeError(`tokens: ${data.length} values for ${length}×${channels}`);
  return { length, channels, data };
}

/** Packed tokens [(H/2)(W/2), 4C] from a latent [C, H, W] (diffusers `FluxPipeline._pack_latents`). */
export function packLatents(latent, channels, height, width) {
  const gh = height / 2;
  const gw = width / 2;
  const out = new Float32Array(latent.length);
  let o = 0;
  for (let i = 0; i < gh; i++) {
    for (let j = 0; j < gw; j++) {
      for (let c = 0; c < channels; c++) {
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) out[o++] = latent[(c * height + 2 * i + dy) * width + 2 * j + dx];
        }
      }
    }
  }
  return makeTokens(gh * gw, channels * 4, out);
}

/** Latent [C, 2·gridH, 2·gridW] (Float32Array, C order) from raster-ordered packed tokens; inverse of packLatents. */
export function unpackLatents(tokens, gridH, gridW) {
  if (tokens.length !== gridH * gridW || tokens.channels % 4) {
    throw new RangeError(`tokens ${tokens.length}×${tokens.channels} do not form a ${gridH}×${gridW} packed grid`);
  }
  const channels = tokens.channels / 4;
  const height = 2 * gridH;
  const width = 2 * gridW;
  const out = new Float32Array(tokens.data.length);
  let t = 0;
  for (let i = 0; i < gridH; i++) {
    for (let j = 0; j < gridW; j++) {
      for (let c = 0; c < channels; c++) {
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) out[(c * height + 2 * i + dy) * width + 2 * j + dx] = tokens.data[t++];
        }
      }
    }
  }
  return out;
}

/** Position ids of a raster-ordered grid: Float64Array[gridH·gridW·3], rows (0, row, col) (FLUX img_ids). */
export function gridPositions(gridH, gridW) {
  const out = new Float64Array(gridH * gridW * 3);
  for (let i = 0; i < gridH; i++) {
    for (let j = 0; j < gridW; j++) {
      const q = i * gridW + j;
      out[q * 3 + 1] = i;
      out[q * 3 + 2] = j;
    }
  }
  return out;
}

/** Low-res packed tokens from full-res ones: unpack, keep even latent rows/columns (nearest ×½, §3 item 2), repack. */
export function downsampleTokens(tokens, gridH, gridW) {
  const channels = tokens.channels / 4;
  const height = 2 * gridH;
  const width = 2 * gridW;
  const latent = unpackLatents(tokens, gridH, gridW);
  const half = new Float32Array(channels * gridH * gridW);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < gridH; y++) {
      for (let x = 0; x < gridW; x++) half[(c * gridH + y) * gridW + x] = latent[(c * height + 2 * y) * width + 2 * x];
    }
  }
  return packLatents(half, channels, gridH, gridW);
}

/** Ids of the 4 children of each position row: Float64Array[4n·3]; children of row q are rows 4q..4q+3 (§5). */
export function childPositions(positions) {
  const n = positions.length / 3;
  const out = new Float64Array(n * 12);
  for (let q = 0; q < n; q++) {
    for (let m = 0; m < 4; m++) {
      const o = (4 * q + m) * 3;
      out[o] = positions[q * 3];
      out[o + 1] = positions[q * 3 + 1] + CHILD_OFFSETS[m][0];
      out[o + 2] = positions[q * 3 + 2] + CHILD_OFFSETS[m][1];
    }
  }
  return out;
}

/** Groups of 4 consecutive sequence indices from `start`: Int32Array[numGroups·4]. */
export function consecutiveGroups(start, numGroups) {
  return Int32Array.from({ length: numGroups * 4 }, (_, i) => start + i);
}

/** Token rows `rows` of `tokens`, each repeated `times` times in place. */
function gatherRows(tokens, rows, times = 1) {
  const c = tokens.channels;
  const out = new Float32Array(rows.length * times * c);
  let o = 0;
  for (const r of rows) {
    const row = tokens.data.subarray(r * c, (r + 1) * c);
    for (let k = 0; k < times; k++, o += c) out.set(row, o);
  }
  return out;
}

function gatherPositions(positions, rows) {
  const out = new Float64Array(rows.length * 3);
  rows.forEach((r, i) => out.set(positions.subarray(r * 3, r * 3 + 3), i * 3));
  return out;
}

function concatFloat(ctor, a, b) {
  const out = new ctor(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Stage-2 sequence [unselected ‖ 4 children of each selected] (spec/RALU.md §5, Algorithm R3): tokens
 * [M_down + 3k], positions, and groups covering the last 4k tokens. Both parts keep ascending raster order.
 */
export function assembleStage2(tokens, positions, selected) {
  const sel = Int32Array.from(selected).sort();
  const length = tokens.length;
  for (let i = 0; i < sel.length; i++) {
    if (sel[i] < 0 || sel[i] >= length || (i > 0 && sel[i] === sel[i - 1])) {
      throw new RangeError(`selected must be distinct indices in [0, ${length}), got ${Array.from(sel)}`);
    }
  }
  const isSelected = new Uint8Array(length);
  for (const q of sel) isSelected[q] = 1;
  const single = [];
  for (let q = 0; q < length; q++) if (!isSelected[q]) single.push(q);
  const data = concatFloat(Float32Array, gatherRows(tokens, single), gatherRows(tokens, sel, 4));
  const newPositions = concatFloat(Float64Array, gatherPositions(positions, single),
    childPositions(gatherPositions(positions, sel)));
  return {
    tokens: makeTokens(single.length + 4 * sel.length, tokens.channels, data),
    positions: newPositions,
    groups: consecutiveGroups(single.length, sel.length),
  };
}

/**
 * Full-resolution sequence [4 children of each 1× token ‖ existing children], ids doubled (spec/RALU.md §6,
 * Algorithm R4); not yet in raster order. numSingle: M_down − k leading 1× tokens. Groups cover the first
 * 4·numSingle tokens.
 */
export function assembleStage3(tokens, positions, numSingle) {
  const c = tokens.channels;
  const singles = Array.from({ length: numSingle }, (_, i) => i);
  const data = concatFloat(Float32Array, gatherRows(tokens, singles, 4), tokens.data.subarray(numSingle * c));
  const ids = concatFloat(Float64Array, childPositions(positions.subarray(0, numSingle * 3)),
    positions.subarray(numSingle * 3));
  for (let i = 0; i < ids.length; i++) ids[i] *= 2;
  return {
    tokens: makeTokens(tokens.length + 3 * numSingle, c, data),
    positions: ids,
    groups: consecutiveGroups(0, numSingle),
  };
}

/** Stable argsort of `keys` restricted to `order` (returns a new ordering of `order`). */
function stableSortBy(order, key) {
  return order.map((v, i) => [key(v), i, v]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((t) => t[2]);
}

/** Permutation Int32Array[L] putting tokens in row-major order of their ids (Algorithm R5: by column, then row). */
export function rasterOrder(positions) {
  const n = positions.length / 3;
  const byCol = stableSortBy(Array.from({ length: n }, (_, i) => i), (i) => positions[i * 3 + 2]);
  return Int32Array.from(stableSortBy(byCol, (i) => positions[i * 3 + 1]));
}

/** (tokens, positions) reordered by rasterOrder(positions) (Algorithm R5). */
export function restoreRasterOrder(tokens, positions) {
  const order = rasterOrder(positions);
  return {
    tokens: makeTokens(tokens.length, tokens.channels, gatherRows(tokens, order)),
    positions: gatherPositions(positions, order),
    order,
  };
}
