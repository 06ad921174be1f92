/**
 * eventlog.js: the browser client of an eventlog server. No dependencies, no build step.
 *
 *     const sub = eventlog.subscribe(["orders", "user.42.inbox"], (event) => {
 *       // event: {id, stream, type, data, time}, data already parsed; once each, in id order
 *     }, {onReset, onError, token, key, url});
 *     sub.close();
 *
 * What it adds to a plain EventSource:
 * - it resumes after a page reload from this page's last event, whatever its type (the
 *   position is kept in sessionStorage for this tab and in localStorage for new tabs);
 * - it keeps reconnecting, with capped exponential backoff and jitter, where EventSource gives
 *   up for good (any non-200 answer, such as a proxy's 502 during a deploy);
 * - a 401/403 is reported to `onError`, and with a `token` function it retries with a fresh
 *   token (sent as `?access_token=`);
 * - all tabs of an origin that subscribe to the same streams share one connection: the tab
 *   holding a Web Lock named after the key reads the stream and hands each event to the others
 *   over a BroadcastChannel; when it closes, the next tab in the lock's queue takes over from
 *   its own last id.
 * Every tab delivers each event once, in id order: an event is delivered only if its id is
 * above the tab's last delivered id.
 *
 * It reads the stream with fetch() and a ReadableStream rather than EventSource, since it must
 * see the status of every answer; `SSEParser` follows the WHATWG rules for the wire format.
 *
 * Module format: this file is one strict-mode classic script that sets `globalThis.eventlog`,
 * so `<script src="/eventlog.js">` defines `window.eventlog` and `import "/eventlog.js"` works
 * too. The server also serves these same bytes as `/eventlog.mjs` with an export footer, for
 * `import {subscribe} from "/eventlog.mjs"`: one source, no build step, both styles.
 */
