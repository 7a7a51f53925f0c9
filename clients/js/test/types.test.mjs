// The published declarations type-check under `strict` with both WebSocket implementations.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { test } from "node:test";
import { promisify } from "node:util";
import { PACKAGE } from "./helpers.mjs";

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");

// tsc takes some 14 s of CPU, and it runs beside other suites: bounds for a busy machine.
test("tsc --strict accepts the ws package's WebSocket and the DOM's", { timeout: 200000 }, async () => {
  const result = await promisify(execFile)(process.execPath, [tsc, "-p", `${PACKAGE}test/types`], {
    timeout: 190000,
  }).catch((error) => error);
  assert.equal(result.code ?? 0, 0, `${result.stdout}${result.stderr}`);
});
