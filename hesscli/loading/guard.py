"""Guards on the files a run touches: inputs are regular files, and no output overwrites one.

Two rules of the error boundary live here:

- **Inputs are regular files.** A checkpoint, data or model path that is a FIFO, a device or a
  socket is refused from ``os.stat`` alone, before anything opens it: opening a FIFO for reading
  blocks until a writer comes, which looks like a hang with no output.
- **Outputs never overwrite an input, and can be written.** ``--output`` and ``--plot`` are
  compared with every input by *file identity* (``st_dev``, ``st_ino``), so hard links, symbolic
  links and ``dir/../`` spellings of an input are all caught; and they are checked to be
  writable *before* the run, so that a long run does not end in a write error after its result
  was printed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from hesscli.errors import ConfigError, HesscliError
from hesscli.loading.imports import looks_like_spec

#: What ``os.stat`` calls the kinds of file that are not regular files or directories.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a directory, else ``None``.

    Only ``os.stat`` is used (following symbolic links): nothing is opened, so a FIFO never
    blocks. A path that does not exist, or cannot be stat'ed, is ``None``: the caller's own
    checks name that problem.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None


def refuse_special_file(path: Path, *, what: str, error: type[HesscliError]) -> None:
    """Raise ``error`` when ``path`` is a FIFO, a device or a socket (never opening it).

    Args:
        path: The input about to be read.
        what: Noun for the message, e.g. ``"checkpoint"`` or ``"data file"``.
        error: The error class of the caller's domain.
    """
    kind = special_kind(path)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file", f"pass the {what} file itself")


def refuse_special_inputs(inputs: Iterable[str | Path | None]) -> None:
    """Refuse every named input (path or ``file.py:Name`` spec) that is not a regular file.

    Called by the commands before anything is loaded, on the paths given on the command line.
    """
    for item in inputs:
        path = _input_path(item)
        if path is not None:
            refuse_special_file(path, what="input", error=ConfigError)


def _input_path(item: str | Path | None) -> Path | None:
    """The file an input names: the path itself, or the file part of a ``file.py:Name`` spec."""
    if item is None:
        return None
    path = Path(item).expanduser()
    if not path.exists() and looks_like_spec(str(item)):
        path = Path(str(item).rpartition(":")[0]).expanduser()  # file.py:Name → file.py
    return path if path.exists() else None


def same_file(first: Path, second: Path) -> bool:
    """Whether two existing paths are the same file (device and inode: hard links included)."""
    try:
        a, b = os.stat(first), os.stat(second)
    except (OSError, ValueError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _inside(target: Path, folder: Path) -> bool:
    """Whether the existing file ``target`` lies inside the directory ``folder``."""
    try:
        return target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def refuse_to_overwrite(
    output: Path | None, inputs: Iterable[str | Path | None], *, option: str = "--output"
) -> None:
    """Raise if ``output`` is a directory, one of ``inputs``, or cannot be written.

    Inputs are compared by identity (device and inode), so a hard link or a symbolic link to
    an input is refused like the input itself. An existing file inside an input *folder* (a
    Hugging Face checkpoint folder) is refused too: overwriting it would change that input.

    Args:
        output: The file about to be written, or ``None``.
        inputs: Every file the run reads (paths or ``file.py:Name`` specs; folders allowed).
        option: The option's name, for the message (``--output``, ``--plot``).
    """
    if output is None:
        return
    target = output.expanduser()
    if target.is_dir():
        raise ConfigError(f"{option} {output} is a directory", "name a file")
    if target.exists():
        for item in inputs:
            path = _input_path(item)
            if path is None:
                continue
            if same_file(path, target) or (path.is_dir() and _inside(target, path)):
                raise ConfigError(
                    f"{option} {output} is one of the input files"
                    + ("" if same_file(path, target) else f" (inside {item})"),
                    "write the result elsewhere",
                )
    check_writable(output, option=option)


def check_writable(output: Path, *, option: str = "--output") -> None:
    """Raise unless ``output`` can be written, changing nothing.

    An existing regular file is opened for appending and closed unwritten; a new file is
    created and removed again. A FIFO or device named on purpose (``/dev/null``, a process
    substitution) is left alone: opening a FIFO with no reader would block.
    """
    target = output.expanduser()
    parent = target.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(
            f"{option} {output}: {parent} {what}", "create the folder or name another"
        )
    if special_kind(target) is not None:
        return
    existed = target.exists()
    flags = os.O_WRONLY | (os.O_APPEND if existed else os.O_CREAT | os.O_EXCL)
    try:
        handle = os.open(target, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EEXIST:  # created meanwhile by someone else: writable enough
            return
        raise ConfigError(
            f"cannot write {option} {output}: {exc.strerror}",
            "check the folder's permissions, or name another file",
        ) from exc
    os.close(handle)
    if not existed:
        target.unlink(missing_ok=True)


def check_outputs_differ(output: Path | None, plot: Path | None) -> None:
    """Refuse ``--plot`` and ``--output`` naming the same file (by identity, or by path)."""
    if output is None or plot is None:
        return
    first, second = output.expanduser(), plot.expanduser()
    if same_file(first, second) or first.resolve() == second.resolve():
        raise ConfigError(f"--plot and --output both name {plot}", "give them different files")
