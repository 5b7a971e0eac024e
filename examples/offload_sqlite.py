"""A sqlite3 connection on its own thread, rows streamed with unstall.iterate.

sqlite3 connections refuse to be used from a thread other than the one that created
them: a one-thread ThreadPool keeps every call on the same thread.

Run: python examples/offload_sqlite.py
"""

from __future__ import annotations

import asyncio
import sqlite3

import unstall


async def main() -> None:
    with unstall.ThreadPool(max_workers=1, name="sqlite") as db:
        conn = await db.run(sqlite3.connect, ":memory:")
        await db.run(conn.execute, "create table t (n integer)")
        await db.run(conn.executemany, "insert into t values (?)", [(i,) for i in range(10_000)])

        cursor = await db.run(conn.execute, "select n from t where n % 1000 = 0")
        async for (n,) in unstall.iterate(cursor, batch=256, on=db):
            print("row", n)

        await db.run(conn.close)


if __name__ == "__main__":
    asyncio.run(main())
