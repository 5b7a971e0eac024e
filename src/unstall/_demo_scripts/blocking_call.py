"""A blocking call inside a coroutine freezes every other task on the event loop.

``test1`` calls ``slow_function``, which blocks in ``time.sleep`` (stand-in for any
blocking call: an HTTP request with ``requests``, a database query, a big file read).
``test2`` should print a number every half second, but nothing runs on the loop until
``slow_function`` returns. Find it with::

    unstall run examples/blocking_call.py

The fix is in ``fixed_call.py``. Optional arguments: the blocking time and the tick, in
seconds (``unstall demo --fast`` uses shorter ones).
"""

import asyncio
import sys
import time

BLOCK_S, TICK_S = (float(arg) for arg in sys.argv[1:3]) if len(sys.argv) > 2 else (3.0, 0.5)


def slow_function() -> int:
    time.sleep(BLOCK_S)
    return 42


async def test1() -> None:
    slow_function()
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
