"""Move blocking calls off the event loop: to_thread, @offload with a limit and a timeout.

Run: python examples/offload_basics.py
"""

from __future__ import annotations

import asyncio
import time

import unstall

# At most 2 "slow API" calls at a time, shared by both functions below.
api_slots = unstall.Limiter(2)


@unstall.offload(limit=api_slots, timeout=2.0)
def fetch_user(user_id: int) -> dict[str, object]:
    time.sleep(0.2)  # a blocking client library
    return {"id": user_id, "name": f"user{user_id}"}


@unstall.offload(limit=api_slots)
def fetch_orders(user_id: int) -> list[int]:
    time.sleep(0.2)
    return [user_id * 10 + i for i in range(3)]


@unstall.offload(timeout=0.3)
def crunch_until_told_to_stop() -> int:
    done = 0
    while not unstall.cancelled():  # turns True when the timeout expires
        time.sleep(0.01)
        done += 1
    return done


async def main() -> None:
    digest = await unstall.to_thread(sum, range(1_000_000))  # drop-in for asyncio.to_thread
    print("sum:", digest)

    started = time.perf_counter()
    users, orders = await asyncio.gather(
        asyncio.gather(*(fetch_user(i) for i in range(3))),
        asyncio.gather(*(fetch_orders(i) for i in range(3))),
    )
    print(f"{len(users)} users, {len(orders)} order lists in {time.perf_counter() - started:.1f}s")

    try:
        await crunch_until_told_to_stop()
    except TimeoutError:
        print("timed out; the worker saw unstall.cancelled() and stopped")


if __name__ == "__main__":
    asyncio.run(main())
