/**
 * The eventlog console: watch streams live (through eventlog.js), browse the log with the
 * audit API's keyset pages, publish events. Plain DOM, no library, no build step.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 500; // the live list keeps the newest rows only, so a busy stream stays cheap
const CHART_SECONDS = 60;
const COLOURS = ["#2f6fde", "#e67e22", "#1e8e5a", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
// The API sits beside the page (/console, or /eventlog/console in an app that embeds eventlog).
const API = new URL(".", location.href).href;

/** The token field's value, or null. */
function token() {
  return $("token").value.trim() || null;
}

/** fetch() with the token as a Bearer header; returns the parsed JSON body or throws. */
async function api(url, init = {}) {
  const headers = { Accept: "application/json", ...(init.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(url, { ...init, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && (body.detail || body.title)) || response.statusText);
  return body;
}

function setStatus(element, text, kind = "") {
  element.textContent = text;
  element.className = "status " + kind;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- live ----------------------------------------------------------------------------------

const live = { sub: null, paused: false, held: [], counts: new Map() };

/** One row of the live list: a summary line that expands to the event's JSON. */
function eventRow(event) {
  const row = element("li");
  row.dataset.type = event.type;
  row.dataset.id = String(event.id);
  const details = element("details");
  const summary = element("summary");
  summary.append(
    element("span", "id", "#" + event.id),
    element("span", "stream", event.stream),
    element("span", "type", event.type),
    element("span", "time", event.time),
  );
  details.append(summary, element("pre", "", JSON.stringify(event, null, 2)));
  row.append(details);
  applyFilter(row);
  return row;
}

function applyFilter(row) {
  const wanted = $("type-filter").value.trim();
  row.classList.toggle("hidden", wanted !== "" && row.dataset.type !== wanted);
}

function show(events) {
  const list = $("events");
  for (const event of events) list.prepend(eventRow(event));
  while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
}

function onEvent(event) {
  countForChart(event.stream);
  if (live.paused) {
    live.held.push(event);
    $("pause").textContent = `Resume (${live.held.length} new)`;
  } else {
    show([event]);
  }
}

function watch(streams) {
  if (live.sub) live.sub.close();
  $("events").replaceChildren();
  live.counts.clear();
  live.sub = eventlog.subscribe(streams, onEvent, {
    url: API,
    token: () => token(),
    onError: (error) => setStatus($("status"), `connection failed (${error.status ?? "network"}), ${error.retrying ? "retrying" : "stopped"}`, "bad"),
    onReset: (info) => setStatus($("status"), `the server reset the position to ${info.head}`, "bad"),
  });
  live.sub.streams = streams;
  $("pause").disabled = false;
  setStatus($("status"), "watching " + (streams.length ? streams.join(", ") : "all streams"), "good");
}

$("watch").addEventListener("submit", (e) => {
  e.preventDefault();
  watch($("streams").value.split(/[\s,]+/).filter(Boolean));
});

$("pause").addEventListener("click", () => {
  live.paused = !live.paused;
  if (!live.paused) {
    show(live.held);
    live.held = [];
  }
  $("pause").textContent = live.paused ? "Resume" : "Pause";
});

$("type-filter").addEventListener("input", () => {
  for (const row of $("events").children) applyFilter(row);
});

// --- the rate chart: events per second per stream, last minute -------------------------------

function countForChart(stream) {
  if (!live.counts.has(stream)) live.counts.set(stream, new Array(CHART_SECONDS).fill(0));
  const series = live.counts.get(stream);
  series[series.length - 1] += 1;
}

function drawChart() {
  const svg = $("chart");
  const all = [...live.counts.entries()];
  const peak = Math.max(1, ...all.flatMap(([, series]) => series));
  const step = 600 / (CHART_SECONDS - 1);
  svg.replaceChildren();
  $("legend").replaceChildren();
  all.forEach(([stream, series], i) => {
    const colour = COLOURS[i % COLOURS.length];
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", series.map((n, x) => `${(x * step).toFixed(1)},${(78 - (n / peak) * 74).toFixed(1)}`).join(" "));
    line.setAttribute("stroke", colour);
    svg.append(line);
    const key = element("span", "", `${stream} ${series[series.length - 2] ?? 0}/s`);
    const swatch = element("i");
    swatch.style.background = colour;
    key.prepend(swatch);
    $("legend").append(key);
  });
  if (!all.length) $("legend").textContent = "events per second appear here";
}

setInterval(() => {
  // Each second the window moves on by one slot; the last slot counts the current second.
  for (const series of live.counts.values()) {
    series.shift();
    series.push(0);
  }
  drawChart();
}, 1000);
drawChart();

// --- the audit browser -------------------------------------------------------------------

const audit = { next: null };

function auditUrl(form) {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    for (const part of String(value).split(/[\s,]+/).filter(Boolean)) params.append(name, part);
  }
  return API + "events?" + params;
}

async function loadPage(url) {
  setStatus($("audit-status"), "loading…");
  try {
    const page = await api(url);
    const rows = page.events.map((event) => {
      const row = element("tr");
      row.dataset.id = String(event.id);
      row.append(
        element("td", "", String(event.id)), element("td", "", event.stream),
        element("td", "", event.type), element("td", "", event.time),
        element("td", "data", JSON.stringify(event.data)),
      );
      row.lastChild.title = JSON.stringify(event.data, null, 2);
      return row;
    });
    $("audit-rows").replaceChildren(...rows);
    audit.next = page.next;
    $("audit-next").hidden = !page.next;
    const span = rows.length ? `ids ${page.events[0].id}–${page.events.at(-1).id}` : "no events";
    setStatus($("audit-status"), `${rows.length} events, ${span}${page.next ? "" : " (last page)"}`);
  } catch (error) {
    setStatus($("audit-status"), error.message, "bad");
  }
}

$("audit-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadPage(auditUrl(e.target));
});
$("audit-next").addEventListener("click", () => audit.next && loadPage(audit.next));

// --- publish -------------------------------------------------------------------------------

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  let data;
  try {
    data = JSON.parse(form.get("data"));
  } catch (error) {
    return setStatus($("publish-status"), "data is not JSON: " + error.message, "bad");
  }
  const body = { data };
  if (form.get("type").trim()) body.type = form.get("type").trim();
  const stream = encodeURIComponent(form.get("stream").trim());
  try {
    const stored = await api(`${API}streams/${stream}/events`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    setStatus($("publish-status"), `stored as #${stored.id} at ${stored.time}`, "good");
  } catch (error) {
    setStatus($("publish-status"), error.message, "bad");
  }
});
