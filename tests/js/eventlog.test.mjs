// Unit tests of eventlog.js's logic, with Node's own test runner: `node --test tests/js/`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeLocks, FakeServer, FakeStorage, eventlog, frame, stored, tab, until } from "./fakes.mjs";

const { SSEParser } = eventlog;
const { connect, backoffDelay, storageKey, positionStore } = eventlog.internals;

/** Every message (and retry) the parser dispatches for `chunks`, fed one after another. */
function parse(chunks) {
  const out = [];
  const parser = new SSEParser((m) => out.push(m), (ms) => out.push({ retry: ms }));
  for (const chunk of chunks) parser.feed(chunk);
  return { out, parser };
}

// --- the SSE parser --------------------------------------------------------------------

test("CR, LF and CRLF each end a line, also when a CRLF is split across chunks", () => {
  const text = "data: a\r\n\r\ndata: b\rdata: c\r\rdata: d\n\n";
  const whole = parse([text]).out;
  assert.deepEqual(whole.map((m) => m.data), ["a", "b\nc", "d"]);
  // Cut after every character: the same events (the CR of a CRLF at a chunk's end included).
  assert.deepEqual(parse([...text]).out, whole);
  assert.deepEqual(parse(["data: a\r", "\n", "\r", "\ndata: b\n\n"]).out.map((m) => m.data), ["a", "b"]);
});

test("dispatch on a blank line only when data is non-empty; an empty data line counts", () => {
  const { out, parser } = parse(["id: 7\nevent: ping\n\n", "data:\n\n", "event: x\n\ndata: y\n\n"]);
  assert.deepEqual(out, [
    { type: "message", data: "", lastEventId: "7" },
    { type: "message", data: "y", lastEventId: "7" },
  ]);
  assert.equal(parser.lastEventId, "7");
});

test("one leading space is stripped, no more; a field without a colon has an empty value", () => {
  const { out } = parse(["data:  two\ndata:none\ndata\n\n"]);
  assert.deepEqual(out.map((m) => m.data), [" two\nnone\n"]);
});

test("the id persists across events and a NUL in it is ignored; comments are ignored", () => {
  const { out } = parse([": hello\nid: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\n: bye\n\n"]);
  assert.deepEqual(out.map((m) => [m.data, m.lastEventId]), [["a", "1"], ["b", "1"], ["c", "1"]]);
});

test("retry is honoured only when all ASCII digits; event sets the type once", () => {
  const { out } = parse(["retry: 250\nretry: 1e3\nretry: -1\nretry:\nevent: created\ndata: x\n\ndata: y\n\n"]);
  assert.deepEqual(out, [
    { retry: 250 },
    { type: "created", data: "x", lastEventId: "" },
    { type: "message", data: "y", lastEventId: "" },
  ]);
});

test("line separators other than CR and LF stay inside the data", () => {
  const data = "a\u2028b\u0085c\fd";
  assert.deepEqual(parse([`data: ${data}\n\n`]).out.map((m) => m.data), [data]);
});

test("reset() drops a half-received event but keeps the last id", () => {
  const { out, parser } = parse(["id: 5\ndata: done\n\nid: 6\ndata: hal"]);
  parser.reset();
  parser.feed("f\n\ndata: next\n\n");
  assert.deepEqual(out.map((m) => [m.data, m.lastEventId]), [["done", "5"], ["next", "5"]]);
});

// --- backoff and keys ------------------------------------------------------------------

test("backoff doubles from the base, is capped, and jitters within the upper half", () => {
  const top = (attempt) => backoffDelay(attempt, 100, 1000, () => 1);
  const bottom = (attempt) => backoffDelay(attempt, 100, 1000, () => 0);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 60].map(top), [100, 200, 400, 800, 1000, 1000, 1000]);
  assert.deepEqual([0, 1, 4].map(bottom), [50, 100, 500]);
  for (let i = 0; i < 100; i++) {
    const delay = backoffDelay(2, 100, 1000);
    assert.ok(delay >= 200 && delay <= 400, String(delay));
  }
});

test("the key depends on the server and the set of streams, not their order", () => {
  const key = storageKey("http://a.test/", ["b", "a", "b"]);
  assert.equal(key, "eventlog:http://a.test/events?stream=a&stream=b");
  assert.equal(storageKey("http://a.test", ["a", "b"]), key);
  assert.notEqual(storageKey("http://b.test/", ["a", "b"]), key);
  assert.notEqual(storageKey("http://a.test/", ["a"]), key);
  assert.equal(storageKey("http://a.test/", []), "eventlog:http://a.test/events");
});

test("this tab's position wins over the shared one; junk is no position", () => {
  const local = new FakeStorage();
  const session = new FakeStorage();
  const positions = positionStore("k", local, session);
  assert.equal(positions.load(), null);
  local.setItem("k", "40");
  assert.equal(positions.load(), 40);
  session.setItem("k", "12");
  assert.equal(positions.load(), 12);
  session.setItem("k", "12; drop table");
  assert.equal(positions.load(), 40);
  positions.save(41);
  assert.deepEqual([local.getItem("k"), session.getItem("k")], ["41", "41"]);
});

