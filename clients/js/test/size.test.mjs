// The browser bundle stays small, and the README states its current size.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { gzipSync } from "node:zlib";
import { PACKAGE } from "./helpers.mjs";

test("the minified bundle is under 4 KB gzipped and the README says how big it is", () => {
  const code = readFileSync(`${PACKAGE}dist/roomcast.min.js`);
  const gzipped = gzipSync(code, { level: 9 }).length;
  assert.ok(gzipped < 4096, `${gzipped} bytes gzipped`);
  const readme = readFileSync(`${PACKAGE}README.md`, "utf8");
  assert.ok(
    readme.includes(`${code.length} bytes minified, **${gzipped} bytes** minified and gzipped`),
    "README.md is out of date: run npm run size",
  );
});
