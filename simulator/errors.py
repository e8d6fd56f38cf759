"""The one error type of `simulator` for input a user can get wrong (file, option, value).

The CLI prints its message as one line on stderr and exits with status 2, so the
message must name the file or option and say what is wrong.
"""


class InputError(ValueError):
    """Bad input from the user: a file, an option or a value."""

