// The Canny edge proxy and top-k selection (spec/RALU.md §4, §9.4) against ralu_edge's NumPy port of OpenCV on
// the vectors' image.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { blockSums, cannyEdges, cannyScores, grayUint8, selectRegions } from '../../src/core/edges.js';
import { array, index, shape } from './vectors.js';

const canny = index.canny;

test('grey mappings, Canny edges and block sums match exactly', () => {
  const image = array(canny.image);
  const [, , height, width] = shape(canny.image);
  for (const mapping of ['affine', 'reference_clip']) {
    const expected = canny[mapping];
    const gray = grayUint8(image, height, width, mapping);
    assert.deepEqual(gray, array(expected.gray), `${mapping} grey`);
    const edges = cannyEdges(gray, height, width, canny.low_threshold, canny.high_threshold);
    assert.deepEqual(edges, array(expected.edges), `${mapping} edges`);
    assert.deepEqual(blockSums(edges, height, width, canny.block, canny.block), Float64Array.from(array(expected.block_sums)));
  }
});

test("Canny scores sum each low-res token's block of the decoded image", () => {
  const [, , height, width] = shape(canny.image);
  const scores = cannyScores({ data: array(canny.image), height, width }, height / canny.block, width / canny.block);
  assert.deepEqual(scores, Float64Array.from(array(canny.affine.block_sums)));
});

test('selection is the top k, ascending, with the jitter breaking ties', () => {
  const jitter = Float64Array.from([0, -1e-6, 2e-6, 0, 1e-6]);
  const rng = { normal: (loc, scale, n) => { assert.equal(n, 5); return jitter; } };
  assert.deepEqual(Array.from(selectRegions([0, 5, 5, 1, 5], 2, rng)), [2, 4]);
});
