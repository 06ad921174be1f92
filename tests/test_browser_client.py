"""eventlog.js in real Chromium against a real ``eventlog serve``.

The test page (fulfilled by Playwright at the proxy's origin) loads ``/eventlog.js`` through
the proxy, subscribes to the streams in its URL and records every delivered event in
``window.received``, and also in sessionStorage, so that the record survives reloads.
Events are published straight to the server, never through the proxy.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from browser_harness import (  # noqa: F401 (browser, server and proxy are fixtures)
    WAIT_MS,
    CuttableProxy,
    Publisher,
    browser,
    proxy,
    server,
    wait_for_page,
    wait_for_subscribers,
)
from conftest import Server
from flask import Flask
from helpers import publish, wait_until
from werkzeug.serving import make_server

import eventlog
from eventlog import EventLog

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("EVENTLOG_TEST_ARTIFACTS", ROOT / "test-artifacts"))
OUTAGE = 5.0  # seconds of 502s, then refused connections
TYPES = (None, "created", "never.listened.for", "paid")  # the page names none of them

CLIENT_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>eventlog.js test</title>
<script src="/eventlog.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  window.received = JSON.parse(sessionStorage.getItem("test-record") || "[]");
  window.errors = [];
  window.sub = eventlog.subscribe(params.getAll("stream"), (event) => {
    window.received.push({id: event.id, stream: event.stream, type: event.type, data: event.data});
    sessionStorage.setItem("test-record", JSON.stringify(window.received));
  }, {maxRetry: 1000, onError: (error) => window.errors.push(error.status)});
</script>
"""

EVENTSOURCE_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>plain EventSource</title>
<script>
  window.received = [];
  window.source = new EventSource("/events?stream=" + new URLSearchParams(location.search).get("stream"));
  window.source.onmessage = (event) => window.received.push(JSON.parse(event.data).id);
</script>
"""


@pytest.fixture
def context(browser: Browser, proxy: CuttableProxy) -> Iterator[BrowserContext]:
    """A fresh browser context with the test pages at the proxy's origin."""
    context = browser.new_context()
    pages = {"client-page": CLIENT_PAGE, "eventsource-page": EVENTSOURCE_PAGE}

    def serve(route: Route) -> None:
        name = route.request.url.split("?")[0].rsplit("/", 1)[-1]
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=pages[name])

    # A regex, not a Python predicate: matched in the driver, so the page's own requests never
    # wait for this thread.
    context.route(re.compile(rf"^{re.escape(proxy.url)}/(client|eventsource)-page(\?.*)?$"), serve)
    yield context
    context.close()


def open_client(context: BrowserContext, proxy: CuttableProxy, *streams: str) -> Page:
    page = context.new_page()
    query = "&".join(f"stream={s}" for s in streams)
    page.goto(f"{proxy.url}/client-page?{query}")
    return page


