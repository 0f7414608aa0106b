// Seeded random draws identical to the Python runtime's (ralu_edge/rng.py): `rngFor(seed, purpose, step)` is
// numpy's `default_rng([seed, crc32(purpose), step])`, i.e. SeedSequence -> PCG64 (XSL-RR 128/64), and
// `standardNormal` / `normal` are numpy Generator's ziggurat (distributions.c `random_standard_normal`), draw
// for draw. Ported rather than shipping noise with the bundle: the page must generate any seed the user types,
// and the same (seed, mode) must give ralu-run's image. Pure JS, no I/O.

import { FI, KI, WI } from './ziggurat_tables.js';

const MASK32 = 0xffffffff;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULTIPLIER = (2549297995355413924n << 64n) + 4865540595714422341n; // PCG_DEFAULT_MULTIPLIER_128
const ZIGGURAT_NOR_R = 3.6541528853610087963519472518;
const ZIGGURAT_NOR_INV_R = 0.27366123732975827203338247596;
const TWO_POW_53 = 9007199254740992;

// numpy/random/bit_generator.pyx SeedSequence constants
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const POOL_SIZE = 4;

let crcTable = null;

/** zlib's CRC-32 of a string's UTF-8 bytes (Python `zlib.crc32(s.encode("utf-8"))`), an unsigned 32-bit Number. */
export function crc32(text) {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) crc = crcTable[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** The 32-bit words of a non-negative integer, least significant first ([0] for 0): SeedSequence's coercion. */
function uint32Words(value) {
  let n = BigInt(value);
  if (n < 0n) throw new RangeError(`a seed must be a non-negative integer, got ${value}`);
  if (n === 0n) return [0];
  const words = [];
  while (n > 0n) {
    words.push(Number(n & 0xffffffffn));
    n >>= 32n;
  }
  return words;
}

function hashmix(value, hashConst) {
  let v = (value ^ hashConst.value) >>> 0;
  hashConst.value = Math.imul(hashConst.value, MULT_A) >>> 0;
  v = Math.imul(v, hashConst.value) >>> 0;
  return (v ^ (v >>> 16)) >>> 0;
}

function mix(x, y) {
  const r = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
  return (r ^ (r >>> 16)) >>> 0;
}

/** numpy SeedSequence(entropy).generate_state(nWords32, uint32): the entropy pool mixed, then expanded. */
export function seedSequenceState(entropy, nWords32) {
  const words = entropy.flatMap(uint32Words);
  const pool = new Array(POOL_SIZE).fill(0);
  const hashConst = { value: INIT_A };
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < words.length ? words[i] : 0, hashConst);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hashConst));
    }
  }
  for (let src = POOL_SIZE; src < words.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(words[src], hashConst));
  }
  const out = new Uint32Array(nWords32);
  let h = INIT_B;
  for (let i = 0; i < nWords32; i++) {
    let v = (pool[i % POOL_SIZE] ^ h) >>> 0;
    h = Math.imul(h, MULT_B) >>> 0;
    v = Math.imul(v, h) >>> 0;
    out[i] = (v ^ (v >>> 16)) >>> 0;
  }
  return out;
}

/**
 * numpy's Generator over PCG64: the subset the samplers use (standard_normal, normal). Holds the 128-bit LCG
 * state; each draw advances it, exactly as numpy does, so draws must be requested in the Python order.
 */
export class Generator {
  constructor(entropy) {
    const s = seedSequenceState(entropy, 8); // generate_state(4, uint64), little-endian word pairs
    const u64 = (i) => (BigInt(s[2 * i + 1]) << 32n) | BigInt(s[2 * i]);
    const initState = (u64(0) << 64n) | u64(1);
    const initSeq = (u64(2) << 64n) | u64(3);
    this.inc = ((initSeq << 1n) | 1n) & MASK128; // pcg_setseq_128_srandom_r
    this.state = 0n;
    this.step();
    this.state = (this.state + initState) & MASK128;
    this.step();
  }

  step() {
    this.state = (this.state * PCG_MULTIPLIER + this.inc) & MASK128;
  }

  /** The next 64-bit output as [hi, lo] unsigned 32-bit Numbers (XSL-RR of the advanced state). */
  nextUint64Parts() {
    this.step();
    const hi = this.state >> 64n;
    const xored = (hi ^ this.state) & MASK64;
    const rot = Number(hi >> 58n);
    const out = rot === 0 ? xored : ((xored >> BigInt(rot)) | (xored << BigInt(64 - rot))) & MASK64;
    return [Number(out >> 32n), Number(out & 0xffffffffn)];
  }

  nextDouble() {
    const [hi, lo] = this.nextUint64Parts();
    return (hi * 0x200000 + (lo >>> 11)) / TWO_POW_53; // (u64 >> 11) * 2^-53
  }

  /** One N(0, 1) draw: numpy distributions.c `random_standard_normal` (ziggurat, 256 layers). */
  standardNormalOne() {
    for (;;) {
      const [hi, lo] = this.nextUint64Parts();
      const idx = lo & 0xff;
      // r >> 8: its bit 0 is the sign and its bits 1..52 are rabs, i.e. bits 9..60 of the draw (exact in a double)
      const sign = (lo >>> 8) & 1;
      const rabs = (hi & 0x1fffffff) * 0x800000 + (lo >>> 9);
      let x = rabs * WI[idx];
      if (sign) x = -x;
      if (rabs < KI[idx]) return x;
      if (idx === 0) {
        for (;;) {
          const xx = -ZIGGURAT_NOR_INV_R * Math.log1p(-this.nextDouble());
          const yy = -Math.log1p(-this.nextDouble());
          if (yy + yy > xx * xx) return (Math.floor(rabs / 256) & 1) ? -(ZIGGURAT_NOR_R + xx) : ZIGGURAT_NOR_R + xx;
        }
      } else if ((FI[idx - 1] - FI[idx]) * this.nextDouble() + FI[idx] < Math.exp(-0.5 * x * x)) {
        return x;
      }
    }
  }

  /** `count` N(0, 1) draws (Float64Array), in C order as numpy fills an array of that size. */
  standardNormal(count) {
    const out = new Float64Array(count);
    for (let i = 0; i < count; i++) out[i] = this.standardNormalOne();
    return out;
  }

  /** `count` N(loc, scale²) draws: loc + scale·standard_normal, numpy's `random_normal`. */
  normal(loc, scale, count) {
    const out = new Float64Array(count);
    for (let i = 0; i < count; i++) out[i] = loc + scale * this.standardNormalOne();
    return out;
  }
}

/** The generator of (seed, purpose, step): `ralu_edge.rng.rng_for`, numpy default_rng([seed, crc32, step]). */
export function rngFor(seed, purpose, step = 0) {
  return new Generator([seed, crc32(purpose), step]);
}
