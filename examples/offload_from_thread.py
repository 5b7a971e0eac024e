"""Report progress to the event loop from inside a worker, with unstall.from_thread.

Run: python examples/offload_from_thread.py
"""

from __future__ import annotations

import asyncio
import time

import unstall


def download(queue: asyncio.Queue[int], parts: int) -> str:
    for part in range(parts):
        time.sleep(0.05)  # a blocking transfer
        unstall.from_thread.run_sync(queue.put_nowait, part)  # loop objects: on the loop
    return "done"


async def main() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    transfer = asyncio.ensure_future(unstall.to_thread(download, queue, 5))
    for _ in range(5):
        print("received part", await queue.get())
    print(await transfer)


if __name__ == "__main__":
    asyncio.run(main())
