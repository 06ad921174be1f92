"""The minimal Flask-SSE 1.0.0 app its documentation shows, for comparison benches.

Run by ``_servers.FlaskSseServer`` as ``gunicorn -k gevent bench.flask_sse_app:app``.
Only two settings come from the environment, so concurrent bench runs never hear each other:
``REDIS_URL`` and ``FLASK_SSE_CHANNEL`` (subscribers use ``/stream?channel=<that>``).

Publishing: ``POST /publish`` with ``{"type": ..., "data": ...}``, the same body eventlog
takes for one event. Flask-SSE has no batch publish. ``POST /noop`` (not part of Flask-SSE)
parses the body and does nothing else: the publish bench's ceiling for any Flask app here.
"""

from __future__ import annotations

import os

from flask import Flask, request
from flask_sse import sse

CHANNEL = os.environ.get("FLASK_SSE_CHANNEL", "sse")

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://localhost")
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/")
def index() -> str:
    return "ok"  # readiness check for the bench


@app.post("/noop")
def noop() -> tuple[str, int]:
    """Calibration, not part of Flask-SSE: what gunicorn + Flask cost with no work at all."""
    request.get_json()
    return "{}", 201


@app.post("/publish")
def publish() -> tuple[str, int]:
    body = request.get_json()
    sse.publish(body["data"], type=body.get("type"), channel=CHANNEL)
    return "Message sent!", 200
