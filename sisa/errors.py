"""The one exception type a user can act on.

Everything in `sisa/` that fails because of bad input (a flag, a folder, a run that does not match)
raises `SisaError` with a single line that names the problem and the fix. The command-line scripts
print that line and exit with status 1; a traceback means a bug in this project.
"""


class SisaError(Exception):
    """A problem with the user's input or files, explained in one line."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type's name if there is none), cut to
    `limit` characters: how another error or a warning quotes it in one line."""
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)[:limit]
