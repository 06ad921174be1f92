"""The HTTP API on both backends: publish, audit query, and problem details for bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse


def post(client: FlaskClient, body: Any, stream: str = "orders", **kwargs: Any) -> TestResponse:
    return client.post(f"/streams/{stream}/events", json=body, **kwargs)


def stored_count(client: FlaskClient) -> int:
    return len(client.get("/events?limit=1000").json["events"])


# --- publish ------------------------------------------------------------------------------

def test_publish_one_event_returns_the_stored_event(client: FlaskClient) -> None:
    response = post(client, {"type": "created", "data": {"id": 7, "note": "ü\u2028"}})
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    event = response.json
    assert {k: event[k] for k in ("id", "stream", "type", "data")} == {
        "id": 1, "stream": "orders", "type": "created", "data": {"id": 7, "note": "ü\u2028"},
    }
    moment = datetime.fromisoformat(event["time"])
    assert event["time"].endswith("Z") and abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


def test_type_defaults_to_message(client: FlaskClient) -> None:
    assert post(client, {"data": None}).json["type"] == "message"


def test_batch_is_stored_with_consecutive_ids(client: FlaskClient) -> None:
    post(client, {"data": 0})
    response = post(client, [{"data": i, "type": "n"} for i in range(1, 4)])
    assert response.status_code == 201
    assert [(e["id"], e["data"]) for e in response.json["events"]] == [(2, 1), (3, 2), (4, 3)]


def test_idempotent_retry_returns_first_result(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": "order-7-created"}
    first = post(client, [{"data": 1}, {"data": 2}], headers=headers)
    again = post(client, [{"data": 1}, {"data": 2}], headers=headers)
    assert again.status_code == 201
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert stored_count(client) == 2


def test_idempotency_key_reused_for_different_body_is_422(client: FlaskClient) -> None:
    post(client, {"data": 1}, headers={"Idempotency-Key": "k"})
    response = post(client, {"data": 2}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert response.json["type"].endswith("idempotency-key-reused")
    assert stored_count(client) == 1


# --- bad input: a 4xx problem, nothing stored, the server keeps serving ----------------------------

BAD_PUBLISHES = [
    pytest.param({"data": b"{not json", "content_type": "application/json"}, 400, "not valid JSON", id="malformed-json"),
    pytest.param({"data": b'{"data": NaN}', "content_type": "application/json"}, 400, "not valid JSON", id="nan"),
    pytest.param({"data": b'{"data": 1}', "content_type": "text/plain"}, 415, "Content-Type", id="wrong-content-type"),
    pytest.param({"data": b'{"data": 1}'}, 415, "Content-Type", id="no-content-type"),
    pytest.param({"json": [{"data": 1}, 5]}, 400, "batch item 1", id="batch-item-not-object"),
    pytest.param({"json": [{"data": 1}, {"type": "t"}]}, 400, "no 'data'", id="batch-item-without-data"),
    pytest.param({"json": {"data": 1, "typo": 2}}, 400, "unknown field", id="unknown-field"),
    pytest.param({"json": "just a string"}, 400, "JSON object", id="body-not-object"),
    pytest.param({"json": {"type": "x" * 201, "data": 1}}, 400, "event type", id="type-too-long"),
    pytest.param({"json": {"type": "bad type", "data": 1}}, 400, "event type", id="type-bad-chars"),
    pytest.param({"json": {"type": 5, "data": 1}}, 400, "'type' must be a string", id="type-not-string"),
    pytest.param({"json": {"data": "x" * 2000}}, 413, "at most 1000 are allowed", id="data-too-large"),
    pytest.param({"json": []}, 400, "empty", id="empty-batch"),
    pytest.param({"json": [{"data": i} for i in range(11)]}, 413, "at most 10", id="batch-too-large"),
    pytest.param({"data": b'{"data": "\\ud800"}', "content_type": "application/json"}, 400, "surrogate", id="lone-surrogate"),
    pytest.param({"json": {"data": 1}, "headers": {"Idempotency-Key": "x" * 300}}, 400, "Idempotency-Key", id="bad-idempotency-key"),
]


@pytest.mark.settings(EVENTLOG_MAX_DATA_BYTES=1000, EVENTLOG_MAX_BATCH=10)
@pytest.mark.parametrize(("request_kwargs", "status", "detail"), BAD_PUBLISHES)
def test_bad_publish_is_a_problem_and_stores_nothing(
    client: FlaskClient, request_kwargs: dict[str, Any], status: int, detail: str
) -> None:
    response = client.post("/streams/orders/events", **request_kwargs)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem["status"] == status and problem["title"] and problem["type"]
    assert detail in problem["detail"]
    assert stored_count(client) == 0
    assert post(client, {"data": "still serving"}).status_code == 201


@pytest.mark.parametrize("stream", ["has space", "x" * 201, "é", "a/b"])
def test_bad_stream_name_is_rejected(client: FlaskClient, stream: str) -> None:
    response = client.post(f"/streams/{stream}/events", json={"data": 1})
    assert response.status_code in (400, 404)
    assert response.mimetype == "application/problem+json"
    assert stored_count(client) == 0


def test_request_body_over_the_limit_is_413(database_url: str) -> None:
    from eventlog import create_app

    app = create_app({"EVENTLOG_DATABASE_URL": database_url, "EVENTLOG_MAX_REQUEST_BYTES": 100})
    client = app.test_client()
    response = post(client, {"data": "x" * 200})
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    app.extensions["eventlog"].close()


def test_unknown_route_and_method_are_problems(client: FlaskClient) -> None:
    assert client.get("/nope").mimetype == "application/problem+json"
    response = client.delete("/events")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]


# --- audit query ----------------------------------------------------------------------------

@pytest.fixture
def mixed_log(client: FlaskClient) -> list[dict[str, Any]]:
    """Ten events over two streams and two types."""
    stored = []
    for i in range(10):
        stream = "a" if i % 2 == 0 else "b"
        kind = "created" if i % 3 == 0 else "updated"
        stored.append(post(client, {"type": kind, "data": i}, stream=stream).json)
    return stored


def ids(response: TestResponse) -> list[int]:
    return [e["id"] for e in response.json["events"]]


def test_query_filters(client: FlaskClient, mixed_log: list[dict[str, Any]]) -> None:
    assert ids(client.get("/events")) == list(range(1, 11))
    assert ids(client.get("/streams/a/events")) == [1, 3, 5, 7, 9]
    assert ids(client.get("/events?stream=a&stream=b&type=created")) == [1, 4, 7, 10]
    assert ids(client.get("/events?type=created&type=updated&after=3&before=8")) == [4, 5, 6, 7]
    assert ids(client.get("/streams/b/events?type=updated&order=desc")) == [8, 6, 2]


def test_query_by_time(client: FlaskClient, mixed_log: list[dict[str, Any]]) -> None:
    fifth = mixed_log[4]["time"]
    assert ids(client.get("/events", query_string={"since": fifth})) == list(range(5, 11))
    assert ids(client.get("/events", query_string={"until": fifth})) == [1, 2, 3, 4]
    # The same instant written with another zone offset compares equal.
    plus_two = timezone(timedelta(hours=2))
    offset = datetime.fromisoformat(fifth).astimezone(plus_two).isoformat()
    assert ids(client.get("/events", query_string={"since": offset})) == list(range(5, 11))
    offset = (datetime.fromisoformat(fifth) + timedelta(hours=2)).astimezone(plus_two).isoformat()
    assert ids(client.get("/events", query_string={"since": offset})) == []


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_keyset_pagination_walks_the_whole_log(
    client: FlaskClient, mixed_log: list[dict[str, Any]], order: str
) -> None:
    url: str | None = f"/events?type=updated&limit=2&order={order}"
    seen: list[int] = []
    pages = 0
    while url:
        page = client.get(url).json
        seen += [e["id"] for e in page["events"]]
        url = page["next"]
        pages += 1
        assert pages < 10
    expected = [e["id"] for e in mixed_log if e["type"] == "updated"]
    assert seen == (expected if order == "asc" else expected[::-1])
    assert pages == 3  # 6 events, 2 a page: the third page knows it is the last


def test_stored_event_json_matches_query_json(client: FlaskClient, mixed_log: list[dict[str, Any]]) -> None:
    assert client.get("/events").json["events"] == mixed_log


def test_time_bounds_are_rfc_3339_and_exact_below_a_microsecond(
    client: FlaskClient, mixed_log: list[dict[str, Any]]
) -> None:
    """RFC 3339 allows a lower-case t and z, any number of fraction digits and a leap
    second; the bounds stay exact: a tenth of a microsecond after an event's time excludes
    it from ``since`` and keeps it in ``until``."""
    fifth = mixed_log[4]["time"]  # six fraction digits, then Z
    just_after = fifth[:-1] + "1Z"
    assert ids(client.get("/events", query_string={"since": just_after})) == list(range(6, 11))
    assert ids(client.get("/events", query_string={"until": just_after})) == [1, 2, 3, 4, 5]
    lower = fifth.replace("T", "t").replace("Z", "z")
    assert ids(client.get("/events", query_string={"since": lower})) == list(range(5, 11))
    leap = client.get("/events", query_string={"since": "2016-12-31T23:59:60Z"})
    assert ids(leap) == list(range(1, 11))


@pytest.mark.parametrize(
    ("query_string", "detail"),
    [
        ("since=2026-W48-1T00:00:00Z", "'since' must be an RFC 3339 time"),
        ("since=20261124T000000Z", "'since' must be an RFC 3339 time"),
        ("until=2026-11-24", "'until' must be an RFC 3339 time"),
        ("since=2026-11-24%2009:00:00Z", "'since' must be an RFC 3339 time"),
        ("since=%EF%BC%92026-11-24T00:00:00Z", "'since' must be an RFC 3339 time"),
        ("since=2026-02-30T00:00:00Z", "'since' is not a valid time"),
        ("until=2026-11-24T00:00:00%2B24:00", "'until' is not a valid time"),
        ("until=9999-12-31T23:59:59.9999999Z", "outside the years"),
        ("after=abc", "'after' must be a whole number"),
        ("before=-1", "'before' must be a whole number"),
        ("since=yesterday", "'since' must be an RFC 3339 time"),
        ("until=2026-11-24T10:00:00", "with a zone"),
        ("limit=0", "'limit' must be between 1 and 1000"),
        ("limit=1001", "'limit' must be between 1 and 1000"),
        ("order=sideways", "'order'"),
        ("limit=1&limit=2", "once"),
        ("stream=bad%20name", "stream name"),
        ("colour=red", "unknown query parameter"),
    ],
)
def test_bad_query_parameters_are_problems(client: FlaskClient, query_string: str, detail: str) -> None:
    response = client.get(f"/events?{query_string}")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert detail in response.json["detail"]
    assert client.get("/events").status_code == 200


def test_stream_path_and_stream_parameter_do_not_mix(client: FlaskClient) -> None:
    assert client.get("/streams/a/events?stream=b").status_code == 400


def test_problem_details_never_leak_the_database_url(database_url: str) -> None:
    from eventlog import create_app

    secret_url = "postgresql+psycopg://user:hunter2@127.0.0.1:1/nowhere"
    app = create_app({"EVENTLOG_DATABASE_URL": secret_url})
    app.testing = False  # let the error handler answer, as in production
    response = post(app.test_client(), {"data": 1})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "hunter2" not in response.get_data(as_text=True)
    assert json.loads(response.get_data())["detail"] == "the database is unavailable; retry shortly"
