import assert from "node:assert/strict";
import { sampleRows } from "../lib/datastore/sample.ts";

Deno.test("a sample has k distinct rows in ascending order within 0..n-1", () => {
  const rows = sampleRows(100_000, 5_000, 7);
  assert.equal(rows.length, 5_000);
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i] > rows[i - 1]);
  assert.ok(rows[0] >= 0 && rows[rows.length - 1] < 100_000);
});

Deno.test("the same seed gives the same sample and another seed a different one", () => {
  assert.deepEqual(sampleRows(10_000, 100, 1), sampleRows(10_000, 100, 1));
  assert.notDeepEqual(sampleRows(10_000, 100, 1), sampleRows(10_000, 100, 2));
});

Deno.test("asking for at least n rows returns every row", () => {
  assert.deepEqual(Array.from(sampleRows(5, 9, 1)), [0, 1, 2, 3, 4]);
});

Deno.test("the sample is spread over the whole range, not bunched at one end", () => {
  const rows = sampleRows(1_000_000, 20_000, 3);
  const quarters = [0, 0, 0, 0];
  for (const r of rows) quarters[Math.floor(r / 250_000)]++;
  for (const q of quarters) assert.ok(q > 4_500 && q < 5_500, `quarter count ${q}`);
});
