"""Data files at rest are private: folders 0700, files 0600 (they hold customers' names, numbers
and messages). Used by every store that writes to disk (SQLite outbox, Redis spool, state).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite's companions of a database file; SQLite creates them with the database's own mode.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _never_tighten(directory: Path) -> bool:
    """Folders that are not ours to lock down even when a data file sits in them."""
    here = {Path.cwd().resolve(), Path.home().resolve(), Path("/").resolve(), Path(tempfile.gettempdir()).resolve()}
    return directory in here


def private_dir(directory: str | os.PathLike) -> Path:
    """Create `directory` 0700, or tighten an existing one we own to 0700 (with a warning that
    says what it was). One we do not own, or the working/home folder, is left as it is, with
    a warning: the files in it are 0600 all the same."""
    path = Path(directory).resolve()
    if not path.exists():
        if not path.parent.exists():  # missing parents are ours too (data/ for data/journal/)
            private_dir(path.parent)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        return path
    st = path.stat()
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if not loose:
        return path
    was = oct(stat.S_IMODE(st.st_mode))
    if st.st_uid == os.geteuid() and not _never_tighten(path) and not any(path.iterdir()):
        os.chmod(path, DIR_MODE)  # just made by someone else's mkdir (umask 022): nothing to tell
        return path
    if st.st_uid != os.geteuid() or _never_tighten(path):
        log.warning("data folder readable by others: left as it is, files are 0600", path=str(path), mode=was)
        return path
    try:
        os.chmod(path, DIR_MODE)
    except OSError as exc:
        log.warning("data folder readable by others: cannot tighten it", path=str(path), mode=was, error=str(exc))
        return path
    log.warning("data folder was readable by others: tightened to 0700", path=str(path), mode=was)
    return path


def private_file(path: str | os.PathLike, companions: tuple[str, ...] = SQLITE_SUFFIXES) -> None:
    """Make sure `path` exists as 0600 before a library opens it, in a private folder; existing
    files (and SQLite's -wal/-shm companions) are tightened to 0600."""
    p = Path(path)
    private_dir(p.parent)
    fd = os.open(p, os.O_CREAT | os.O_RDWR, FILE_MODE)
    os.close(fd)
    for suffix in companions:
        f = Path(f"{p}{suffix}")
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
            os.chmod(f, FILE_MODE)
