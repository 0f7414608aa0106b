// Prompt tokenisation with @huggingface/transformers' tokenizer loading from the bundle's tokenizer.json (no
// hand-written BPE or Unigram), padded and truncated exactly as runtime/tokenization.py does (FluxPipeline:
// truncate so the end-of-text id survives, pad with the pad id to max_length). Learned (Textual Inversion)
// tokens are added the way every side of the project adds them (runtime/tokenization.py `add_learned_tokens`):
// whole-string added tokens with lstrip, not normalized, after switching a Metaspace pre-tokenizer from
// prepending '▁' to every section to only the first, so "a red <tok> in" tokenizes like "a red square in".

import { PreTrainedTokenizer } from '@huggingface/transformers';
import { UserError } from './errors.js';

/** Switch every Metaspace in a pre-tokenizer JSON node from prepend_scheme "always" to "first" (in place). */
function firstPrependScheme(node) {
  if (!node || typeof node !== 'object') return;
  if (node.type === 'Metaspace') {
    const scheme = node.prepend_scheme ?? ((node.add_prefix_space ?? true) ? 'always' : 'never');
    if (scheme === 'always') {
      node.prepend_scheme = 'first';
      node.add_prefix_space = true;
    }
  }
  for (const child of node.pretokenizers ?? []) firstPrependScheme(child);
}

/** Ids in the tokenizer (model vocabulary and added tokens): tokenizers' get_vocab_size(with_added_tokens=True). */
function vocabSize(json) {
  const vocab = json.model?.vocab ?? {};
  const ids = new Set(Array.isArray(vocab) ? vocab.keys() : Object.values(vocab)); // Unigram: [piece, score] rows
  for (const t of json.added_tokens ?? []) ids.add(t.id);
  return ids.size;
}

/**
 * A bundle tokenizer: `encode(prompt)` -> Int32Array-like number[] of max_length ids, and `placeholderIds`
 * {token: id} for the learned tokens. json: the parsed tokenizer.json; spec: the manifest's tokenizer entry
 * (max_length, pad_token_id, eos_token_id, first_free_id); label: the file, for messages.
 */
export function promptTokenizer(json, spec, learnedTokens = [], label = spec.file) {
  const state = structuredClone(json);
  const size = vocabSize(state);
  if (size !== spec.first_free_id) {
    throw new UserError(`${label}: the tokenizer has ${size} tokens but the manifest says the first free id is ${spec.first_free_id}; the bundle's tokenizer and manifest disagree, re-export it.`);
  }
  const probe = new PreTrainedTokenizer(structuredClone(json), {});
  const placeholderIds = {};
  learnedTokens.forEach((token, i) => {
    if (!token || /\s/.test(token)) throw new UserError(`learned token '${token}' must be one word without spaces, e.g. '<my-cat>'.`);
    if (probe.encode(token, { add_special_tokens: false }).length === 1) {
      throw new UserError(`token '${token}' is already in the vocabulary; pick a new string such as '<${token}>'.`);
    }
    placeholderIds[token] = spec.first_free_id + i;
  });
  if (learnedTokens.length) {
    firstPrependScheme(state.pre_tokenizer);
    state.added_tokens = [...(state.added_tokens ?? []), ...learnedTokens.map((content) => ({
      id: placeholderIds[content], content, single_word: false, lstrip: true, rstrip: false, normalized: false, special: false,
    }))];
  }
  const tokenizer = new PreTrainedTokenizer(state, {});
  return {
    placeholderIds,
    /** Ids of one prompt: number[max_length], truncated so the EOS survives, padded with the pad id. */
    encode(prompt) {
      let ids = tokenizer.encode(prompt);
      const length = spec.max_length;
      if (ids.length > length) ids = [...ids.slice(0, length - 1), spec.eos_token_id];
      return [...ids, ...new Array(length - ids.length).fill(spec.pad_token_id)];
    },
    /** The token strings of a prompt (for messages). */
    tokens(prompt) {
      return tokenizer.tokenize(prompt);
    },
  };
}
