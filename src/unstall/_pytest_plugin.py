"""STUB (issue #5): the pytest plugin, registered through the ``pytest11`` entry point."""
