"""Strict mode: flag known blocking calls made on an event loop's thread, however short.

``api`` holds ``strict()``; ``rules`` lists the calls, ``patch`` wraps them, ``check``
decides on each call, ``allow`` holds the allow-lists, ``report`` builds the error or
warning, and ``config`` reads ``[tool.unstall]``.
"""
