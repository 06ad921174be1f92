"""A real browser's EventSource against a real ``eventlog serve``: reconnects and page reloads.

The design promises that a plain ``new EventSource(url)`` on a flaky network gets exactly what
it missed. These tests check that promise end to end, with Chromium's own reconnection logic
rather than our SSE decoder:

- a TCP proxy between the browser and the server cuts every connection (and for a while
  refuses new ones) while events are being published; the browser must reconnect by itself
  with ``Last-Event-ID`` and end up with every event exactly once, in order;
- a page that saves the last id in localStorage and reloads with ``?last_event_id=`` gets
  exactly the events after the saved id.

The page is served at the proxy's origin (Playwright fulfils ``/test-page`` there), so the
EventSource is same-origin and all of its traffic goes through the proxy. Events are published
straight to the server, so cutting the proxy never gets in the way of publishing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
from conftest import Server, wait_until
from helpers import publish

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

pytestmark = pytest.mark.browser

# The test page. It records every message (and any `reset`) with the lastEventId the browser
# reports, counts successful (re)connections, and saves the last id in localStorage so that a
# reload can resume with ?last_event_id=. The EventSource is plain: no library, no custom
# reconnection; everything after a cut is Chromium's own doing.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>eventlog browser test</title>
<script>
  const stream = new URLSearchParams(location.search).get("stream");
  const key = "eventlog-last-id:" + stream;
  const saved = localStorage.getItem(key);
  let url = "/streams/" + encodeURIComponent(stream) + "/events";
  if (saved !== null) url += "?last_event_id=" + encodeURIComponent(saved);
  window.received = [];
  window.opens = 0;
  function record(event) {
    window.received.push({id: event.lastEventId, type: event.type, data: event.data});
    localStorage.setItem(key, event.lastEventId);
  }
  window.source = new EventSource(url);
  window.source.onmessage = record;
  window.source.addEventListener("reset", record);
  window.source.onopen = () => { window.opens += 1; };
</script>
"""


