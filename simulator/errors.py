"""The one error type of `simulator` for input a user can get wrong (file, option, value).

The CLI prints its message as one line on stderr and exits with status 2, so the
message must name the file or option and say what is wrong.
"""


class InputError(ValueError):
    """Bad input from the user: a file, an option or a value."""


#: The largest input file the simulator reads (an arrival trace of millions of requests fits).
MAX_INPUT_BYTES = 64 * 2**20


def read_text(path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most max_bytes; an InputError starting with
    `what` (the option) otherwise. (refimpl and hwmodels have their own: the layering keeps
    the simulator's imports of refimpl to the trace schema.)"""
    import os
    import stat

    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {path}: not a regular file")
    if info.st_size > max_bytes:
        raise InputError(f"{what} {path}: file of {info.st_size} bytes is larger than the {max_bytes} allowed")
    try:
        with open(path, "rb") as f:
            data = f.read(info.st_size + 1)
        return data.decode("utf-8")
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None
