"""``python -m unstall``: the same as the ``unstall`` command."""

from unstall._cli.main import main

# The guard matters: spawn-based process pools (anyio's, multiprocessing's) re-import the
# parent's __main__ module in their workers, and must not run the CLI there.
if __name__ == "__main__":
    raise SystemExit(main())
