import assert from "node:assert/strict";
import { join } from "node:path";
import { KnnError } from "../mod.ts";
import { DatastoreLock, storedIdProblems } from "../lib/datastore/mod.ts";

Deno.test("the writer lock is exclusive, names its holder, and is free again once released", async () => {
  const dir = await Deno.makeTempDir({ prefix: "knnlm_lock_" });
  try {
    const first = await DatastoreLock.acquire(dir, "knn gather");
    const record = JSON.parse(await Deno.readTextFile(join(dir, ".lock")));
    assert.equal(record.pid, Deno.pid);
    assert.equal(record.command, "knn gather");
    await assert.rejects(
      DatastoreLock.acquire(dir, "knn add"),
      (e) =>
        KnnError.is(e, "E_LOCKED") && e.path === join(dir, ".lock") &&
        e.message.includes(`process ${Deno.pid} (knn gather)`),
    );
    first.release();
    assert.equal(await Deno.readTextFile(join(dir, ".lock")), "", "the record is cleared");
    first.release(); // twice is a no-op
    using second = await DatastoreLock.acquire(dir, "knn add");
    assert.equal(second.holder.command, "knn add");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the ids check finds ids missing, stored twice and out of range", () => {
  const ids = (...xs: number[]) => BigInt64Array.from(xs.map(BigInt));
  const good = storedIdProblems([ids(3, 0), ids(), ids(1, 4, 2)], 5, "faiss.index");
  assert.deepEqual(good, { count: 5, problems: [] });
  const bad = storedIdProblems([ids(3, 0, 7), ids(1, 3, -1)], 5, "faiss.index");
  assert.equal(bad.count, 6);
  assert.deepEqual(bad.problems.map((p) => [p.code, p.message]), [
    ["E_CORRUPT", "faiss.index: 2 ids outside 0..4 (e.g. 7)"],
    ["E_CORRUPT", "faiss.index: 1 ids stored more than once (e.g. 3)"],
    ["E_CORRUPT", "faiss.index: 2 of the ids 0..4 are missing (e.g. 2)"],
  ]);
});
