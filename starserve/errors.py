"""User-facing errors.

A `StarserveError` carries a message meant for a person: one line, naming the file or the
setting at fault and what is wrong with it. The CLI prints it as `error: <message>` and exits
with status 2, without a traceback.
"""


class StarserveError(Exception):
    """An error caused by the user's input (a file, a flag, a setting), not by a bug."""
