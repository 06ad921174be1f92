// Fakes of what eventlog.js uses of a browser, for Node's test runner: a scripted server
// behind fetch(), Web Locks and storage. BroadcastChannel is Node's own (it works between
// objects of one process, as between tabs).

import "../../eventlog/static/eventlog.js";

export const { eventlog } = globalThis;

/** A stored event as the server's frames and audit pages carry it. */
export function stored(id, stream = "orders", type = "message", data = { n: id }) {
  return { id, stream, type, data, time: "2026-12-01T10:00:00.000000Z" };
}

/** The SSE frame of a stored event, as GET /events writes it. */
export function frame(event) {
  const type = event.type === "message" ? "" : `event: ${event.type}\n`;
  return `id: ${event.id}\n${type}data: ${JSON.stringify(event)}\n\n`;
}

/** Wait (bounded) until `check()` holds. */
export async function until(check, what = "the condition", timeout = 2000) {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * A server behind fetch(). Each request is recorded; a stream request gets the next answer
 * from `answers` (a status, or "stream" for a 200 event stream the test writes to through
 * `connections`); audit requests are answered from `log` with keyset pages.
 */
export class FakeServer {
  constructor({ answers = [], log = [], pageSize = 2 } = {}) {
    this.answers = answers;
    this.log = log;
    this.pageSize = pageSize;
    this.requests = [];
    this.connections = [];
    this.fetch = this.fetch.bind(this);
  }

  /** Stream connections not yet closed by either side. */
  get open() {
    return this.connections.filter((c) => !c.closed);
  }

  async fetch(url, init = {}) {
    const parsed = new URL(url);
    const headers = init.headers || {};
    this.requests.push({ url: parsed, headers });
    if (headers.Accept === "application/json") return this._audit(parsed);
    const answer = this.answers.length ? this.answers.shift() : "stream";
    if (answer !== "stream") {
      return new Response(JSON.stringify({ status: answer }), { status: answer });
    }
    const connection = { closed: false, request: { url: parsed, headers } };
    const body = new ReadableStream({
      start(controller) {
        connection.write = (text) => controller.enqueue(new TextEncoder().encode(text));
        connection.end = () => { connection.closed = true; controller.close(); };
        connection.cut = () => { connection.closed = true; controller.error(new TypeError("network error")); };
      },
      cancel() { connection.closed = true; },
    });
    init.signal?.addEventListener("abort", () => {
      if (!connection.closed) connection.cut();
    });
    this.connections.push(connection);
    connection.write("retry: 10\n\n");
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  }

  _audit(url) {
    const after = Number(url.searchParams.get("after") || 0);
    const streams = url.searchParams.getAll("stream");
    let events = this.log.filter((e) => e.id > after && (!streams.length || streams.includes(e.stream)));
    if (url.searchParams.get("order") === "desc") events = events.reverse();
    const limit = Math.min(Number(url.searchParams.get("limit") || 100), this.pageSize);
    const page = events.slice(0, limit);
    let next = null;
    if (events.length > limit) {
      next = new URL(url);
      next.searchParams.set("after", String(page.at(-1).id));
      next = next.href;
    }
    return new Response(JSON.stringify({ events: page, next }), {
      status: 200, headers: { "Content-Type": "application/json" },
    });
  }
}

/** Web Locks, exclusive mode only: one holder per name, the others queue in order. */
export class FakeLocks {
  constructor() {
    this.queues = new Map();
  }

  request(name, options, callback) {
    const queue = this.queues.get(name) || [];
    this.queues.set(name, queue);
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject, granted: false };
      options.signal?.addEventListener("abort", () => {
        if (entry.granted) return; // aborting does not take a held lock back
        queue.splice(queue.indexOf(entry), 1);
        reject(new DOMException("aborted", "AbortError"));
      });
      queue.push(entry);
      if (queue.length === 1) this._grant(name);
    });
  }

  /** Release what a tab that went away held, as the browser does on unload. */
  drop(entry) {
    const queue = this.queues.get(entry.name);
    queue.splice(queue.indexOf(entry), 1);
    this._grant(entry.name);
  }

  _grant(name) {
    const queue = this.queues.get(name);
    const entry = queue[0];
    if (!entry || entry.granted) return;
    entry.granted = true;
    entry.name = name;
    this.holder = entry;
    Promise.resolve()
      .then(() => entry.callback({ name }))
      .then(entry.resolve, entry.reject)
      .finally(() => {
        if (queue.includes(entry)) this.drop(entry);
      });
  }
}

/** A Storage on a Map. */
export class FakeStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

/** One "tab": a platform of its own on a shared server, lock manager and localStorage. */
export function tab(server, { locks = null, local = new FakeStorage(), session = new FakeStorage() } = {}) {
  return {
    fetch: server.fetch,
    locks,
    BroadcastChannel: locks ? BroadcastChannel : null,
    localStorage: local,
    sessionStorage: session,
    baseUrl: "http://eventlog.test/app/page.html",
    random: () => 0.5,
  };
}
