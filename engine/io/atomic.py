"""The one atomic file write: every file refmaster writes goes through :func:`atomic_path`.

Why: a master, a preset or an exported chain must never be left half-written — not by a full
disk, an exception, Ctrl-C or a SIGTERM. The data is written to a temporary file beside the
target, flushed and fsynced, then renamed over it (``os.replace`` is atomic on one file system),
and the folder is fsynced so the rename itself survives a crash. On any failure, and on SIGTERM
or SIGHUP, the temporary file is removed. Created files get the permissions the user's umask
allows (``tempfile.mkstemp`` alone would leave them 0600). :func:`check_output` refuses, before
any work, an output that is an input (also through a link) or that cannot be written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional, Set, Union

PathLike = Union[str, os.PathLike]

_UMASK = os.umask(0)
os.umask(_UMASK)
_pending: Set[str] = set()
_lock = threading.Lock()
_handler_installed = False


def _on_sigterm(signum, frame):  # pragma: no cover - exercised in a child process by the tests
    """Remove the temporary files of writes in progress, then terminate as the signal would."""
    with _lock:
        for tmp in list(_pending):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_cleanup() -> None:
    """Clean up on SIGTERM (and SIGHUP: the terminal closed), unless the program has a handler of
    its own (``serve`` does: its handler raises, and the exception path below removes the file)."""
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_sigterm)
    _handler_installed = True


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str = "") -> Iterator[Path]:
    """``with atomic_path(out) as tmp: write(tmp)`` — the write lands at ``out`` whole or not at all.

    ``tmp`` is a hidden file beside ``out`` (same folder, so the rename is atomic); ``suffix``
    keeps a writer that picks its format by extension happy (soundfile).
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    _install_sigterm_cleanup()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=str(folder))
    os.close(fd)
    with _lock:
        _pending.add(tmp)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        with _lock:
            _pending.discard(tmp)
    _fsync_folder(folder)


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(target, text.encode("utf-8"))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): it cannot be the other
        return False


def check_output(target: PathLike, inputs: Iterable[Optional[PathLike]] = (), what: str = "output") -> Path:
    """Refuse, before any work, an output that would destroy an input or cannot be written.

    Refused with one :class:`~engine.errors.UsageError` line: a ``target`` that is, or resolves
    to, one of ``inputs`` (the same path, a symbolic link to it, a hard link of it); a folder;
    a folder that is missing or where no file can be created (read-only, ``/proc``, a name too
    long for the file system: tried with the very temporary file :func:`atomic_path` will make);
    an existing file that may not be written (read-only, immutable). Returns ``Path(target)``.
    """
    from engine.errors import UsageError

    p = Path(target)
    for src in inputs:
        if src is not None and (_same_file(p, Path(src)) or p.resolve() == Path(src).resolve()):
            raise UsageError(f"{p}: the {what} is the input {src}; writing it would destroy the input "
                             f"(choose another {what} file)")
    folder = p.parent if str(p.parent) else Path(".")
    try:
        if p.is_dir():
            raise UsageError(f"{p}: the {what} is a folder; give a file name")
        if not folder.is_dir():
            raise UsageError(f"{p}: folder {folder} does not exist" if not folder.exists()
                             else f"{p}: {folder} is not a folder")
        if p.exists() and not os.access(p, os.W_OK):
            raise UsageError(f"{p}: the {what} exists and may not be written (read-only or immutable)")
    except OSError as e:  # a name too long for the file system, a folder we may not look into
        raise UsageError(f"{p}: cannot write the {what} ({e.strerror or e})") from None
    reason = _cannot_create(folder, f".{p.name}.", p.suffix or ".tmp")
    if reason:
        raise UsageError(f"{p}: cannot write the {what} in {folder} ({reason})")
    return p


def _cannot_create(folder: Path, prefix: str, suffix: str) -> Optional[str]:
    """Why no file can be created in ``folder`` (tried with a temporary file named as
    :func:`atomic_path` names it, then removed), or None."""
    try:
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(folder))
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(probe)
    return None


def folder_unwritable(folder: PathLike) -> Optional[str]:
    """Why files could not be written in ``folder`` (created with its parents if missing), or None:
    the reason from the nearest folder that exists."""
    f = Path(folder)
    while not f.exists() and f != f.parent:
        f = f.parent
    if not f.is_dir():
        return f"{f} is not a folder"
    return _cannot_create(f, ".refmaster-probe.", ".tmp")