def received(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = page.evaluate("window.received")
    return result


def wait_for_event(page: Page, event_id: int) -> None:
    """Wait until the page has delivered event ``event_id`` (or a later one)."""
    wait_for_page(
        page, "id => window.received.length > 0 && window.received.at(-1).id >= id",
        f"event {event_id}", event_id,
    )


def wait_for_more(page: Page, count: int) -> None:
    """Wait until the page has delivered ``count`` more events than now."""
    target = len(received(page)) + count
    wait_for_page(page, "n => window.received.length >= n", f"{target} events", target)


def as_delivered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored events as the page records them."""
    return [{k: e[k] for k in ("id", "stream", "type", "data")} for e in events]


def test_reloads_in_a_burst_deliver_every_event_once_in_order(
    server: Server, proxy: CuttableProxy, context: BrowserContext
) -> None:
    """Three reloads in the middle of a burst of events of types the page never names: the
    page's record holds every event once, in order (position kept whatever the type)."""
    stream = "client-reload"
    page = open_client(context, proxy, stream)
    wait_for_subscribers(server, 1)
    publisher = Publisher(server.url, stream, first=0, types=TYPES)
    try:
        for _ in range(3):
            wait_for_more(page, 5)
            page.reload()
            wait_for_page(page, "() => window.sub !== undefined", "the reloaded page")
        wait_for_more(page, 5)
    finally:
        published = publisher.stop()
    published.append(publish(server.url, stream, {"n": "last"}, type="created"))
    wait_for_event(page, published[-1]["id"])
    assert len({e["type"] for e in published}) == len(TYPES)
    assert received(page) == as_delivered(published)
    wait_for_subscribers(server, 1)  # each page that went away let go of its connection


def test_recovers_from_502s_and_refusals_where_eventsource_gives_up(
    server: Server, proxy: CuttableProxy, context: BrowserContext
) -> None:
    """For five seconds the proxy answers 502, then refuses connections, while events are
    published. eventlog.js comes back by itself and misses nothing; a plain EventSource on the
    same proxy gives up at the first 502 (so the proxy really bites)."""
    stream = "client-502"
    page = open_client(context, proxy, stream)
    plain = context.new_page()
    plain.goto(f"{proxy.url}/eventsource-page?stream={stream}")
    wait_for_subscribers(server, 2)
    published = [publish(server.url, stream, {"n": n}) for n in range(3)]
    wait_for_event(page, published[-1]["id"])
    wait_for_page(plain, "n => window.received.length === n", "the EventSource's events", 3)

    proxy.bad_gateway()
    published += [publish(server.url, stream, {"n": n}) for n in range(3, 6)]
    time.sleep(OUTAGE / 2)
    # Both pages met a 502, and eventlog.js came back for more.
    assert proxy.bad_gateways >= 3
    proxy.cut(refuse=True)
    published += [publish(server.url, stream, {"n": n}) for n in range(6, 9)]
    time.sleep(OUTAGE / 2)
    assert proxy.refused >= 1
    proxy.resume()
    published += [publish(server.url, stream, {"n": n}) for n in range(9, 12)]

    wait_for_event(page, published[-1]["id"])
    assert received(page) == as_delivered(published)
    assert 502 in page.evaluate("window.errors")
    # EventSource: closed for good (readyState 2) after the 502, with only the first events.
    assert plain.evaluate("window.source.readyState") == 2
    assert plain.evaluate("window.received") == [e["id"] for e in published[:3]]
    wait_for_subscribers(server, 1)


def test_twelve_tabs_share_one_connection_and_survive_the_leader_closing(
    server: Server, proxy: CuttableProxy, context: BrowserContext
) -> None:
    """Twelve tabs on the same streams hold one server connection; closing the leader tab
    mid-burst hands it to another, and every remaining tab gets every event once, in order."""
    stream = "client-tabs"
    tabs = [open_client(context, proxy, stream) for _ in range(12)]
    for tab in tabs:
        wait_for_page(tab, "() => window.sub !== undefined", "the tab's subscription")
    first = publish(server.url, stream, {"n": "first"})
    for tab in tabs:
        wait_for_event(tab, first["id"])
    assert httpx.get(f"{server.url}/healthz", timeout=5).json()["subscribers"] == 1
    leaders = [tab for tab in tabs if tab.evaluate("window.sub.leader")]
    assert len(leaders) == 1

    publisher = Publisher(server.url, stream, first=0)
    try:
        wait_for_more(tabs[-1], 5)
        leaders[0].close()
        tabs.remove(leaders[0])
        wait_for_more(tabs[-1], 5)
    finally:
        published = [first, *publisher.stop()]
    published.append(publish(server.url, stream, {"n": "last"}))
    for tab in tabs:
        wait_for_event(tab, published[-1]["id"])
        assert received(tab) == as_delivered(published)
    assert sum(tab.evaluate("window.sub.leader") for tab in tabs) == 1
    wait_for_subscribers(server, 1)


def test_each_event_carries_its_stream_in_every_tab(
    server: Server, proxy: CuttableProxy, context: BrowserContext
) -> None:
    """Two tabs on three streams (one shared connection): each event arrives with its stream."""
    streams = ["client-a", "client-b", "client-c"]
    tabs = [open_client(context, proxy, *streams), open_client(context, proxy, *reversed(streams))]
    for tab in tabs:
        wait_for_page(tab, "() => window.sub !== undefined", "the tab's subscription")
    wait_for_subscribers(server, 1)  # the order of the streams does not matter
    published = [publish(server.url, streams[n % 3], {"n": n}, type=TYPES[n % 4]) for n in range(9)]
    publish(server.url, "client-other", {"n": "not subscribed"})
    published.append(publish(server.url, streams[0], {"n": "last"}))
    for tab in tabs:
        wait_for_event(tab, published[-1]["id"])
        assert received(tab) == as_delivered(published)
        assert {e["stream"] for e in received(tab)} == set(streams)


def test_a_pattern_subscription_shared_by_tabs_survives_a_reload(
    server: Server, proxy: CuttableProxy, context: BrowserContext
) -> None:
    """Two tabs on ``client.pat.*`` (and a name it covers) share one connection; one reloads
    between publishes and catches up through the audit query with the same pattern. Each
    gets the matching events once, in order, never client.pat0 or the bare client.pat."""
    streams = ["client.pat.*", "client.pat.x"]
    tabs = [open_client(context, proxy, *streams) for _ in range(2)]
    for tab in tabs:
        wait_for_page(tab, "() => window.sub !== undefined", "the tab's subscription")
    wait_for_subscribers(server, 1)
    targets = ["client.pat.x", "client.pat.y.z", "client.pat0", "client.pat", "client.pat.q"]
    published = [publish(server.url, targets[n % 5], {"n": n}) for n in range(10)]
    for tab in tabs:
        wait_for_event(tab, published[-2]["id"])  # the last is client.pat: never delivered
    tabs[1].reload()
    wait_for_page(tabs[1], "() => window.sub !== undefined", "the reloaded tab's subscription")
    published += [publish(server.url, targets[n % 5], {"n": n}) for n in range(10, 20)]
    wanted = [e for e in published if e["stream"].startswith("client.pat.")]
    for tab in tabs:
        wait_for_event(tab, wanted[-1]["id"])
        assert received(tab) == as_delivered(wanted)


def test_console_shows_live_events_pages_the_log_and_publishes(
    server: Server, browser: Browser
) -> None:
    """The console: live events appear, the audit browser pages through 2,500 events showing
    each once, and its publish form stores an event. Screenshots go to EVENTLOG_TEST_ARTIFACTS."""
    stream = "console"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{server.url}/console")
        page.fill("#streams", f"{stream} console-other")
        page.click("#watch button[type=submit]")
        wait_for_subscribers(server, 1)
        live = publish(server.url, stream, {"hello": "live"}, type="created")
        page.wait_for_selector(f'#events li[data-id="{live["id"]}"]', timeout=WAIT_MS)

        # 2,500 events in batches, then page through them 1,000 at a time.
        for start in range(0, 2500, 1000):
            batch = [{"type": TYPES[n % 4] or "message", "data": {"n": n}}
                     for n in range(start, min(start + 1000, 2500))]
            response = httpx.post(f"{server.url}/streams/{stream}/events", json=batch, timeout=30)
            assert response.status_code == 201, response.text
        stored = [live["id"], *range(live["id"] + 1, live["id"] + 2501)]
        page.fill("#audit-form input[name=stream]", stream)
        page.fill("#audit-form input[name=limit]", "1000")
        page.click("#audit-form button[type=submit]")
        shown: list[int] = []
        for _ in range(10):  # bounded: three pages expected
            page.wait_for_function("() => document.querySelector('#audit-status').textContent.includes('ids')", timeout=WAIT_MS)
            shown += [int(i) for i in page.eval_on_selector_all("#audit-rows tr", "rows => rows.map(r => r.dataset.id)")]
            if page.is_hidden("#audit-next"):
                break
            last = shown[-1]
            page.click("#audit-next")
            page.wait_for_function(
                "last => Number(document.querySelector('#audit-rows tr')?.dataset.id) > last",
                arg=last, timeout=WAIT_MS,
            )
        assert shown == stored

        # Publishing from the form: stored, then seen live; the type filter hides the others.
        page.fill("#publish-form input[name=stream]", stream)
        page.fill("#publish-form input[name=type]", "from.console")
        page.fill("#publish-form textarea[name=data]", '{"via": "form"}')
        page.click("#publish-form button[type=submit]")
        page.wait_for_selector('#events li[data-type="from.console"]', timeout=WAIT_MS)
        page.fill("#type-filter", "from.console")
        visible = page.eval_on_selector_all("#events li:not(.hidden)", "rows => rows.map(r => r.dataset.type)")
        assert visible == ["from.console"]
        page.fill("#type-filter", "")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.click("#events li summary")  # one expanded event in the picture
        page.screenshot(path=str(ARTIFACTS / "console-1280.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(ARTIFACTS / "console-390.png"), full_page=True)
        # Nothing wider than a phone's screen: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        context.close()


def test_the_console_works_under_a_host_apps_prefix(browser: Browser, tmp_path: Path) -> None:
    """A host app that registers eventlog's one blueprint under /eventlog: the console there
    loads its files, watches a stream live, publishes and browses, all under the prefix."""
    app = Flask("host")
    app.config["EVENTLOG_DATABASE_URL"] = f"sqlite:///{tmp_path / 'host.db'}"
    events = EventLog(app)
    app.register_blueprint(eventlog.blueprint, url_prefix="/eventlog")
    with app.app_context():
        events.upgrade()
    host = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{host.server_port}/eventlog"
    context = browser.new_context()
    try:
        page = context.new_page()
        failed: list[str] = []
        page.on("response", lambda response: response.status >= 400 and failed.append(response.url))
        page.goto(f"{base}/console")
        page.fill("#streams", "embedded")
        page.click("#watch button[type=submit]")
        page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('watching')")
        wait_until(lambda: httpx.get(f"{base}/healthz").json()["subscribers"] == 1)
        page.fill("#publish-form input[name=stream]", "embedded")
        page.fill("#publish-form textarea[name=data]", '{"via": "form"}')
        page.click("#publish-form button[type=submit]")
        page.wait_for_selector('#events li[data-id="1"]', timeout=WAIT_MS)
        page.fill("#audit-form input[name=stream]", "embedded")
        page.click("#audit-form button[type=submit]")
        page.wait_for_selector('#audit-rows tr[data-id="1"]', timeout=WAIT_MS)
        assert failed == []
    finally:
        context.close()
        host.shutdown()
        events.close()
