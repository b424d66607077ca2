import assert from "node:assert/strict";
import { lambdaPlotSvg } from "../lib/present/mod.ts";
import { niceTicks } from "../lib/present/plot_svg.ts";

Deno.test("the λ plot draws one line per mode, the base LM and each best point in the legend", () => {
  const svg = lambdaPlotSvg({
    title: "ppl <test>",
    lambdas: [0, 0.25, 0.5],
    baseline: 5,
    series: [
      { name: "exact L2", y: [5, 4.5, 4.4], best: { x: 0.52, y: 4.39 } },
      { name: "FAISS", y: [5, 4.6, 4.7] },
    ],
  });
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.equal(svg.match(/<polyline /g)?.length, 2);
  assert.match(svg, /ppl &lt;test&gt;/, "the title is escaped");
  assert.match(svg, /base LM 5\.000/);
  assert.match(svg, /exact L2: best 4\.390 at λ=0\.52/);
  assert.match(svg, /FAISS: best 4\.600 at λ=0\.25/);
  // best of "exact" lies off the x range [0, 0.5]: only FAISS's best gets a ring.
  assert.equal(svg.match(/r="7"/g)?.length, 1);
});

Deno.test("axis ticks are round numbers covering the range", () => {
  assert.deepEqual(niceTicks(0, 0.5), [0, 0.1, 0.2, 0.3, 0.4, 0.5]);
  assert.deepEqual(niceTicks(4.31, 5.1), [4.4, 4.6, 4.8, 5]);
});
