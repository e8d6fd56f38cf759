"""The one error type of `refimpl` for input a user can get wrong (file, option, value).

The CLI prints its message as one line on stderr and exits with status 2, so the
message must name the file or option and say what is wrong.
"""


class InputError(ValueError):
    """Bad input from the user: a file, an option or a value."""


def read_text(path, what: str) -> str:
    """The UTF-8 text of a file the user named; an InputError starting with `what`
    (the option or kind of file, e.g. "--tokens" or "trace") when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.__class__.__name__}: {exc})") from None