// --- one tab: resume, reconnect, dedupe ------------------------------------------------

function subscribeTab(server, streams, options = {}, tabOptions = {}) {
  const received = [];
  const platform = tab(server, tabOptions);
  const sub = connect(streams, (event) => received.push(event), { share: false, ...options }, platform);
  return { sub, received, platform };
}

test("events arrive parsed, once each and in order, also when a reconnection repeats them", async () => {
  const server = new FakeServer({ log: [stored(3)] });
  const { sub, received } = subscribeTab(server, ["orders"]);
  await until(() => server.open.length === 1, "the first connection");
  // No position yet: it starts after the newest matching event, asked of the audit API.
  assert.equal(server.open[0].request.headers["Last-Event-ID"], "3");
  const [e4, e5, e6] = [stored(4), stored(5, "orders", "paid"), stored(6)];
  server.open[0].write(frame(e4) + frame(e5));
  await until(() => received.length === 2, "two events");
  server.open[0].cut();
  await until(() => server.open.length === 1, "the reconnection");
  assert.equal(server.open[0].request.headers["Last-Event-ID"], "5");
  server.open[0].write(frame(e4) + frame(e5) + frame(e6)); // a confused server repeats two
  await until(() => received.length === 3, "the third event");
  assert.deepEqual(received, [e4, e5, e6]);
  assert.equal(sub.lastEventId, 6);
  sub.close();
});

test("a reload resumes from the stored position and asks nothing else", async () => {
  const server = new FakeServer();
  const session = new FakeStorage();
  const key = storageKey("http://eventlog.test/", ["orders"]);
  session.setItem(key, "17");
  const { sub } = subscribeTab(server, ["orders"], {}, { session });
  await until(() => server.open.length === 1, "the connection");
  assert.equal(server.requests.length, 1);
  assert.equal(server.open[0].request.headers["Last-Event-ID"], "17");
  assert.equal(server.open[0].request.url.search, "?stream=orders");
  sub.close();
  await until(() => server.open.length === 0, "the connection to close");
});

test("non-200 answers are retried with growing delays; 400 ends the subscription", async () => {
  const server = new FakeServer({ log: [stored(1)], answers: [502, 503, 404, "stream", 400] });
  const errors = [];
  const { sub } = subscribeTab(server, ["orders"], { onError: (e) => errors.push(e), retry: 5 });
  await until(() => server.open.length === 1, "a connection after three failures");
  assert.deepEqual(errors.map((e) => [e.status, e.retrying]), [[502, true], [503, true], [404, true]]);
  server.open[0].end(); // the server ends the stream: reconnect, and this time get a 400
  await until(() => errors.length === 4, "the 400");
  assert.deepEqual(errors[3].status, 400);
  assert.equal(errors[3].retrying, false);
  const asked = server.requests.length;
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(server.requests.length, asked, "nothing is retried after a 400");
  assert.equal(sub.leader, false);
});

test("a 401 asks the token function again and retries with the fresh token", async () => {
  const server = new FakeServer({ log: [stored(1)], answers: [401, "stream"] });
  let issued = 0;
  const errors = [];
  const { sub } = subscribeTab(server, ["orders"], {
    token: () => Promise.resolve(`t${++issued}`),
    onError: (e) => errors.push(e.status),
  });
  await until(() => server.open.length === 1, "the connection with a fresh token");
  const streamRequests = server.requests.filter((r) => r.headers.Accept === "text/event-stream");
  assert.deepEqual(streamRequests.map((r) => r.url.searchParams.get("access_token")), ["t2", "t3"]);
  assert.deepEqual(errors, [401]);
  // The audit request that found the position sent the token as a header instead.
  assert.equal(server.requests[0].headers.Authorization, "Bearer t1");
  assert.equal(server.requests[0].url.searchParams.get("access_token"), null);
  sub.close();
});

test("a 403 without a token function is final", async () => {
  const server = new FakeServer({ log: [stored(1)], answers: [403] });
  const errors = [];
  subscribeTab(server, ["orders"], { onError: (e) => errors.push(e) });
  await until(() => errors.length === 1, "the 403");
  assert.equal(errors[0].retrying, false);
});

test("a reset hands its data to onReset and moves the position, even down", async () => {
  const server = new FakeServer({ log: [stored(90)] });
  const resets = [];
  const { sub, received } = subscribeTab(server, ["orders"], { onReset: (info) => resets.push(info) });
  await until(() => server.open.length === 1, "the connection");
  const info = { requested: 90, oldest: 1, head: 12 };
  server.open[0].write(`id: 12\nevent: reset\ndata: ${JSON.stringify(info)}\n\n` + frame(stored(13)));
  await until(() => received.length === 1, "the event after the reset");
  assert.deepEqual(resets, [info]);
  assert.equal(received[0].id, 13);
  sub.close();
});

