"""One exception type for every mistake a user can fix.

The CLI catches :class:`UserError`, prints its message in one line (no traceback) and
exits with code 2. Raise it with a message that names the fix, e.g.
``UserError("unknown decoder 'jacobbi'; choose one of: ar, jacobi, ... (see `cllm-bench list`)")``.
"""


class UserError(Exception):
    """A bad input the user can fix: unknown name, missing file, malformed parameter."""


class DataError(UserError):
    """A missing, partial or corrupt data set file."""
