"""A consumer for the crash test, run as a process the test kills -9 at random moments.

For each event of ``orders`` it writes one row (its effect) into its own database, and moves
its position in the same transaction. The effects table has no unique key on purpose: an
event done twice would show as two rows.

    python client_consumer.py SERVER_URL DATABASE_URL LAST_ID
"""

from __future__ import annotations

import random
import sys
import time

from sqlalchemy import BigInteger, Column, MetaData, Table, create_engine, insert

from eventlog.client import Client
from eventlog.client.positions import Positions

NAME = "worker"


def main(server: str, database: str, last_id: int) -> None:
    engine = create_engine(database)
    metadata = MetaData()
    effects = Table("effects", metadata, Column("event_id", BigInteger, nullable=False))
    positions = Positions(metadata)
    metadata.create_all(engine)
    with Client(server) as client:
        for event in client.subscribe("orders", after=positions.get(engine, NAME)):
            print(event.id, flush=True)  # tells the test it is working
            with engine.begin() as conn:
                conn.execute(insert(effects).values(event_id=event.id))
                time.sleep(random.uniform(0.005, 0.015))  # the work: slow, so kills find it busy
                positions.advance(conn, NAME, event.id)
            if event.id >= last_id:
                return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
