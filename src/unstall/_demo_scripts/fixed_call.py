"""The fix for ``blocking_call.py``: the blocking call runs in a worker thread.

One line changed: ``test1`` awaits ``unstall.to_thread(slow_function)``, so the loop
stays free while ``slow_function`` sleeps, and ``test2`` ticks on time::

    unstall run examples/fixed_call.py

Optional arguments: the blocking time and the tick, in seconds.
"""

import asyncio
import sys
import time

import unstall

BLOCK_S, TICK_S = (float(arg) for arg in sys.argv[1:3]) if len(sys.argv) > 2 else (3.0, 0.5)


def slow_function() -> int:
    time.sleep(BLOCK_S)
    return 42


async def test1() -> None:
    await unstall.to_thread(slow_function)
    print("Finish test1", flush=True)


async def test2() -> None:
    for tick in range(10):
        print(tick, flush=True)
        await asyncio.sleep(TICK_S)
    print("Finish test2", flush=True)


async def main() -> None:
    await asyncio.gather(test1(), test2())


if __name__ == "__main__":
    asyncio.run(main())