test("an exception in the app's callback is reported and the stream goes on", async () => {
  const server = new FakeServer({ log: [stored(1)] });
  const reported = [];
  const original = globalThis.reportError;
  globalThis.reportError = (error) => reported.push(error);
  try {
    let calls = 0;
    const sub = connect(["orders"], () => { calls += 1; if (calls === 1) throw new Error("app bug"); },
      { share: false }, tab(server));
    await until(() => server.open.length === 1, "the connection");
    server.open[0].write(frame(stored(2)) + "data: not json\n\n" + frame(stored(3)));
    await until(() => calls === 2, "the next event");
    assert.deepEqual(reported.map((e) => e.constructor.name), ["Error", "SyntaxError"]);
    assert.equal(sub.lastEventId, 3);
    sub.close();
  } finally {
    globalThis.reportError = original;
  }
});

// --- several tabs: one connection, handoff ------------------------------------------------

/** `count` tabs of one origin (one lock manager, one localStorage) on `streams`. */
function tabs(server, count, streams = ["orders"]) {
  const locks = new FakeLocks();
  const local = new FakeStorage();
  return Array.from({ length: count }, () => {
    const received = [];
    const sub = connect(streams, (e) => received.push(e.id), {}, tab(server, { locks, local }));
    return { sub, received };
  });
}

test("tabs share one connection, and the next tab takes over from its last id", async () => {
  const server = new FakeServer({ log: [stored(1)] });
  const all = tabs(server, 3);
  await until(() => server.open.length === 1, "the leader's connection");
  assert.deepEqual(all.map((t) => t.sub.leader), [true, false, false]);
  server.open[0].write(frame(stored(2)) + frame(stored(3)));
  await until(() => all.every((t) => t.received.length === 2), "every tab to get both events");

  all[0].sub.close(); // the leader goes
  await until(() => server.open.length === 1 && all[1].sub.leader, "the second tab to take over");
  assert.equal(server.connections.length, 2);
  assert.equal(server.open[0].request.headers["Last-Event-ID"], "3");
  server.open[0].write(frame(stored(4)));
  await until(() => all[2].received.length === 3, "the third tab to get event 4");
  assert.deepEqual(all.map((t) => t.received), [[2, 3], [2, 3, 4], [2, 3, 4]]);
  all.slice(1).forEach((t) => t.sub.close());
});

test("a follower that lags behind the leader fills the gap from the audit API, in order", async () => {
  const log = [1, 2, 3, 4, 5, 6].map((id) => stored(id));
  const server = new FakeServer({ log });
  const locks = new FakeLocks();
  const local = new FakeStorage();
  local.setItem(storageKey("http://eventlog.test/", ["orders"]), "0"); // this origin's position
  const leader = connect(["orders"], () => {}, {}, tab(server, { locks, local }));
  await until(() => server.open.length === 1, "the leader's connection");
  server.open[0].write(frame(log[0]) + frame(log[1]) + frame(log[2]) + frame(log[3]) + frame(log[4]));
  await until(() => leader.lastEventId === 5, "the leader to get event 5");
  // A tab that reloads with its own older position joins while the leader is at 5.
  const session = new FakeStorage();
  session.setItem(leader.key, "1");
  const received = [];
  const follower = connect(["orders"], (e) => received.push(e.id), {}, tab(server, { locks, local, session }));
  await until(() => received.length === 4, "the follower to catch up to 5");
  server.open[0].write(frame(log[5]));
  await until(() => received.length === 5, "event 6");
  assert.deepEqual(received, [2, 3, 4, 5, 6]);
  assert.equal(server.connections.length, 1, "the follower opened no stream of its own");
  leader.close();
  follower.close();
});

test("without Web Locks each tab has a connection of its own", async () => {
  const server = new FakeServer({ log: [stored(1)] });
  const subs = [0, 1].map(() => connect(["orders"], () => {}, {}, tab(server)));
  await until(() => server.open.length === 2, "two connections");
  subs.forEach((s) => s.close());
});

test("a 404 from the stream URL says, through onError, that no eventlog server is there and how to point at one", async () => {
  const server = new FakeServer({ log: [stored(1)], answers: [404, "stream"] });
  const errors = [];
  const { sub } = subscribeTab(server, ["orders"], { onError: (e) => errors.push(e), retry: 5 });
  try {
    await until(() => server.open.length === 1, "the connection after the 404");
  } finally {
    sub.close();
  }
  assert.equal(errors.length, 1);
  assert.equal(errors[0].status, 404);
  assert.equal(errors[0].retrying, true); // a proxy may answer 404 while the app deploys
  const message = errors[0].error?.message;
  assert.match(message, /http:\/\/eventlog\.test\/events answered 404/);
  assert.match(message, /\{url: "https:\/\/events\.example\.com\/"\}/);
});

test("without onError, a 404 is told once on the console", async () => {
  const server = new FakeServer({ log: [stored(1)], answers: [404, 404, "stream"] });
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(" "));
  try {
    const { sub } = subscribeTab(server, ["orders"], { retry: 5 });
    await until(() => server.open.length === 1, "the connection after the 404s");
    sub.close();
  } finally {
    console.warn = warn;
  }
  assert.equal(warnings.length, 1);
  assert.match(warnings[0], /answered 404 Not Found, so no eventlog server is there/);
});
