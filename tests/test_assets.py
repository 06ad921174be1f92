"""The browser files: served from package data with their content types and revalidation."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from flask import Flask
from flask.testing import FlaskClient

import eventlog
from eventlog import EventLog


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/eventlog.js", "text/javascript; charset=utf-8"),
        ("/eventlog.mjs", "text/javascript; charset=utf-8"),
        ("/console", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ],
)
def test_each_file_has_its_type_an_etag_and_a_304(client: FlaskClient, path: str, content_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.content_type == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


def test_the_module_is_the_script_with_an_export_footer(client: FlaskClient) -> None:
    script = client.get("/eventlog.js").data
    module = client.get("/eventlog.mjs").data
    assert module.startswith(script)
    assert b"export const { subscribe, SSEParser }" in module[len(script):]
    assert client.get("/eventlog.js").headers["ETag"] != client.get("/eventlog.mjs").headers["ETag"]


def test_flask_serves_no_second_copy_under_static(client: FlaskClient) -> None:
    assert client.get("/static/eventlog.js").status_code == 404


def test_one_registration_serves_the_browser_files_under_the_prefix(tmp_path: Path) -> None:
    """An app that embeds eventlog registers one blueprint and gets eventlog.js and the
    console too, and the console's own files and API calls stay under the prefix."""
    app = Flask("host")
    app.config["EVENTLOG_DATABASE_URL"] = f"sqlite:///{tmp_path / 'host.db'}"
    events = EventLog(app)
    app.register_blueprint(eventlog.blueprint, url_prefix="/eventlog")
    client = app.test_client()
    try:
        for path in ("/eventlog/console", "/eventlog/eventlog.js", "/eventlog/eventlog.mjs"):
            assert client.get(path).status_code == 200, path
        assert client.get("/eventlog.js").status_code == 404  # the host's own root stays its own
        console = client.get("/eventlog/console").get_data(as_text=True)
        for reference in re.findall(r'(?:src|href)="([^"]+)"', console):
            assert not reference.startswith("/"), reference
            assert client.get(urljoin("/eventlog/console", reference)).status_code == 200, reference
    finally:
        events.close()
