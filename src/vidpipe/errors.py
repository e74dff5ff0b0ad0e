"""The one exception type users see: its message is a complete, one-line explanation."""


class VidpipeError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""
