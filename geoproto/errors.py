"""The one exception type the CLI turns into a one-line message and a non-zero exit code."""


class GeoprotoError(Exception):
    """A problem with the user's input or environment, stated so they can fix it."""
