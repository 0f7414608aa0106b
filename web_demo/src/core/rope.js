// Rotary position tables from position ids, computed on the host (spec/RALU.md §9.1; port of ralu_edge/rope.py,
// itself diffusers' FluxPosEmbed): for axis a of even dimension d_a the angles are pos_a·θ^(−2j/d_a), j < d_a/2,
// each repeated twice in place; the axes are concatenated. Ids are rounded to float32 first (exact for the integer
// and half-integer ids RALU uses), angles and cos/sin computed in float64, then stored as float32.

/** {cos, sin}: Float32Array[L·Σaxes] each, for positions Float64Array[L·3] (FLUX ids (0, row, col)). */
export function ropeTables(positions, axesDim, theta) {
  if (axesDim.length !== 3) throw new RangeError(`positions have 3 columns but axesDim is ${axesDim}`);
  const length = positions.length / 3;
  const headDim = axesDim.reduce((a, b) => a + b, 0);
  const cos = new Float32Array(length * headDim);
  const sin = new Float32Array(length * headDim);
  let offset = 0;
  axesDim.forEach((dim, axis) => {
    if (dim % 2) throw new RangeError(`RoPE axis dimensions must be even, got ${axesDim}`);
    const frequencies = Array.from({ length: dim / 2 }, (_, j) => 1.0 / theta ** ((2 * j) / dim));
    for (let i = 0; i < length; i++) {
      const pos = Math.fround(positions[i * 3 + axis]);
      frequencies.forEach((f, j) => {
        const at = i * headDim + offset + 2 * j;
        const angle = pos * f;
        cos[at] = cos[at + 1] = Math.cos(angle);
        sin[at] = sin[at + 1] = Math.sin(angle);
      });
    }
    offset += dim;
  });
  return { cos, sin, length, headDim };
}

/** Position rows of the text tokens (all zero for FLUX) followed by the image positions: Float64Array[(T + L)·3]. */
export function withTextPositions(textLength, imagePositions) {
  const out = new Float64Array(textLength * 3 + imagePositions.length);
  out.set(imagePositions, textLength * 3);
  return out;
}
