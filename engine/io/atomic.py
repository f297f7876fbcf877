"""The one atomic file write: every file refmaster writes goes through :func:`atomic_path`.

Why: a master, a preset or an exported chain must never be left half-written — not by a full
disk, an exception, Ctrl-C or a SIGTERM. The data is written to a temporary file beside the
target, flushed and fsynced, then renamed over it (``os.replace`` is atomic on one file system),
and the folder is fsynced so the rename itself survives a crash. On any failure, and on SIGTERM,
the temporary file is removed. Created files get the permissions the user's umask allows
(``tempfile.mkstemp`` alone would leave them 0600).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Set, Union

PathLike = Union[str, os.PathLike]

_UMASK = os.umask(0)
os.umask(_UMASK)
_pending: Set[str] = set()
_lock = threading.Lock()
_handler_installed = False


def _on_sigterm(signum, frame):  # pragma: no cover - exercised in a child process by the tests
    """Remove the temporary files of writes in progress, then terminate as SIGTERM would."""
    with _lock:
        for tmp in list(_pending):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_cleanup() -> None:
    """Clean up on SIGTERM, unless the program has a SIGTERM handler of its own (``serve`` does:
    its handler raises, and the exception path below removes the file)."""
    global _handler_installed
    if _handler_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
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
