"""Types flow through the public API: checked by running mypy --strict on a snippet."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is part of the [test] extra")

SNIPPET = textwrap.dedent(
    """
    from collections.abc import Coroutine
    from typing import Any, assert_type

    import unstall

    @unstall.offload
    def parse(x: int, sep: str = ",") -> list[str]:
        return []

    @unstall.offload(limit=2, timeout=3.0)
    def digest(data: bytes) -> int:
        return 0

    async def main() -> None:
        pending = parse(1, sep=";")
        _ = assert_type(pending, Coroutine[Any, Any, list[str]])
        pending.close()
        assert_type(await parse(1), list[str])
        assert_type(await digest(b""), int)
        assert_type(await unstall.to_thread(len, "abc"), int)
        assert_type(await unstall.to_process(len, "abc"), int)
        pool = unstall.ThreadPool(max_workers=1)
        assert_type(await pool.run(len, "abc"), int)
        async for item in unstall.iterate(["a", "b"]):
            assert_type(item, str)
        await parse("not an int")  # E: arg-type
    """
)


def test_offload_keeps_the_signature_for_type_checkers(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    stdout, stderr, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path)]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    # exactly one error: the deliberate bad argument, on its line
    assert len(errors) == 1, stdout + stderr
    assert '"parse" has incompatible type "str"; expected "int"' in errors[0]
