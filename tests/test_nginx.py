"""deploy/nginx-eventlog.conf in front of ``eventlog serve``, on Debian's real nginx: live
events pass at once (no buffering), and the audit query's ``next`` links work behind it."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, unavailable
from helpers import free_port, publish, sse_messages, wait_until

StartServer = Callable[..., Server]
SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx-eventlog.conf"
NGINX = "/usr/sbin/nginx"


def site_for(upstream_port: int, listen_port: int) -> str:
    """The shipped site, changed only in its two ports."""
    site = SITE.read_text()
    for shipped, ours in (("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
                          ("listen 80;", f"listen 127.0.0.1:{listen_port};")):
        assert site.count(shipped) == 1, shipped
        site = site.replace(shipped, ours)
    return site


@pytest.fixture
def proxied(postgres_url: str, start_server: StartServer, tmp_path: Path) -> Iterator[str]:
    """The base URL of nginx, with the shipped site, in front of a fresh ``eventlog serve``."""
    if shutil.which(NGINX) is None:
        unavailable("nginx is not installed (apt-get install nginx-light)")
    server = start_server(postgres_url, HEARTBEAT_SECONDS=0.5)
    port = free_port()
    (tmp_path / "site.conf").write_text(site_for(server.port, port))
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    gzip on;               # as on most hosts: the site must turn it off for streams
    gzip_types *;
    include {tmp_path}/site.conf;
}}
"""
    )
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200)
        yield base
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


def test_live_events_pass_through_nginx_unbuffered(proxied: str) -> None:
    """An event published after the stream is open arrives within a second, uncompressed."""
    arrived: dict[int, float] = {}
    opened = threading.Event()

    def read() -> None:
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
        with httpx.Client(timeout=httpx.Timeout(10, read=30)) as client:
            with client.stream("GET", f"{proxied}/streams/orders/events", headers=headers) as response:
                assert response.headers.get("content-encoding") is None
                for message in sse_messages(response, opened):
                    arrived[int(message.id)] = time.monotonic()
                    if len(arrived) == 3:
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10)
    for n in range(3):
        sent = time.monotonic()
        event_id = publish(proxied, "orders", {"n": n})["id"]
        wait_until(lambda: event_id in arrived, timeout=5)
        # Through a buffering proxy the frame would wait for 4 KiB or more to gather.
        assert arrived[event_id] - sent < 1
    reader.join(timeout=5)


def test_next_links_work_behind_nginx(proxied: str) -> None:
    ids = [publish(proxied, "audit", n)["id"] for n in range(5)]
    seen: list[int] = []
    url: str | None = f"{proxied}/events?stream=audit&limit=2"
    while url is not None:
        page = httpx.get(url, timeout=5).json()
        seen += [e["id"] for e in page["events"]]
        # Relative (path and query): resolved against the proxy's address, never the upstream's.
        url = None if page["next"] is None else f"{proxied}{page['next']}"
        assert page["next"] is None or page["next"].startswith("/events?")
    assert seen == ids


def test_nginx_keeps_metrics_to_the_addresses_it_allows(proxied: str) -> None:
    # The test client is 127.0.0.1, which the shipped site allows (as an example of Prometheus).
    response = httpx.get(f"{proxied}/metrics", timeout=5)
    assert response.status_code == 200
    assert "eventlog_published_events_total" in response.text
