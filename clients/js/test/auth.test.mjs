// Tokens against a real server with --jwt-secret: a fresh token after 4401, and in-band
// refresh before `exp` so that the connection is not closed.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { test } from "node:test";
import { client, Server, status, within } from "./helpers.mjs";

const SECRET = "a-test-secret-that-is-long-enough-for-hs256";

function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

const now = () => Math.floor(Date.now() / 1000);

test("an expired token is replaced by the provider's fresh one after 4401", async (t) => {
  const server = await new Server(["--jwt-secret", SECRET, "--jwt-leeway", "0"]).start();
  t.after(() => server.stop());
  const tokens = [
    jwt({ sub: "alice", rooms: ["r1"], exp: now() - 60 }),
    jwt({ sub: "alice", rooms: ["r1"], exp: now() + 600 }),
  ];
  let calls = 0;
  const c = client(t, server.url, "alice", "r1", { tokenProvider: () => tokens[calls++] });
  const reconnecting = status(c, "connecting");
  assert.equal((await reconnecting).code, 4401);
  await within(c.ready, "welcome with the fresh token");
  assert.equal(calls, 2);
});

test("a token near its exp is refreshed in-band and the connection stays open", async (t) => {
  const server = await new Server(["--jwt-secret", SECRET, "--jwt-leeway", "0"]).start();
  t.after(() => server.stop());
  const issued = [];
  let secondRefresh;
  const refreshed = new Promise((resolve) => (secondRefresh = resolve));
  const provider = () => {
    // each token lives two seconds longer than the one before
    const token = jwt({ sub: "alice", rooms: ["r1"], exp: now() + 2 + issued.length * 2 });
    issued.push(token);
    if (issued.length === 3) secondRefresh();
    return token;
  };
  const c = client(t, server.url, "alice", "r1", { tokenProvider: provider });
  const seen = [];
  c.onStatus((s) => seen.push(s));
  await within(c.ready, "welcome");
  // the third token is asked for after the first one has expired
  await within(refreshed, "two in-band refreshes");
  assert.equal(await c.request("chat", "still here"), 1);
  assert.deepEqual(seen, ["connected"]);
});
