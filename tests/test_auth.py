"""Access control through the Flask test client, on both backends: every way in, every bad
token, every place a token travels; the patterns; the settings; the CLI's tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from auth_tokens import AUDIENCE, OTHER_SECRET, SECRET, KeyPair, claims, forged, hs256
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from eventlog import ConfigError, EventFilter, EventLog, InvalidRequest, create_app
from eventlog.events import matches
from eventlog.cli import main

AUTH = {"EVENTLOG_JWT_SECRET": SECRET, "EVENTLOG_JWT_AUDIENCE": AUDIENCE}
SSE = "text/event-stream"
RIGHTS = {"publish": ["orders"], "subscribe": ["orders", "user.42.*"]}

# The ways in: (name, method, path, Accept, streams it touches).
OPERATIONS = {
    "publish": ("POST", "/streams/orders/events", "application/json"),
    "live": ("GET", "/streams/orders/events?last_event_id=0", SSE),
    "multi": ("GET", "/events?stream=orders&stream=user.42.inbox&last_event_id=0", SSE),
    "all": ("GET", "/events?last_event_id=0", SSE),
    "audit": ("GET", "/streams/orders/events", "application/json"),
}


def token_for(case: str) -> str | None:
    """The token of each case in the matrix (None: no token at all)."""
    good = claims(**RIGHTS)
    return {
        "none": None,
        "garbage": "not-a-token",
        "wrong-signature": hs256(good, OTHER_SECRET),
        "alg-none": forged(good, "none"),
        "expired": hs256(claims(**RIGHTS, ttl=-10)),
        "not-yet-valid": hs256(claims(**RIGHTS, nbf=int(claims()["iat"]) + 600)),
        "wrong-audience": hs256({**good, "aud": "someone-else"}),
        "no-exp": hs256({k: v for k, v in good.items() if k != "exp"}),
        "malformed-claim": hs256(claims(subscribe=["orders*x"], publish=["orders"])),
        "without-stream": hs256(claims(publish=["payments"], subscribe=["payments", "user.4.*"])),
        # Boundaries: user.42.* covers user.42.inbox only, never user.420.* or the bare prefix.
        "prefix-boundary": hs256(claims(publish=["order*"], subscribe=["orders.*", "user.420.*", "user.42"])),
        "right": hs256(good),
        "everything": hs256(claims(publish=["*"], subscribe=["*"])),
    }[case]


# What each case gets from each operation. "all" needs subscribe '*', so only "everything"
# reads it; "prefix-boundary" may publish to orders (order* covers it) and nothing else.
def expected_status(case: str, operation: str) -> int:
    if case in ("none", "garbage", "wrong-signature", "alg-none", "expired", "not-yet-valid",
                "wrong-audience", "no-exp", "malformed-claim"):
        return 401
    if case == "everything":
        return 201 if operation == "publish" else 200
    if case == "right":
        return {"publish": 201, "all": 403}.get(operation, 200)
    if case == "prefix-boundary" and operation == "publish":
        return 201
    return 403


CASES = ["none", "garbage", "wrong-signature", "alg-none", "expired", "not-yet-valid",
         "wrong-audience", "no-exp", "malformed-claim", "without-stream", "prefix-boundary",
         "right", "everything"]


def send(client: FlaskClient, operation: str, token: str | None, via: str) -> Any:
    method, path, accept = OPERATIONS[operation]
    headers = {"Accept": accept}
    if token is not None and via == "header":
        headers["Authorization"] = f"Bearer {token}"
    if token is not None and via == "cookie":
        client.set_cookie("eventlog_token", token)
    if token is not None and via == "query":
        path += ("&" if "?" in path else "?") + f"access_token={token}"
    if method == "POST":
        return client.post(path, json={"data": {"n": 1}}, headers=headers)
    return client.get(path, headers=headers, buffered=False)


def stored(eventlog: EventLog) -> int:
    return len(eventlog.page(EventFilter(), limit=1000).events)


# Breadth on SQLite here; test_auth_server.py runs a sample against real servers on both.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.settings(**AUTH)
@pytest.mark.parametrize("via", ["header", "cookie", "query"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("case", CASES)
def test_access_matrix(client: FlaskClient, eventlog: EventLog, case: str, operation: str, via: str) -> None:
    seeded = eventlog.publish("orders", {"seed": True})  # a denied stream must not see this
    eventlog.publish("user.42.inbox", {"seed": True})
    token = token_for(case)
    response = send(client, operation, token, via)
    status = expected_status(case, operation)
    live = OPERATIONS[operation][2] == SSE
    if via == "query" and token is not None and not live:
        status = 400  # a token in the URL of anything but a live stream is refused
    try:
        assert response.status_code == status, response.get_data()
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        if status >= 400:
            body = response.get_data()
            assert response.mimetype == "application/problem+json"
            assert b"id:" not in body and b'"seed"' not in body
            if token is not None:
                assert token.encode() not in body
            assert stored(eventlog) == 2, "a denied request stores nothing"
        if status == 401:
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="eventlog"')
            assert ('error="invalid_token"' in challenge) is (token is not None)
        if status == 403:
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
            assert response.json["stream"] in ("orders", "user.42.inbox", "*")
        if status == 200 and live:
            chunks = iter(response.response)
            assert next(chunks).startswith(b"retry:")
            assert f"id: {seeded.id}".encode() in next(chunks)  # the replay, as allowed
        if status == 200 and not live:
            assert [e["stream"] for e in response.json["events"]] == ["orders"]
        if status == 201:
            assert stored(eventlog) == 3
    finally:
        response.close()
    # The server keeps serving: an open request still answers.
    assert client.get("/healthz").status_code == 200


@pytest.mark.settings(**AUTH)
def test_a_token_in_the_url_never_reaches_a_next_link_or_args(client: FlaskClient, eventlog: EventLog) -> None:
    for n in range(3):
        eventlog.publish("orders", n)
    token = hs256(claims(subscribe=["orders"]))
    page = client.get("/streams/orders/events?limit=1", headers={"Authorization": f"Bearer {token}"})
    assert page.json["next"] == "/streams/orders/events?limit=1&after=1"
    refused = client.get(f"/streams/orders/events?limit=1&access_token={token}")
    assert refused.status_code == 400 and token not in refused.get_data(as_text=True)
    # On a live stream the token is taken out of the URL before the unknown-parameter check.
    live = client.get(f"/streams/orders/events?access_token={token}&x=1", headers={"Accept": SSE})
    assert live.status_code == 400 and token not in live.get_data(as_text=True)
    assert "'x'" in live.json["detail"]


@pytest.mark.settings(**AUTH)
def test_health_reveals_no_stream_names_or_event_counts(client: FlaskClient, eventlog: EventLog) -> None:
    eventlog.publish("secret-stream", 1)
    for path in ("/healthz", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200
        assert set(response.json) <= {"status", "pid", "subscribers", "database", "redis"}
        assert "secret-stream" not in response.get_data(as_text=True)


@pytest.mark.settings(**AUTH, EVENTLOG_CORS_ORIGINS="https://app.example.com, http://localhost:3000")
def test_cors_only_for_listed_origins(client: FlaskClient) -> None:
    preflight = client.options(
        "/streams/orders/events",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    for origin in ("https://evil.example.com", "null", "https://app.example.com.evil.com"):
        refused = client.options(
            "/streams/orders/events", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert "Access-Control-Allow-Credentials" not in refused.headers
    # An actual (refused) answer to a listed origin is readable by its page, with its challenge.
    answer = client.get("/events", headers={"Origin": "http://localhost:3000"})
    assert answer.status_code == 401
    assert answer.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "WWW-Authenticate" in answer.headers["Access-Control-Expose-Headers"]
    assert "Origin" in answer.headers["Vary"]


@pytest.mark.parametrize(
    ("pattern", "stream", "covered"),
    [
        ("user.42.*", "user.42.inbox", True),
        ("user.42.*", "user.42.inbox.archive", True),
        ("user.42.*", "user.420.inbox", False),
        ("user.42.*", "user.42.", False),  # the * stands for at least one character
        ("user.42.*", "user.42", False),
        ("orders", "orders", True),
        ("orders", "orders2", False),
        ("*", "anything", True),
    ],
)
def test_patterns(pattern: str, stream: str, covered: bool) -> None:
    assert matches(pattern, stream) is covered


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {kind: KeyPair(kind, directory) for kind in ("rsa", "ec", "ed25519")}


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_public_keys_accept_only_their_own_algorithm(
    kind: str, keys: dict[str, KeyPair], database_url: str
) -> None:
    pair = keys[kind]
    app = create_app({"EVENTLOG_DATABASE_URL": database_url, "EVENTLOG_JWT_PUBLIC_KEY": str(pair.path),
                      "EVENTLOG_JWT_AUDIENCE": AUDIENCE})
    try:
        client = app.test_client()
        body = claims(publish=["orders"])
        def status(token: str) -> int:
            response = client.post("/streams/orders/events", json={"data": 1},
                                   headers={"Authorization": f"Bearer {token}"})
            return response.status_code
        assert status(pair.sign(body)) == 201
        # Algorithm confusion: an HS256 token keyed with the public key's own PEM text.
        assert status(forged(body, "HS256", pair.public_pem)) == 401
        assert status(forged(body, "none")) == 401
        assert status(hs256(body)) == 401
        if kind == "rsa":  # the same key, another RSA algorithm: still pinned to RS256
            assert status(pair.sign(body, "PS256")) == 401
        other = next(p for k, p in keys.items() if k != kind)
        assert status(other.sign(body)) == 401
        assert app.extensions["eventlog"].publish("x", 1).id == 2  # trusted code needs none
    finally:
        app.extensions["eventlog"].close()


def test_settings_are_checked_at_start(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    base = {"EVENTLOG_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    failures: list[tuple[dict[str, str], str]] = [
        ({"EVENTLOG_JWT_SECRET": SECRET, "EVENTLOG_JWT_PUBLIC_KEY": str(keys["rsa"].path)}, "not both"),
        ({"EVENTLOG_JWT_PUBLIC_KEY": str(tmp_path / "missing.pem")}, "EVENTLOG_JWT_PUBLIC_KEY: cannot read"),
        ({"EVENTLOG_JWT_PUBLIC_KEY": __file__}, "not a PEM public key"),
        ({"EVENTLOG_JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"EVENTLOG_CORS_ORIGINS": "*"}, "EVENTLOG_CORS_ORIGINS"),
        ({"EVENTLOG_CORS_ORIGINS": "https://a.example.com/path"}, "not an origin"),
    ]
    for settings, message in failures:
        with pytest.raises(ConfigError, match=message):
            create_app({**base, **settings})


def test_tokens_minted_by_the_app_and_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                keys: dict[str, KeyPair]) -> None:
    monkeypatch.setenv("EVENTLOG_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("EVENTLOG_JWT_SECRET", SECRET)
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    created = runner.invoke(main, ["token", "create", "--publish", "orders", "--subscribe", "user.42.*",
                                   "--ttl", "1h"])
    assert created.exit_code == 0, created.output
    token = created.output.strip()

    def run(*args: str) -> Any:
        return runner.invoke(main, [*args, "--token", token])

    assert run("publish", "orders", '{"n": 1}').exit_code == 0
    refused = run("publish", "payments", '{"n": 2}')
    assert refused.exit_code == 1 and "may not publish to stream 'payments'" in refused.output
    assert run("query", "--stream", "user.42.inbox").exit_code == 0
    assert run("query", "--stream", "orders").exit_code == 1  # publish only, no subscribe
    assert run("query").exit_code == 1  # every stream needs '*'
    garbage = runner.invoke(main, ["query", "--token", "garbage"])
    assert garbage.exit_code == 1 and "invalid" in garbage.output
    assert runner.invoke(main, ["token", "create", "--ttl", "soon"]).exit_code == 2

    monkeypatch.delenv("EVENTLOG_JWT_SECRET")
    monkeypatch.setenv("EVENTLOG_JWT_PUBLIC_KEY", str(keys["rsa"].path))
    refused = runner.invoke(main, ["token", "create", "--subscribe", "x"])
    assert refused.exit_code == 1 and "can only verify tokens" in refused.output


def test_app_helper_mints_a_token_its_api_accepts(database_url: str) -> None:
    app: Flask = create_app({"EVENTLOG_DATABASE_URL": database_url, **AUTH})
    events: EventLog = app.extensions["eventlog"]
    try:
        token = events.token(subscribe=["user.7.*", "broadcast"], ttl=60, subject="7")
        rights = events.auth.verify(token) if events.auth else None
        assert rights is not None and rights.subscribe == ("user.7.*", "broadcast")
        client = app.test_client()
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/events?stream=broadcast&stream=user.7.inbox", headers=bearer).status_code == 200
        assert client.get("/events?stream=user.8.inbox", headers=bearer).status_code == 403
        with pytest.raises(InvalidRequest):
            events.token(subscribe=["bad pattern"], ttl=60)
    finally:
        events.close()



@pytest.mark.settings(**AUTH)
def test_metrics_need_a_token_that_may_read_every_stream(client: FlaskClient) -> None:
    """The counts describe every stream's traffic: only a token for ``*`` may see them."""
    assert client.get("/metrics").status_code == 401
    narrow = hs256(claims(subscribe=["orders", "user.*"]))
    assert client.get("/metrics", headers={"Authorization": f"Bearer {narrow}"}).status_code == 403
    wide = hs256(claims(subscribe=["*"]))
    response = client.get("/metrics", headers={"Authorization": f"Bearer {wide}"})
    assert response.status_code == 200
    assert "eventlog_published_events_total" in response.get_data(as_text=True)
