"""The one exception type for mistakes a user can fix (bad CSV, bad config, missing credentials).

The CLI turns a `UserError` into a single line on stderr and a non-zero exit, without a traceback.
"""


class UserError(Exception):
    """A problem in the user's input or setup, with a message that says what to do."""


class Interrupted(UserError):
    """The user stopped a long command (Ctrl-C); finished work is kept and the command resumes."""
