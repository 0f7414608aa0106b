// RALU presets as a bundle's manifest carries them (spec/RALU.md §8; port of ralu_edge/presets.py
// `RaluPreset.from_dict`): N, e, h, Z, r checked, everything else (c, s, a, b, sigma lists) recomputed and
// compared with the stored values, so a manifest whose precomputed sigmas disagree with its own inputs is refused.

import { UserError } from './errors.js';
import { stageSigmas, transition } from './schedules.js';

const DERIVED_TOLERANCE = 1e-6;

/** A preset object {name, N, e, h, Z, r, c, s, a, b, stageSigmas, nfe}; throws UserError on a bad entry. */
export function makePreset({ name, N, e, h, Z, r }) {
  const bad = (what) => new UserError(`RALU preset '${name}': ${what}; re-export the bundle.`);
  if (!Array.isArray(N) || N.length !== 3 || !N.every((n) => Number.isInteger(n) && n >= 1)) {
    throw bad(`N must be three step counts >= 1, got ${JSON.stringify(N)}`);
  }
  if (!Array.isArray(e) || e.length !== 3 || e[2] !== 1.0 || !(0 < e[0] && e[0] < e[1] && e[1] < 1)) {
    throw bad(`stage ends e must increase within (0, 1] and end at 1, got ${JSON.stringify(e)}`);
  }
  if (!Array.isArray(h) || h.length !== 3 || !h.every((x) => Number.isFinite(x) && x > 0)) {
    throw bad(`shifts h must be three positive numbers, got ${JSON.stringify(h)}`);
  }
  if (!(Number.isFinite(Z) && Z >= 2)) throw bad(`Z = ${Z} makes I − cJ indefinite (needs Z >= 2)`);
  if (!(r >= 0 && r <= 1)) throw bad(`up-ratio r = ${r} is outside [0, 1]`);
  const transitions = [transition(e[0], Z), transition(e[1], Z)];
  const s = [0.0, transitions[0].s, transitions[1].s];
  return {
    name, N, e, h, Z, r,
    c: 1.0 / (Z * Z),
    s,
    a: transitions.map((t) => t.a),
    b: transitions.map((t) => t.b),
    transitions,
    stageSigmas: [0, 1, 2].map((k) => stageSigmas(s[k], e[k], h[k], N[k])),
    nfe: N[0] + N[1] + N[2],
  };
}

function close(stored, computed) {
  if (Array.isArray(computed) || ArrayBuffer.isView(computed)) {
    return Array.isArray(stored) && stored.length === computed.length && stored.every((x, i) => close(x, computed[i]));
  }
  return typeof stored === 'number' && Math.abs(stored - computed) <= DERIVED_TOLERANCE;
}

/** The preset stored in a manifest entry (`to_dict` form); derived values must agree with the recomputed ones. */
export function presetFromDict(data) {
  const missing = ['name', 'N', 'e', 'h', 'Z', 'r'].filter((k) => !(k in data));
  if (missing.length) throw new UserError(`a RALU preset entry lacks ${missing.join(', ')}; re-export the bundle.`);
  const preset = makePreset(data);
  const recomputed = { c: preset.c, s: preset.s, a: preset.a, b: preset.b, stage_sigmas: preset.stageSigmas };
  for (const [key, value] of Object.entries(recomputed)) {
    if (key in data && !close(data[key], value)) {
      throw new UserError(`RALU preset '${preset.name}': stored ${key} disagrees with its N, e, h, Z; re-export the bundle.`);
    }
  }
  return preset;
}

/** k = int(M_down·r) for a packed full-res grid (spec §9.2). */
export function numSelected(preset, gridH, gridW) {
  checkGrid(gridH, gridW);
  return Math.trunc((gridH / 2) * (gridW / 2) * preset.r);
}

/** [L1, L2, L3] image tokens per stage: M_down, M_down + 3k, M (spec §9.2). */
export function stageLengths(preset, gridH, gridW) {
  const mDown = (gridH / 2) * (gridW / 2);
  return [mDown, mDown + 3 * numSelected(preset, gridH, gridW), gridH * gridW];
}

/** Σ N_k·L_k image token-steps of a RALU image (spec §9.6). */
export function imageTokenSteps(preset, gridH, gridW) {
  return stageLengths(preset, gridH, gridW).reduce((sum, length, k) => sum + preset.N[k] * length, 0);
}

export function checkGrid(gridH, gridW) {
  if (gridH < 2 || gridW < 2 || gridH % 2 || gridW % 2) {
    throw new UserError(`RALU needs an even packed token grid, got ${gridH}×${gridW}; re-export for an image size that is a multiple of 4 × the VAE factor.`);
  }
}

/** `flux-4x` -> `ralu-4x`; a suffix is kept (`sd3-2x-paper` -> `ralu-2x-paper`), as runtime/pipeline.py names modes. */
export function modeForPreset(presetName) {
  return 'ralu-' + presetName.split('-').slice(1).join('-');
}
