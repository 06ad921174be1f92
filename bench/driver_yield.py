"""Does the database driver yield to gevent? Heartbeats on an open stream, and /healthz, while
another request of the same `eventlog serve` worker waits 3 s on a lock in the database.

    python bench/driver_yield.py mysql+pymysql://root@127.0.0.1:3306/test
    python bench/driver_yield.py postgresql+psycopg://postgres@127.0.0.1:5432/test

A driver that blocked the worker would stop both for the whole wait (no heartbeat for 3 s).
"""
import os, subprocess, sys, threading, time, uuid
from pathlib import Path

import httpx
from sqlalchemy import select, text

from eventlog.database import make_engine
from eventlog.migrate import upgrade
from eventlog.models import Counter

base = sys.argv[1]
name = f"seam_gevent_{uuid.uuid4().hex[:8]}"
admin = make_engine(base, isolation_level="AUTOCOMMIT")
with admin.connect() as c:
    c.execute(text(f"CREATE DATABASE {admin.dialect.identifier_preparer.quote(name)}"))
url = admin.url.set(database=name).render_as_string(hide_password=False)
engine = make_engine(url); upgrade(engine)
port = 18000 + os.getpid() % 1000
env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLOG_")}
env.update(EVENTLOG_DATABASE_URL=url, EVENTLOG_HEARTBEAT_SECONDS="0.1", EVENTLOG_LOCK_TIMEOUT_SECONDS="10",
           EVENTLOG_STATEMENT_TIMEOUT_SECONDS="10", EVENTLOG_REPLY_TIMEOUT_SECONDS="20", EVENTLOG_AUDIT_TIMEOUT_SECONDS="2")
server = subprocess.Popen([str(Path(sys.executable).with_name("eventlog")), "serve", "--port", str(port), "--no-migrate"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base_url = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        httpx.get(base_url + "/healthz"); break
    except httpx.HTTPError: time.sleep(0.1)
beats = []
def listen():
    try:
        with httpx.stream("GET", base_url + "/streams/b/events", headers={"Accept": "text/event-stream"}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith(": heartbeat"): beats.append(time.monotonic())
    except httpx.HTTPError: pass
threading.Thread(target=listen, daemon=True).start()
time.sleep(1)
result = {}
with engine.begin() as conn:
    conn.execute(select(Counter.last_id).with_for_update())
    t = threading.Thread(target=lambda: result.update(s=httpx.post(base_url + "/streams/a/events", json={"data": 1}, timeout=30).status_code))
    t.start(); time.sleep(0.3)
    start = time.monotonic()
    lat = []
    while time.monotonic() - start < 3:
        t0 = time.monotonic(); httpx.get(base_url + "/healthz"); lat.append(time.monotonic() - t0); time.sleep(0.2)
    end = time.monotonic()
t.join()
during = [b for b in beats if start <= b <= end]
gaps = [b - a for a, b in zip(during, during[1:])]
print(f"{engine.dialect.name}: publish waited {end - start + 0.3:.1f} s on the lock (then {result.get('s')}); "
      f"heartbeats every 0.1 s: {len(during)} in {end - start:.1f} s, largest gap {max(gaps)*1000:.0f} ms; "
      f"/healthz meanwhile: max {max(lat)*1000:.0f} ms over {len(lat)} requests")
server.terminate(); server.wait(); engine.dispose()
with admin.connect() as c:
    c.execute(text(f"DROP DATABASE {admin.dialect.identifier_preparer.quote(name)}"))
