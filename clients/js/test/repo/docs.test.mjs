// The TypeScript section of docs/clients.md: its examples are the files in examples/, and each
// prints what the docs show when run against a real server.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { promisify } from "node:util";
import { ROOT, sharedServer } from "../helpers.mjs";

const run = promisify(execFile);
const docs = readFileSync(`${ROOT}docs/clients.md`, "utf8");
const section = docs.slice(docs.indexOf("## TypeScript client")).split(/\n## /)[0];
const blocks = (kind, lang) =>
  new Map(
    [...section.matchAll(new RegExp(`<!-- ${kind}: (\\S+) -->\\n\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``, "g"))].map(
      (m) => [m[1], m[2]],
    ),
  );
const examples = blocks("example", "js");
const outputs = blocks("output", "text");

test("the TypeScript guide has examples, each with its output", () => {
  assert.ok(section.startsWith("## TypeScript client"));
  assert.ok(examples.size >= 2, `examples found: ${[...examples.keys()]}`);
  assert.deepEqual([...outputs.keys()].sort(), [...examples.keys()].sort());
  // every fenced code block is a marked example or its output
  const fences = [...section.matchAll(/^```(\w+)$/gm)].map((m) => m[1]);
  assert.equal(fences.length, examples.size + outputs.size, `blocks: ${fences}`);
});

for (const [path, code] of examples) {
  test(`${path} in the docs is the file, and prints what the docs show`, async (t) => {
    assert.equal(code, readFileSync(ROOT + path, "utf8"));
    const { url } = await sharedServer(t);
    const room = `docs-${randomUUID().slice(0, 8)}`;
    const { stdout } = await run(process.execPath, [ROOT + path, url, room], {
      cwd: `${ROOT}clients/js`,
      timeout: 20000,
    });
    assert.equal(stdout.replaceAll(room, "lobby"), outputs.get(path));
  });
}