(function (global) {
  "use strict";

  const DEFAULT_RETRY_MS = 1000; // until the server's `retry:` says otherwise
  const DEFAULT_MAX_RETRY_MS = 30000;
  // The server sends a heartbeat every 15 s by default; three missed ones mean a dead link
  // (a half-open TCP connection never errors by itself).
  const DEFAULT_IDLE_TIMEOUT_MS = 45000;
  const CATCH_UP_PAGE = 1000; // the audit API's largest page
  const RESET_TYPE = "reset"; // reserved for the server: the resume point could not be served

  /**
   * An incremental reader of the text/event-stream format (WHATWG HTML, "Server-sent events").
   * Feed it decoded text in chunks of any size; it calls `onMessage({type, data, lastEventId})`
   * for each dispatched event and `onRetry(ms)` for each valid `retry:` field.
   */
  class SSEParser {
    constructor(onMessage, onRetry = () => {}) {
      this.onMessage = onMessage;
      this.onRetry = onRetry;
      this.lastEventId = ""; // the source's last event ID: persists across events
      this.reset();
    }

    /** Forget a half-received line or event (a new connection starts clean); keep the id. */
    reset() {
      this._line = "";
      this._afterCR = false;
      this._data = "";
      this._type = "";
      this._idBuffer = this.lastEventId;
    }

    /** Take the next piece of the stream. */
    feed(text) {
      let start = 0;
      if (this._afterCR && text.length > 0) {
        // A CR ended the previous chunk: an LF starting this one belongs to the same line end.
        if (text.charCodeAt(0) === 10) start = 1;
        this._afterCR = false;
      }
      for (let i = start; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c !== 10 && c !== 13) continue;
        this._field(this._line + text.slice(start, i));
        this._line = "";
        if (c === 13) {
          if (i + 1 === text.length) this._afterCR = true;
          else if (text.charCodeAt(i + 1) === 10) i++;
        }
        start = i + 1;
      }
      this._line += text.slice(start);
    }

    _field(line) {
      if (line === "") return this._dispatch();
      if (line.charCodeAt(0) === 58) return; // ":" starts a comment
      const colon = line.indexOf(":");
      const name = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1); // one space only
      if (name === "data") this._data += value + "\n";
      else if (name === "event") this._type = value;
      else if (name === "id" && !value.includes("\0")) this._idBuffer = value;
      else if (name === "retry" && /^[0-9]+$/.test(value)) this.onRetry(Number(value));
    }

    _dispatch() {
      this.lastEventId = this._idBuffer;
      const data = this._data;
      const type = this._type || "message";
      this._data = "";
      this._type = "";
      if (data === "") return;
      this.onMessage({ type, data: data.slice(0, -1), lastEventId: this.lastEventId });
    }
  }

  /**
   * The wait before reconnection attempt `attempt` (0 for the first after a failure):
   * `base` doubled per attempt, capped at `max`, then "equal jitter" (a random point in the
   * upper half), so that clients cut off together do not come back together.
   */
  function backoffDelay(attempt, base, max, random = Math.random) {
    const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
    return ceiling / 2 + (random() * ceiling) / 2;
  }

  /** The events URL of `streams` (sorted, without repeats) on the server at `baseUrl`. */
  function eventsUrl(baseUrl, streams) {
    const url = new URL("events", baseUrl.endsWith("/") ? baseUrl : baseUrl + "/");
    for (const stream of [...new Set(streams)].sort()) url.searchParams.append("stream", stream);
    return url.href;
  }

  /**
   * What a 404 from the stream URL means, in words a person can act on: the client is not
   * asking an eventlog server (most often the page's own origin, while eventlog runs on
   * another or under a prefix). Still retried: a proxy may answer 404 during a deploy.
   */
  function notFound(url) {
    const where = url.split("?")[0];
    return new Error(
      `eventlog: ${where} answered 404 Not Found, so no eventlog server is there. If eventlog ` +
      "runs on another origin or under a prefix, pass its base URL as the url option: " +
      'eventlog.subscribe(streams, onEvent, {url: "https://events.example.com/"}).',
    );
  }

  /** `url` with `params` added to its query. */
  function withParams(url, params) {
    const result = new URL(url);
    for (const [name, value] of Object.entries(params)) result.searchParams.append(name, String(value));
    return result.href;
  }

  /**
   * The storage key (and lock and channel name) of a subscription: the events URL it reads,
   * so the same streams on the same server share a position and a connection, and nothing else.
   */
  function storageKey(baseUrl, streams) {
    return "eventlog:" + eventsUrl(baseUrl, streams);
  }

  /**
   * Where a subscription keeps its position. This tab's own position (sessionStorage, which a
   * reload keeps) wins: other tabs may have moved the shared one (localStorage) on while this
   * one reloaded. A new tab starts from the shared one.
   */
  function positionStore(key, local, session) {
    function read(storage) {
      const value = storage && storage.getItem(key);
      return value !== null && value !== undefined && /^[0-9]{1,19}$/.test(value) ? Number(value) : null;
    }
    return {
      load() {
        const own = read(session);
        return own !== null ? own : read(local);
      },
      save(id) {
        for (const storage of [session, local]) {
          try {
            if (storage) storage.setItem(key, String(id));
          } catch (error) {
            // A full or disabled storage costs the resume point after a reload, nothing else.
          }
        }
      },
    };
  }

  /** Stored event `{id, stream, type, data, time}` from a frame of `GET /events`. */
  function envelope(message) {
    const event = JSON.parse(message.data);
    if (event === null || typeof event !== "object" || !Number.isSafeInteger(event.id)) {
      throw new TypeError("an event frame without a stored event: " + message.data.slice(0, 80));
    }
    return event;
  }

  /** `{requested, oldest, head}` of a reset frame, bare or wrapped like a stored event. */
  function resetInfo(message) {
    const body = JSON.parse(message.data);
    return body && typeof body === "object" && "requested" in body ? body : body.data;
  }

  function report(error) {
    if (typeof global.reportError === "function") global.reportError(error);
    else console.error(error);
  }

  function storageOf(name) {
    try {
      return global[name] || null;
    } catch (error) {
      return null; // a sandboxed frame may refuse even to hand it out
    }
  }

  /** What a subscription uses of the browser, in one place so tests can hand in their own. */
  function browserPlatform() {
    const navigator = global.navigator;
    return {
      fetch: (...args) => global.fetch(...args),
      locks: navigator && navigator.locks ? navigator.locks : null,
      BroadcastChannel: global.BroadcastChannel || null,
      localStorage: storageOf("localStorage"),
      sessionStorage: storageOf("sessionStorage"),
      baseUrl: global.location ? global.location.href : null,
      random: Math.random,
    };
  }

  /**
   * Subscribe to `streams` (an array of names and prefix patterns such as `user.42.*`; empty
   * for every stream) and call
   * `onEvent(event)` once per event, in id order, with `event = {id, stream, type, data, time}`.
   *
   * Options:
   * - `url`: the server's base URL, where its `/events` is (default: this page's origin), e.g.
   *   "https://events.example.com/" on another origin, or "/eventlog/" under an app's prefix;
   * - `key`: the storage key, lock and channel name (default: derived from the events URL);
   * - `token()`: returns the access token (or a Promise of it) for `?access_token=`; called
   *   before every connection attempt, so again after a 401/403;
   * - `onError({status, error, retrying})`: a failed attempt (status null if none came back;
   *   on a 404, `error.message` says the URL is not an eventlog server's and how to fix it;
   *   without onError, that 404 is told once on the console);
   * - `onReset({requested, oldest, head})`: the server could not resume from this position
   *   and goes on from `head` (default: console.warn);
   * - `retry`, `maxRetry`: the first and the largest reconnection delay in ms (the server's
   *   `retry:` replaces `retry`); `idleTimeout`: ms without a byte before the link counts as dead;
   * - `share: false`: one connection for this tab alone, even where tabs could share.
   *
   * Returns `{close(), key, leader, lastEventId}`: `leader` is whether this tab holds the
   * connection, `lastEventId` the id of the last event it delivered (or null).
   */
  function subscribe(streams, onEvent, options = {}) {
    return connect(streams, onEvent, options, browserPlatform());
  }

  /** `subscribe` on a given platform (see browserPlatform). */
  function connect(streams, onEvent, options, platform) {
    if (!Array.isArray(streams)) throw new TypeError("streams must be an array of stream names");
    if (typeof onEvent !== "function") throw new TypeError("onEvent must be a function");
    const baseUrl = new URL(options.url || "/", platform.baseUrl || undefined).href;
    const key = options.key || storageKey(baseUrl, streams);
    const positions = positionStore(key, platform.localStorage, platform.sessionStorage);
    const stopped = new AbortController();
    const state = {
      url: eventsUrl(baseUrl, streams),
      lastId: positions.load(), // the last id delivered in this tab (or the reset's id)
      retry: options.retry || DEFAULT_RETRY_MS,
      leader: false,
      pending: Promise.resolve(), // deliveries run one after another, in arrival order
    };
    const onReset = options.onReset || ((info) => console.warn("eventlog: stream reset", info));
    let warned = false;
    // Without an onError of the app's, a wrong URL is still told once, on the console.
    const onError = options.onError || (({ status, error }) => {
      if (status !== 404 || warned) return;
      warned = true;
      console.warn(error.message);
    });
    const canShare =
      options.share !== false && platform.locks && platform.BroadcastChannel;
    const channel = canShare ? new platform.BroadcastChannel(key) : null;

    /** Deliver `event` if it is new to this tab; true if it was. */
    function deliver(event) {
      if (state.lastId !== null && event.id <= state.lastId) return false;
      state.lastId = event.id;
      try {
        onEvent(event);
      } catch (error) {
        report(error); // the app's bug must not stop the stream, nor replay the event forever
      }
      positions.save(event.id);
      return true;
    }

    function applyReset(id, info) {
      // The server goes on from `id`, which may lie below everything delivered so far.
      state.lastId = id;
      positions.save(id);
      try {
        onReset(info);
      } catch (error) {
        report(error);
      }
    }

    function later(task) {
      state.pending = state.pending.then(task).catch(report);
      return state.pending;
    }

    function sleep(ms) {
      return new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        stopped.signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
      });
    }

    /**
     * fetch() with the access token: as `?access_token=` on the stream (where the server
     * looks for it, since EventSource cannot send headers), as a Bearer header elsewhere.
     */
    async function authorized(url, headers, { stream = false } = {}) {
      const token = options.token ? await options.token() : null;
      if (token && stream) url = withParams(url, { access_token: token });
      else if (token) headers.Authorization = "Bearer " + token;
      return platform.fetch(url, { headers, signal: stopped.signal, cache: "no-store" });
    }

    /** Deliver, from the audit API, every event after this tab's last id up to `target`. */
    async function catchUp(target) {
      let url = withParams(state.url, { after: state.lastId, limit: CATCH_UP_PAGE });
      for (let attempt = 0; url && state.lastId < target && !stopped.signal.aborted; ) {
        let page = null;
        try {
          const response = await authorized(url, { Accept: "application/json" });
          if (response.ok) page = await response.json();
          else onError({ status: response.status, error: null, retrying: true });
        } catch (error) {
          if (!stopped.signal.aborted) onError({ status: null, error, retrying: true });
        }
        if (page === null) {
          await sleep(backoffDelay(attempt++, state.retry, options.maxRetry || DEFAULT_MAX_RETRY_MS, platform.random));
          continue;
        }
        page.events.forEach(deliver);
        url = page.next;
        attempt = 0;
      }
    }

    /** Where a first connection without a resume point starts: the newest matching event. */
    async function newestId() {
      const url = withParams(state.url, { order: "desc", limit: 1 });
      const response = await authorized(url, { Accept: "application/json" });
      if (!response.ok) return null;
      const page = await response.json();
      return page.events.length ? page.events[0].id : 0;
    }

    /** Deliver one frame the server sent, and hand it to the other tabs. */
    function onFrame(message) {
      const id = Number(message.lastEventId);
      if (message.type === RESET_TYPE) {
        const info = resetInfo(message);
        applyReset(id, info);
        if (channel) channel.postMessage({ kind: "reset", id, info });
        return;
      }
      const prev = state.lastId;
      const event = envelope(message);
      if (deliver(event) && channel) channel.postMessage({ kind: "event", event, prev });
    }

    /** Read one connection to its end; returns the failed answer's status, or null. */
    async function readOnce(onHealthy) {
      const headers = { Accept: "text/event-stream" };
      if (state.lastId !== null) headers["Last-Event-ID"] = String(state.lastId);
      const response = await authorized(state.url, headers, { stream: true });
      const type = response.headers.get("Content-Type") || "";
      if (response.status !== 200 || !type.startsWith("text/event-stream") || !response.body) {
        if (response.body) response.body.cancel().catch(() => {});
        return response.status;
      }
      onHealthy();
      const parser = new SSEParser(
        (message) => {
          try {
            onFrame(message);
          } catch (error) {
            report(error); // one malformed frame is skipped, not read again and again
          }
        },
        (ms) => { state.retry = ms; },
      );
      const reader = response.body.getReader();
      const decoder = new TextDecoder(); // UTF-8; drops a leading BOM, as the spec wants
      const idleTimeout = options.idleTimeout || DEFAULT_IDLE_TIMEOUT_MS;
      let idle = null;
      try {
        for (;;) {
          clearTimeout(idle);
          idle = setTimeout(() => reader.cancel(new Error("no heartbeat")).catch(() => {}), idleTimeout);
          const { done, value } = await reader.read();
          if (done) return null;
          parser.feed(decoder.decode(value, { stream: true }));
        }
      } finally {
        clearTimeout(idle);
      }
    }

    /** The reading loop of the tab that holds the connection; returns when closed. */
    async function lead() {
      state.leader = true;
      await state.pending; // deliveries this tab had queued as a follower come first
      if (state.lastId === null) {
        try {
          state.lastId = await newestId();
        } catch (error) {
          // Then the first connection starts at the server's newest event, as EventSource does.
        }
      }
      const maxRetry = options.maxRetry || DEFAULT_MAX_RETRY_MS;
      let attempt = 0;
      while (!stopped.signal.aborted) {
        let status = null;
        let error = null;
        try {
          status = await readOnce(() => { attempt = 0; });
        } catch (failure) {
          error = failure;
        }
        if (stopped.signal.aborted) return;
        if (status === null && error === null) {
          attempt = 0; // the server ended a healthy stream: come back after `retry`
        }
        if (status === 404) error = notFound(state.url);
        // 400 is the server's "this request can never succeed"; 401/403 only can with a new token.
        const final = status === 400 || ((status === 401 || status === 403) && !options.token);
        if (status !== null || error !== null) onError({ status, error, retrying: !final });
        if (final) return close();
        await sleep(backoffDelay(attempt++, state.retry, maxRetry, platform.random));
      }
    }

    function onMessage({ data: message }) {
      if (message.kind === "hello") {
        if (state.leader) channel.postMessage({ kind: "position", id: state.lastId });
      } else if (state.leader) {
        return; // a leader that is leaving still posts; this tab reads the server itself
      } else if (message.kind === "position") {
        later(async () => {
          if (message.id === null) return;
          if (state.lastId === null) state.lastId = message.id; // a new tab starts where the others are
          else if (message.id > state.lastId) await catchUp(message.id);
        });
      } else if (message.kind === "event") {
        later(async () => {
          // The leader had delivered up to `prev` before this event: anything of that this
          // tab lacks (it joined late, or came back from a reload) comes from the audit API.
          if (state.lastId !== null && message.prev !== null && message.prev > state.lastId) {
            await catchUp(message.prev);
          }
          deliver(message.event);
        });
      } else if (message.kind === "reset") {
        later(() => applyReset(message.id, message.info));
      }
    }

    function close() {
      if (stopped.signal.aborted) return;
      stopped.abort();
      if (channel) channel.close();
    }

    if (channel) {
      channel.onmessage = onMessage;
      channel.postMessage({ kind: "hello" });
      // The lock is held for as long as `lead` runs; the browser frees it when the tab goes,
      // and hands it to the next tab waiting for it.
      platform.locks
        .request("eventlog:" + key, { signal: stopped.signal }, () => (stopped.signal.aborted ? null : lead()))
        .catch((error) => { if (!stopped.signal.aborted) report(error); });
    } else {
      lead().catch(report);
    }

    return {
      key,
      close,
      get leader() { return state.leader && !stopped.signal.aborted; },
      get lastEventId() { return state.lastId; },
    };
  }

  global.eventlog = {
    subscribe,
    SSEParser,
    // Not part of the API: exposed for the client's unit tests.
    internals: { connect, backoffDelay, storageKey, eventsUrl, positionStore },
  };
})(globalThis);
