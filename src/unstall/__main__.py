"""``python -m unstall``: the same as the ``unstall`` command."""

from unstall._cli import main

raise SystemExit(main())
