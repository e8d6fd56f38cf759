"""The one error type of `refimpl` for input a user can get wrong (file, option, value),
and the checks every user-named file goes through.

The CLI prints its message as one line on stderr and exits with status 2, so the
message must name the file or option and say what is wrong.

Files are opened only once they are known to be regular files of a bounded size:
opening a FIFO waits for a writer (forever, when there is none), and /dev/zero or
a huge file would be read without end.
"""
from __future__ import annotations

import os
import stat

MAX_TEXT_BYTES = 256 << 20   # the largest text file read whole (token lists, traces): 256 MiB


class InputError(ValueError):
    """Bad input from the user: a file, an option or a value."""


def regular_file_size(path, what: str) -> int:
    """The size of a user-named file; an InputError starting with `what` when it is
    missing, a directory, a FIFO, a device or otherwise not a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path}: cannot read ({_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {path}: is a {_kind(info.st_mode)}, not a regular file")
    return info.st_size


def read_bytes(path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; InputError otherwise."""
    size = regular_file_size(path, what)
    if size > max_bytes:
        raise InputError(f"{what} {path}: file of {size} bytes is larger than the {max_bytes} bytes allowed")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)   # read(n) allocates n bytes up front: n from the file, not the limit
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({_reason(exc)})") from None
    if len(data) > size:   # it grew since stat
        raise InputError(f"{what} {path}: changed while being read")
    return data


def read_text(path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a file the user named; an InputError starting with `what`
    (the option or kind of file, e.g. "--tokens" or "trace") when it is missing,
    not a regular file, larger than max_bytes, unreadable or not UTF-8."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def check_output_path(path, what: str) -> None:
    """Raise InputError unless `path` can be created or overwritten as a file: run before
    any work, so that a typo in the directory does not cost the whole run."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path}: cannot write ({_reason(exc)})") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path}: is a directory, not a file")
    if info is not None and stat.S_ISFIFO(info.st_mode):
        raise InputError(f"{what} {path}: is a FIFO, not a regular file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(path if info is not None else parent, os.W_OK):
        raise InputError(f"{what} {path}: permission denied")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)
