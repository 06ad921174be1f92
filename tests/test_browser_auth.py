"""Access control in real Chromium: a page on another origin streams with a cookie and with
``access_token``, and publishes through a CORS preflight; an origin off the allowlist gets
nothing, because the browser itself refuses the answer.

The page comes from a small HTTP server of the test's own at ``http://localhost:<page port>``
(a real loopback address: Chromium lets a page reach loopback only from loopback); the eventlog
server is ``http://localhost:<its port>``: another origin (the ports differ) on the same site,
so the cookie (SameSite=Lax, Chromium's default) goes along with ``withCredentials``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from auth_tokens import AUDIENCE, SECRET, claims, hs256
from browser_harness import browser, wait_for_page, wait_for_subscribers  # noqa: F401 (fixture)
from conftest import Server

from eventlog.database import make_engine
from eventlog.migrate import upgrade

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

STREAM = "user.42.inbox"

# mode=cookie: EventSource withCredentials; mode=query: ?access_token=. Then a publish by
# fetch() with Authorization and Idempotency-Key, which needs a preflight.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>eventlog cross-origin test</title>
<script>
  const params = new URLSearchParams(location.search);
  const server = params.get("server");
  let url = server + "/streams/STREAM/events";
  if (params.get("mode") === "query") url += "?access_token=" + encodeURIComponent(params.get("token"));
  window.received = [];
  window.opens = 0;
  window.errors = 0;
  window.source = new EventSource(url, {withCredentials: params.get("mode") === "cookie"});
  window.source.onmessage = (event) => window.received.push(JSON.parse(event.data));
  window.source.onopen = () => { window.opens += 1; };
  window.source.onerror = () => { window.errors += 1; };
  window.publish = async (token, data) => {
    const response = await fetch(server + "/streams/STREAM/events", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token,
                "Idempotency-Key": "k-" + data.n},
      body: JSON.stringify({data}),
    });
    return [response.status, await response.json()];
  };
</script>
""".replace("STREAM", STREAM)


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test's output quiet


def _page_origin() -> Iterator[str]:
    pages = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=pages.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{pages.server_address[1]}"
    pages.shutdown()
    pages.server_close()
    thread.join(timeout=5)


@pytest.fixture
def origin() -> Iterator[str]:
    """The page's origin, on the server's allowlist."""
    yield from _page_origin()


@pytest.fixture
def stranger() -> Iterator[str]:
    """Another page origin, not on the allowlist."""
    yield from _page_origin()


@pytest.fixture
def server(start_server: Callable[..., Server], tmp_path: Path, origin: str) -> Server:
    url = f"sqlite:///{tmp_path / 'eventlog.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return start_server(url, JWT_SECRET=SECRET, JWT_AUDIENCE=AUDIENCE, CORS_ORIGINS=origin, RETRY_MS=200, HEARTBEAT_SECONDS=0.5)


@pytest.fixture
def page_at(browser: Browser) -> Iterator[Callable[[str, str, Server, str, bool], Page]]:  # noqa: F811
    contexts = []

    def open_page(origin: str, mode: str, server: Server, token: str, cookie: bool) -> Page:
        context = browser.new_context()
        contexts.append(context)
        server_url = f"http://localhost:{server.port}"
        if cookie:
            context.add_cookies([{"name": "eventlog_token", "value": token, "url": server_url}])
        page = context.new_page()
        query = httpx.QueryParams({"server": server_url, "mode": mode, "token": "" if cookie else token})
        page.goto(f"{origin}/test-page?{query}")
        return page

    yield open_page
    for context in contexts:
        context.close()


def publish(server: Server, n: int) -> int:
    token = hs256(claims(publish=[STREAM]))
    response = httpx.post(f"{server.url}/streams/{STREAM}/events", json={"data": {"n": n}},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 201, response.text
    event_id: int = response.json()["id"]
    return event_id


def reader_token(**rights: list[str]) -> str:
    return hs256(claims(**rights))


@pytest.mark.parametrize("mode", ["cookie", "query"])
def test_another_origin_streams_and_publishes(
    server: Server, page_at: Callable[[str, str, Server, str, bool], Page], origin: str, mode: str
) -> None:
    token = reader_token(subscribe=["user.42.*"], publish=[STREAM])
    page = page_at(origin, mode, server, token, mode == "cookie")
    wait_for_page(page, "() => window.opens >= 1", "the EventSource to open")
    first = publish(server, 1)
    wait_for_page(page, "() => window.received.length >= 1", "the first event")
    assert page.evaluate("window.received") == [{"n": 1}]
    # A publish from the page: the preflight lets Authorization and Idempotency-Key through.
    status, stored = page.evaluate("(token) => window.publish(token, {n: 2})", token)
    assert status == 201 and stored["id"] == first + 1
    wait_for_page(page, "() => window.received.length >= 2", "the page's own event")
    assert page.evaluate("window.received") == [{"n": 1}, {"n": 2}]


def test_an_origin_off_the_allowlist_is_refused_by_the_browser(
    server: Server, page_at: Callable[[str, str, Server, str, bool], Page], stranger: str
) -> None:
    token = reader_token(subscribe=["user.42.*"], publish=[STREAM])
    page = page_at(stranger, "query", server, token, False)
    # The browser fails the stream for want of Access-Control-Allow-Origin, and gives up.
    wait_for_page(page, "() => window.errors >= 1 && window.source.readyState === 2",
                  "the EventSource to fail")
    publish(server, 1)
    fetched = page.evaluate(
        "(token) => window.publish(token, {n: 9}).then(() => 'answered', () => 'refused')", token
    )
    assert fetched == "refused"
    assert page.evaluate("window.received") == [] and page.evaluate("window.opens") == 0
    # The refused preflight stored nothing: only the event published above is in the log.
    audit = httpx.get(f"{server.url}/streams/{STREAM}/events",
                      headers={"Authorization": f"Bearer {reader_token(subscribe=['*'])}"})
    assert [e["data"] for e in audit.json()["events"]] == [{"n": 1}]
    wait_for_subscribers(server, 0)
