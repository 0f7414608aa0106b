// VAE output to pixels, as runtime/images.py `latent_image_to_uint8` does (diffusers' postprocess):
// clip((x + 1)/2, 0, 1)·255 in float32, rounded half to even (numpy.round), and PSNR for comparing images.

const f32 = Math.fround;

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** RGBA bytes Uint8ClampedArray[H·W·4] (alpha 255) of an image Float32Array[3·H·W] in [−1, 1]. */
export function imageToRgba(data, height, width) {
  const n = height * width;
  const out = new Uint8ClampedArray(n * 4);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      const x = Math.min(Math.max(f32(f32(data[c * n + p] + 1.0) / 2.0), 0), 1);
      out[p * 4 + c] = roundHalfEven(f32(x * 255.0));
    }
    out[p * 4 + 3] = 255;
  }
  return out;
}

/** Peak signal-to-noise ratio in dB of two 8-bit images of the same size (RGB channels; alpha ignored when 4). */
export function psnr(a, b, channels = 3) {
  if (a.length !== b.length) throw new RangeError(`images differ in size: ${a.length} vs ${b.length} values`);
  let sum = 0;
  let count = 0;
  for (let i = 0; i < a.length; i++) {
    if (channels === 4 && i % 4 === 3) continue;
    sum += (a[i] - b[i]) ** 2;
    count++;
  }
  const mse = sum / count;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}
