"""eventlog inside someone else's Flask app: its own settings, schema, errors and transactions.

The host apps here have keys and tables of their own with the names eventlog would naively use
(``DATABASE_URL``, ``MAX_CONTENT_LENGTH``, Flask-Migrate's ``alembic_version``); eventlog must
leave every one of them alone. Publishing in the host's transaction must announce after its
commit, never before, and store nothing on rollback.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, fresh_postgres_database, url_of
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from helpers import Listener, wait_until
from sqlalchemy import String, insert, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import eventlog
from eventlog import EventFilter, EventLog, InvalidRequest, migrate
from eventlog.database import make_engine
from eventlog.hub import Subscription
from eventlog.migrate import VERSION_TABLE, upgrade
from eventlog.models import Event

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
SLOW_POLL = 60  # so that only an announcement can deliver within the test's time


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'host.db'}"
        return
    with fresh_postgres_database("eventlog_embed") as engine:
        yield url_of(engine)


class Base(DeclarativeBase):
    pass


HostApp = Callable[..., tuple[Flask, SQLAlchemy, EventLog]]


@pytest.fixture
def host_app() -> Iterator[HostApp]:
    """Make host apps with Flask-SQLAlchemy and eventlog on one database; closed at the end."""
    made: list[tuple[Flask, SQLAlchemy, EventLog]] = []

    def make(database_url: str, **config: Any) -> tuple[Flask, SQLAlchemy, EventLog]:
        app = Flask("host")
        app.config.update(SQLALCHEMY_DATABASE_URI=database_url, EVENTLOG_DATABASE_URL=database_url, **config)
        made.append((app, SQLAlchemy(app, model_class=Base), EventLog(app)))
        return made[-1]

    yield make
    for app, db, events in made:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
            events.close()


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


def migrated(app: Flask, db: SQLAlchemy, events: EventLog) -> None:
    with app.app_context():
        db.create_all()
        events.upgrade()


def take_soon(subscription: Subscription, timeout: float) -> list[int]:
    """The ids pushed to ``subscription`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while subscription.pending == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if subscription.pending == 0:
        return []
    frames, overflowed = subscription.take()
    assert not overflowed
    return [f.id for f in frames]


# --- the host's keys, limits and migrations stay the host's --------------------------------

def test_host_settings_limits_and_migrations_are_left_alone(fresh_url: str, tmp_path: Path) -> None:
    engine = make_engine(fresh_url)
    with engine.begin() as conn:  # the host's own Flask-Migrate history
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('host0042')"))
    host_keys = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}",
        "REDIS_URL": "redis://unused.invalid:1/0",
        "MAX_BATCH": 1,
        "MAX_CONTENT_LENGTH": 1024 * 1024,
    }
    app = Flask("host")
    app.config.update(host_keys, EVENTLOG_DATABASE_URL=fresh_url)
    events = EventLog(app)
    app.register_blueprint(eventlog.blueprint, url_prefix="/eventlog")

    @app.post("/upload")
    def upload() -> str:
        return str(len(request.get_data()))

    with app.app_context():
        events.upgrade()
        assert events.revision() == migrate.head()
    assert {k: app.config[k] for k in host_keys} == host_keys
    assert events.settings.database_url == fresh_url and events.settings.max_batch == 1000
    assert events.settings.redis_url == ""
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["host0042"]
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == migrate.head()

    client = app.test_client()
    big = "x" * (700 * 1024)
    # The host's limit still guards the host's route; eventlog's own limit guards its routes.
    assert client.post("/upload", data=big * 2).status_code == 413
    batch = [{"data": big}, {"data": big}]
    response = client.post("/eventlog/streams/files/events", json=batch)
    assert response.status_code == 201, response.get_data(as_text=True)[:200]
    assert [e["id"] for e in response.json["events"]] == [1, 2]
    with app.app_context():
        events.close()
    engine.dispose()


LEGACY_VERSION_TABLE = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL,"
    " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
)


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "beside-the-host"])
def test_a_database_migrated_under_the_old_version_table_is_moved_over(fresh_url: str, shared: bool) -> None:
    engine = make_engine(fresh_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:  # what an older eventlog left: its revision in alembic_version
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(text(LEGACY_VERSION_TABLE))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
        if shared:  # and the host's own revision beside it
            conn.execute(text("INSERT INTO alembic_version VALUES ('host0042')"))
    app = Flask("host")
    app.config["EVENTLOG_DATABASE_URL"] = fresh_url
    events = EventLog(app)
    assert events.revision() is None
    events.upgrade()
    assert events.revision() == migrate.head()
    if shared:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["host0042"]
    else:
        assert "alembic_version" not in inspect(engine).get_table_names()
    events.close()
    engine.dispose()


def test_a_second_registration_on_one_app_is_refused(tmp_path: Path) -> None:
    app = Flask("host")
    app.config["EVENTLOG_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    events = EventLog(app)
    with pytest.raises(RuntimeError, match="already registered"):
        EventLog(app)
    with pytest.raises(RuntimeError, match="already registered"):
        events.init_app(app)
    events.close()


def test_problem_details_cover_eventlog_routes_only(database_url: str) -> None:
    app = Flask("host")
    app.config["EVENTLOG_DATABASE_URL"] = database_url
    events = EventLog(app)
    app.register_blueprint(eventlog.blueprint, url_prefix="/eventlog")

    @app.get("/boom")
    def boom() -> str:
        raise InvalidRequest("the host's own error")

    @app.errorhandler(InvalidRequest)
    def host_handler(error: InvalidRequest) -> tuple[str, int]:
        return "<p>host page</p>", 418

    client = app.test_client()
    bad = client.get("/eventlog/events?limit=0")
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
    assert "limit" in bad.json["detail"]
    assert client.get("/nowhere").mimetype == "text/html"  # the host's 404 page
    assert client.get("/boom").get_data(as_text=True) == "<p>host page</p>"
    events.close()


def test_the_blueprint_needs_the_extension() -> None:
    app = Flask("host")
    with pytest.raises(RuntimeError, match="EventLog"):
        app.register_blueprint(eventlog.blueprint)


# --- publishing in the host's transaction ------------------------------------------------------

def test_event_and_business_row_commit_together_and_are_announced_after(fresh_url: str, host_app: HostApp) -> None:
    app, db, events = host_app(fresh_url, EVENTLOG_POLL_SECONDS=SLOW_POLL)
    migrated(app, db, events)
    with app.app_context():
        subscription = events.hub.subscribe(["orders"])
        db.session.add(Order(id=1, item="book"))
        stored = events.publish("orders", {"order": 1}, type="created", session=db.session)
        assert stored.id == 1  # known at once, before the commit
        assert take_soon(subscription, 0.5) == []  # nothing is announced before the commit
        db.session.commit()
        assert take_soon(subscription, 0.5) == [1]  # the announcement, not the (slow) poll
        events.hub.unsubscribe(subscription)
        assert [e.id for e in events.events(EventFilter())] == [1]
        assert db.session.get(Order, 1) is not None


def test_a_rollback_stores_nothing_and_leaves_no_gap(fresh_url: str, host_app: HostApp) -> None:
    app, db, events = host_app(fresh_url, EVENTLOG_POLL_SECONDS=SLOW_POLL)
    migrated(app, db, events)
    with app.app_context():
        events.publish("orders", {"n": 1})  # committed by itself: id 1
        subscription = events.hub.subscribe(["orders"])
        db.session.add(Order(id=2, item="lamp"))
        events.publish_batch("orders", [{"data": 2}, {"data": 3}], session=db.session)
        db.session.rollback()
        assert take_soon(subscription, 0.5) == []
        assert db.session.get(Order, 2) is None
        after = events.publish("orders", {"n": 4}, session=db.session)
        db.session.commit()
        assert after.id == 2  # the rolled-back ids were never taken
        assert [e.id for e in events.events(EventFilter())] == [1, 2]
        events.hub.unsubscribe(subscription)


def test_bad_events_are_refused_as_over_http(fresh_url: str, host_app: HostApp) -> None:
    app, db, events = host_app(fresh_url)
    migrated(app, db, events)
    with app.app_context():
        with pytest.raises(InvalidRequest, match="event type"):
            events.publish("orders", 1, type="line\nfeed", session=db.session)
        with pytest.raises(InvalidRequest, match="not JSON"):
            events.publish("orders", float("nan"), session=db.session)
        with pytest.raises(InvalidRequest, match="stream name"):
            events.publish("has space", 1)
        with pytest.raises(InvalidRequest):
            eventlog.NewEvent("orders", "t", {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="reserved"):
            events.publish("orders", 1, type="reset")
        db.session.commit()
        assert list(events.events(EventFilter())) == []


def test_a_connection_is_announced_after_its_commit(database_url: str) -> None:
    """Core has no after-commit event: the announcement waits for the connection's next begin
    or its return to the pool, both surely after the commit."""
    app = Flask("host")
    app.config.update(EVENTLOG_DATABASE_URL=database_url, EVENTLOG_POLL_SECONDS=SLOW_POLL)
    events = EventLog(app)
    engine = make_engine(database_url)
    subscription = events.hub.subscribe()
    with engine.begin() as conn:  # commits, then returns the connection to the pool
        assert events.publish("orders", 1, session=conn).id == 1
        assert take_soon(subscription, 0.3) == []
    assert take_soon(subscription, 0.5) == [1]
    with engine.connect() as conn:
        with conn.begin() as transaction:
            events.publish("orders", 2, session=conn)
            transaction.rollback()
        assert take_soon(subscription, 0.3) == []
        with conn.begin():
            assert events.publish("orders", 3, session=conn).id == 2  # no gap
        with conn.begin():  # the next transaction on the same connection
            assert take_soon(subscription, 0.5) == [2]
    events.hub.unsubscribe(subscription)
    events.close()
    engine.dispose()


def test_a_plain_session_works_too(database_url: str) -> None:
    app = Flask("host")
    app.config.update(EVENTLOG_DATABASE_URL=database_url, EVENTLOG_POLL_SECONDS=SLOW_POLL)
    events = EventLog(app)
    engine = make_engine(database_url)
    subscription = events.hub.subscribe()
    with Session(engine) as session, session.begin():
        events.publish("orders", 1, session=session)
    assert take_soon(subscription, 0.5) == [1]
    events.hub.unsubscribe(subscription)
    events.close()
    engine.dispose()


def test_another_process_hears_of_the_commit_at_once(
    postgres_url: str, redis_url: str, redis_channel: str, start_server: Callable[..., Server],
    host_app: HostApp,
) -> None:
    """A live subscriber on another ``eventlog serve`` (which polls only every minute) gets the
    event within half a second of the host's commit, and not before it."""
    server = start_server(
        postgres_url, redis_url, REDIS_CHANNEL=redis_channel, POLL_SECONDS=SLOW_POLL, HEARTBEAT_SECONDS=1
    )
    app, db, events = host_app(
        postgres_url, EVENTLOG_REDIS_URL=redis_url, EVENTLOG_REDIS_CHANNEL=redis_channel
    )
    with app.app_context():
        db.create_all()
    listener = Listener(f"{server.url}/streams/orders/events")
    assert listener.connected.wait(10)
    with app.app_context():
        db.session.add(Order(id=7, item="chair"))
        stored = events.publish("orders", {"order": 7}, type="created", session=db.session)
        time.sleep(1.0)
        assert listener.ids() == []  # not before the commit
        db.session.commit()
        committed = time.monotonic()
        wait_until(lambda: listener.ids() == [stored.id], timeout=5, interval=0.01)
        assert time.monotonic() - committed < 0.5
        db.drop_all()
    listener.close()


# --- one bad row cannot stop delivery ----------------------------------------------------------

def test_a_row_the_hub_cannot_send_does_not_stop_later_events(
    database_url: str, start_server: Callable[..., Server]
) -> None:
    server = start_server(database_url, POLL_SECONDS=0.2, HEARTBEAT_SECONDS=1)
    plain = Listener(f"{server.url}/streams/bad/events")
    envelope = Listener(f"{server.url}/events")
    assert plain.connected.wait(10) and envelope.connected.wait(10)
    engine = make_engine(database_url)
    with engine.begin() as conn:  # written straight into the table, past every check
        last = conn.execute(text("UPDATE eventlog_counter SET last_id = last_id + 1 RETURNING last_id")).scalar_one()
        conn.execute(
            insert(Event).values(id=last, stream="bad", type="line\nfeed", data="1", time=datetime.now(UTC))
        )
    good = httpx.post(f"{server.url}/streams/bad/events", json={"data": "after"}).json()
    wait_until(lambda: plain.ids() == [good["id"]] and envelope.ids() == [good["id"]], timeout=10)
    replay = Listener(f"{server.url}/streams/bad/events", last_event_id=0)
    wait_until(lambda: replay.ids() == [good["id"]], timeout=10)
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    for listener in (plain, envelope, replay):
        listener.close()
    with engine.connect() as conn:
        assert conn.execute(select(Event.id).where(Event.id == last)).scalar_one() == last
    engine.dispose()


# --- the README's example ---------------------------------------------------------------------

def test_the_readme_embedding_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = README_PATH.read_text()
    section = readme[readme.index("## Embed it in your Flask app"):]
    code = re.search(r"```python\n(.+?)\n```", section, re.S)
    assert code is not None
    (tmp_path / "shop.py").write_text(code.group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    shop = importlib.import_module("shop")
    app: Flask = shop.app
    try:
        client = app.test_client()
        response = client.post("/orders", json={"item": "kettle"})
        assert response.status_code == 201
        assert response.json == {"order": 1, "event": 1}
        page = client.get("/eventlog/streams/orders/events").json
        assert [(e["type"], e["data"]) for e in page["events"]] == [("created", {"order": 1})]
        result = app.test_cli_runner().invoke(args=["eventlog", "query", "--stream", "orders"])
        assert result.exit_code == 0, result.output
        assert '"data":{"order":1}' in result.output
    finally:
        with app.app_context():
            shop.db.engine.dispose()
        shop.events.close()
        sys.modules.pop("shop", None)


def test_a_stored_event_holds_its_data_as_the_value(eventlog: EventLog) -> None:
    """What a Python caller gets back is the value it published; the JSON text is there too."""
    stored = eventlog.publish("orders", {"order": 7, "items": ["kettle"]}, type="created")
    assert stored.data == {"order": 7, "items": ["kettle"]}
    assert stored.data_json == '{"order":7,"items":["kettle"]}'
    [read] = eventlog.events(EventFilter(streams=("orders",)))
    assert (read.data, read.data_json) == (stored.data, stored.data_json)
