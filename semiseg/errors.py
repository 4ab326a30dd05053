"""The one exception type users see.

Anything a user can cause (a path, a config value, a raster, a checkpoint) raises `SemisegError` with a message
that says what was wrong and how to fix it. The command-line entry points catch it and print one line, so users
never get a traceback from deep inside torch for their own mistakes.
"""


class SemisegError(Exception):
    """A user-facing error: the message alone must be enough to fix the problem."""
