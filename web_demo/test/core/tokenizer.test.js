// The bundle's CLIP BPE and T5 Unigram tokenizers, loaded by @huggingface/transformers from tokenizer.json, against
// the `tokenizers` library's ids for the vectors' prompts (learned token included), padded and truncated as
// runtime/tokenization.py does.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { UserError } from '../../src/core/errors.js';
import { promptTokenizer } from '../../src/core/tokenization.js';
import { VECTORS_DIR, index } from './vectors.js';

const load = (entry) => JSON.parse(fs.readFileSync(path.join(VECTORS_DIR, entry.file), 'utf8'));
const specOf = (entry) => ({ file: entry.file, max_length: entry.max_length, pad_token_id: entry.pad_id, eos_token_id: 1,
  first_free_id: entry.first_free_id });

test('ids match the tokenizers library for every prompt, padded to max_length with the EOS kept on truncation', () => {
  assert.deepEqual(new Set(index.tokenizers.map((t) => t.kind)), new Set(['clip', 't5']));
  for (const entry of index.tokenizers) {
    const tokenizer = promptTokenizer(load(entry), specOf(entry), entry.added_tokens.map((t) => t.content));
    for (const added of entry.added_tokens) assert.equal(tokenizer.placeholderIds[added.content], added.id);
    for (const c of entry.cases) assert.deepEqual(tokenizer.encode(c.prompt), c.padded, `${entry.name} '${c.prompt}'`);
    assert.ok(entry.cases.some((c) => c.ids.length > entry.max_length), `${entry.name}: a case exercises truncation`);
  }
});

test('a prompt without learned tokens tokenizes the same with or without them registered', () => {
  for (const entry of index.tokenizers) {
    const plain = promptTokenizer(load(entry), specOf(entry));
    const withToken = promptTokenizer(load(entry), specOf(entry), ['<shape-token>']);
    for (const c of entry.cases.filter((x) => !x.prompt.includes('<'))) assert.deepEqual(plain.encode(c.prompt), withToken.encode(c.prompt));
  }
});

test('a learned token that is a known word, or a tokenizer that disagrees with the manifest, is refused', () => {
  const entry = index.tokenizers[0];
  assert.throws(() => promptTokenizer(load(entry), specOf(entry), ['circle']), (e) => e instanceof UserError && /already in the vocabulary/.test(e.message));
  assert.throws(() => promptTokenizer(load(entry), { ...specOf(entry), first_free_id: 401 }), (e) => e instanceof UserError && /re-export/.test(e.message));
});
