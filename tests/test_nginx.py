"""deploy/'s files together, on Debian's real nginx, under a real public name: the nginx site
and eventlog.env in front of ``eventlog serve``, requests with ``Host: events.example.com``,
and the scrape that prometheus.yml describes. Live events pass at once (no buffering), and
the audit query's ``next`` links work behind it."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import Server, unavailable
from helpers import free_port, sse_messages, wait_until

StartServer = Callable[..., Server]
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SITE = DEPLOY / "nginx-eventlog.conf"
NGINX = "/usr/sbin/nginx"
PUBLIC = "events.example.com"  # the name the shipped files use
METRICS_PORT = 9180


def shipped_settings() -> dict[str, str]:
    """The EVENTLOG_* settings of deploy/eventlog.env that do not name other machines."""
    settings = {}
    for line in (DEPLOY / "eventlog.env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name.startswith("EVENTLOG_") and name not in ("EVENTLOG_DATABASE_URL", "EVENTLOG_REDIS_URL", "EVENTLOG_PORT"):
            settings[name.removeprefix("EVENTLOG_")] = value
    return settings


def site_for(upstream_port: int, listen_port: int, metrics_port: int) -> str:
    """The shipped site, changed only in its ports."""
    site = SITE.read_text()
    for shipped, ours in (("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
                          ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
                          (f"listen {METRICS_PORT};", f"listen 127.0.0.1:{metrics_port};")):
        assert site.count(shipped) == 1, shipped
        site = site.replace(shipped, ours)
    return site


@dataclass
class Proxied:
    """nginx in front of a server: ``client`` sends the public name as Host."""

    client: httpx.Client
    metrics_port: int


@pytest.fixture
def proxied(postgres_url: str, start_server: StartServer, tmp_path: Path) -> Iterator[Proxied]:
    """nginx, with the shipped site, in front of a fresh ``eventlog serve`` with the shipped
    settings (the public name in EVENTLOG_ALLOWED_HOSTS, JSON logs)."""
    if shutil.which(NGINX) is None:
        unavailable("nginx is not installed (apt-get install nginx-light)")
    # One worker: without Redis here, a second would hear of events by polling only.
    settings = {**shipped_settings(), "WORKERS": "1", "HEARTBEAT_SECONDS": "0.5"}
    server = start_server(postgres_url, **settings)
    port, metrics_port = free_port(), free_port()
    (tmp_path / "site.conf").write_text(site_for(server.port, port, metrics_port))
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
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Host": PUBLIC}, timeout=10)
    try:
        wait_until(lambda: client.get("/healthz", timeout=1).status_code == 200)
        yield Proxied(client, metrics_port)
    finally:
        client.close()
        nginx.terminate()
        nginx.wait(timeout=10)


def publish(proxied: Proxied, stream: str, data: object) -> int:
    response = proxied.client.post(f"/streams/{stream}/events", json={"data": data})
    assert response.status_code == 201, response.text
    event_id: int = response.json()["id"]
    return event_id


def test_live_events_pass_through_nginx_unbuffered(proxied: Proxied) -> None:
    """An event published after the stream is open arrives within a second, uncompressed."""
    arrived: dict[int, float] = {}
    opened = threading.Event()

    def read() -> None:
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
        stream = httpx.Client(base_url=proxied.client.base_url, headers={"Host": PUBLIC}, timeout=httpx.Timeout(10, read=30))
        with stream, stream.stream("GET", "/streams/orders/events", headers=headers) as response:
            assert response.status_code == 200
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
        event_id = publish(proxied, "orders", {"n": n})
        wait_until(lambda: event_id in arrived, timeout=5)
        # Through a buffering proxy the frame would wait for 4 KiB or more to gather.
        assert arrived[event_id] - sent < 1
    reader.join(timeout=5)


def test_next_links_work_behind_nginx(proxied: Proxied) -> None:
    ids = [publish(proxied, "audit", n) for n in range(5)]
    seen: list[int] = []
    url: str | None = "/events?stream=audit&limit=2"
    while url is not None:
        page = proxied.client.get(url).json()
        seen += [e["id"] for e in page["events"]]
        # Relative (path and query): resolved against the proxy's address, never the upstream's.
        url = page["next"]
        assert page["next"] is None or page["next"].startswith("/events?")
    assert seen == ids


def test_prometheus_scrapes_each_host_at_the_metrics_port(proxied: Proxied) -> None:
    """As prometheus.yml says: each host by its own name at nginx's metrics port, which only
    the addresses it allows reach (the test client is 127.0.0.1, which the site allows as an
    example of Prometheus's); the public site keeps /metrics to itself."""
    [job] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = job["static_configs"][0]["targets"]
    assert all(target.endswith(f":{METRICS_PORT}") for target in targets)
    publish(proxied, "scraped", 1)
    scrape = httpx.get(
        f"http://127.0.0.1:{proxied.metrics_port}{job['metrics_path']}",
        headers={"Host": targets[0]}, timeout=5,
    )
    assert scrape.status_code == 200, scrape.text
    assert 'eventlog_published_events_total{outcome="stored"} 1.0' in scrape.text
    assert proxied.client.get("/metrics").status_code == 404
