// Bundle the client for browsers (dist/roomcast.min.js) and print its size minified and gzipped.
// `node scripts/bundle.mjs --readme` also writes that size into README.md. The build touches
// nothing outside this package: the repository copies the bundle for its demo page itself
// (scripts/setup.sh).
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = here("../dist/roomcast.min.js");

await build({
  entryPoints: [here("../src/index.ts")],
  outfile: out,
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2020",
  legalComments: "none",
});

const code = readFileSync(out);
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(`roomcast.min.js: ${code.length} bytes minified, ${gzipped} bytes gzipped`);

if (process.argv.includes("--readme")) {
  const readme = here("../README.md");
  const text = readFileSync(readme, "utf8");
  const line = `<!-- size -->${code.length} bytes minified, **${gzipped} bytes** minified and gzipped<!-- /size -->`;
  writeFileSync(readme, text.replace(/<!-- size -->.*<!-- \/size -->/, line));
}