@pytest.fixture
def page(browser: Browser, proxy: CuttableProxy) -> Iterator[Page]:
    """A page in a fresh context (empty localStorage) with the test page at the proxy's origin."""
    context = browser.new_context()

    def serve_page(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    # A regex, not a Python predicate: Playwright matches it in the browser's driver, so the
    # EventSource's own requests never wait for this (often busy) Python thread.
    context.route(re.compile(rf"^{re.escape(proxy.url)}/test-page(\?.*)?$"), serve_page)
    page = context.new_page()
    yield page
    context.close()


# --- helpers ----------------------------------------------------------------------------------

def open_page(page: Page, proxy: CuttableProxy, stream: str) -> None:
    """Load the test page for ``stream`` and wait until its EventSource is open.

    The server sends its first bytes only after it has registered the subscriber, and
    ``open`` fires on them: from then on no published event can be missed.
    """
    page.goto(f"{proxy.url}/test-page?stream={stream}")
    wait_for_page(page, "() => window.opens >= 1", "the EventSource to open")


def received(page: Page) -> list[dict[str, str]]:
    """What the page's EventSource has dispatched so far: id, type and data of each."""
    result: list[dict[str, str]] = page.evaluate("window.received")
    return result


def wait_for_count(page: Page, count: int) -> None:
    """Wait until the page has received at least ``count`` events."""
    wait_for_page(page, "n => window.received.length >= n", f"{count} events", count)


def wait_for_id(page: Page, event_id: int) -> None:
    """Wait until the page's last received event is ``event_id``."""
    wait_for_page(
        page,
        "id => window.received.length > 0 && window.received.at(-1).id === id",
        f"event {event_id}",
        str(event_id),
    )


def expected(events: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """Published events as the page should have recorded them: id, type ``message``, data."""
    return [(str(e["id"]), "message", e["data"]) for e in events]


def decoded(records: list[dict[str, str]]) -> list[tuple[str, str, Any]]:
    """Received records with their data parsed, so the comparison ignores JSON spacing."""
    return [(r["id"], r["type"], json.loads(r["data"])) for r in records]


# --- tests ------------------------------------------------------------------------------------

def test_eventsource_reconnects_after_cuts_and_gets_every_event_once(
    server: Server, proxy: CuttableProxy, page: Page
) -> None:
    """Cut the browser's connection (during an outage and during publishing): every event
    arrives exactly once, in order, through Chromium's own reconnection with Last-Event-ID."""
    stream = "browser-cuts"
    events_path = f"/streams/{stream}/events"
    open_page(page, proxy, stream)

    # Live delivery over the first connection.
    published = [publish(server.url, stream, {"n": n}) for n in range(5)]
    wait_for_count(page, 5)

    # An outage: the connection drops and reconnections fail while events are published.
    cut = proxy.cut(refuse=True)
    assert [r.path for r in cut].count(events_path) == 1, "the cut must hit the browser's stream"
    published += [publish(server.url, stream, {"n": n}) for n in range(5, 10)]
    # Chromium keeps retrying (every `retry:` ms) through failed attempts, not just once.
    wait_until(lambda: proxy.refused >= 2, timeout=WAIT_MS / 1000)
    # Nothing got through: events 5-9 can only reach the page by replay after it reconnects.
    assert len(received(page)) == 5
    proxy.resume()
    wait_for_count(page, 10)

    # Two more cuts while a publisher keeps going; each after live delivery has resumed.
    cuts = 1
    publisher = Publisher(server.url, stream, first=10)
    try:
        for _ in range(2):
            wait_for_count(page, len(received(page)) + 3)
            assert [r.path for r in proxy.cut()].count(events_path) == 1
            cuts += 1
        wait_for_count(page, len(received(page)) + 3)
    finally:
        published += publisher.stop()

    # A last event after everything: once it has arrived, any duplicate or gap would be in
    # the list before it (one stream, in order), so the comparison below sees it.
    published.append(publish(server.url, stream, {"n": "last"}))
    wait_for_id(page, published[-1]["id"])

    ids = [e["id"] for e in published]
    assert ids == list(range(1, len(ids) + 1)), "the server's ids must be gap-free"
    assert decoded(received(page)) == expected(published)

    # How the browser got there: one request per connection, the first without a resume
    # point, each reconnection with the last id it had when its connection was cut.
    requests = [r for r in proxy.requests if r.path == events_path]
    assert len(requests) == 1 + cuts
    assert requests[0].last_event_id is None
    assert requests[1].last_event_id == str(published[4]["id"])  # the outage's resume point
    resumed = [int(r.last_event_id or "0") for r in requests[1:]]
    assert resumed == sorted(set(resumed)) and set(resumed) <= set(ids)
    assert page.evaluate("window.opens") == 1 + cuts
    # The server let go of every cut connection: only the live one is still subscribed.
    wait_for_subscribers(server, 1)


def test_reloaded_page_resumes_after_the_saved_id(
    server: Server, proxy: CuttableProxy, page: Page
) -> None:
    """A reload resumes with ?last_event_id= from localStorage: exactly the events after it."""
    stream = "browser-reload"
    open_page(page, proxy, stream)
    seen = [publish(server.url, stream, {"n": n}) for n in range(3)]
    wait_for_count(page, 3)
    assert decoded(received(page)) == expected(seen)
    saved = page.evaluate(f"localStorage.getItem('eventlog-last-id:{stream}')")
    assert saved == str(seen[-1]["id"])

    # Events published while no page listens (as between a page going away and its reload
    # connecting) can only reach the reloaded page through the saved resume point.
    page.evaluate("window.source.close()")
    missed = [publish(server.url, stream, {"n": n}) for n in range(3, 6)]

    page.reload()
    wait_for_page(page, "() => window.opens >= 1", "the reloaded page's EventSource to open")
    later = [publish(server.url, stream, {"n": n}) for n in range(6, 8)]
    wait_for_id(page, later[-1]["id"])
    # None of the events before the saved id, none twice, none missing.
    assert decoded(received(page)) == expected(missed + later)

    # The reloaded page's EventSource is new: its resume point came from the URL, not a header.
    requests = [r for r in proxy.requests if r.path == f"/streams/{stream}/events"]
    assert [r.target.partition("?")[2] for r in requests] == ["", f"last_event_id={saved}"]
    assert [r.last_event_id for r in requests] == [None, None]
    # The old page's connection was released when it went away.
    wait_for_subscribers(server, 1)
