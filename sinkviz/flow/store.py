"""The result store: diskcache under ``cache/results`` (or ``$SINKVIZ_STORE_DIR``) holding JSON and npz bytes only.

Each analysis is two entries: ``data:<key>`` (npz bytes, loaded with allow_pickle=False)
written first, then ``meta:<key>`` (JSON text). An entry without both, or one that fails
to parse, counts as missing and is deleted, so a bad entry is recomputed, never shown.

A store folder is not trusted. Every row is checked to be what this store writes (a str key
``meta:``/``data:`` + 32 hex digits, a value that is not a pickle, and a file, if any, named
``xx/yy/<28 hex>.val`` inside the store folder) before anything is unpickled, read, opened or
deleted; any other row is moved to the ``Quarantine`` table, its file left alone, and reported.
A store that cannot be written (read-only, full disk) is still read; results are then not saved.
Nothing is evicted: rows go when the user deletes them (History page) or the folder.
"""

import contextlib
import errno
import io
import json
import logging
import os
import re
import sqlite3
import threading
import zipfile
from urllib.parse import quote

import diskcache
import numpy as np

from sinkviz.paths import cache_root

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"(meta|data):[0-9a-f]{32}\Z")
FILE_PATTERN = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val\Z")
MODES = {"meta": (diskcache.core.MODE_RAW, diskcache.core.MODE_TEXT),
         "data": (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY)}
UNREADABLE = (ValueError, KeyError, OSError, EOFError, TypeError, AttributeError, sqlite3.Error,
              zipfile.BadZipFile, UnicodeDecodeError)


_warned: set[str] = set()


class PlantedRow(ValueError):
    """A store row that this store did not write."""


def check_key(key, raw) -> str:
    """``key`` if it is a key this store writes; PlantedRow (nothing unpickled) otherwise."""
    if not raw:
        raise PlantedRow("a pickled key")
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise PlantedRow(f"a key this store does not write ({_short(key)})")
    return key


def check_filename(directory: str, filename) -> str:
    """The full path of a value file this store wrote (hash-named, inside ``directory``)."""
    if not isinstance(filename, str) or not FILE_PATTERN.match(filename.replace(os.sep, "/")):
        raise PlantedRow(f"a file name this store does not write ({_short(filename)})")
    root = os.path.realpath(directory)
    full = os.path.realpath(os.path.join(root, filename))
    if os.path.dirname(os.path.dirname(os.path.dirname(full))) != root:
        raise PlantedRow(f"a file outside the store ({_short(filename)})")
    return full


def row_problem(directory: str | None, key, raw, mode, filename) -> str | None:
    """Why a Cache row is not one this store writes, or None. Without ``directory`` the file
    name is checked by pattern only (fetch and remove check where it really leads)."""
    try:
        check_key(key, raw)
        if mode not in MODES[key[:4]]:
            raise PlantedRow(f"{key}: a value of mode {mode}")
        if filename is not None and directory is not None:
            check_filename(directory, filename)
        elif filename is not None and not (isinstance(filename, str) and FILE_PATTERN.match(filename)):
            raise PlantedRow(f"a file name this store does not write ({_short(filename)})")
    except PlantedRow as err:
        return str(err)
    return None


def _short(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(bytes(value))} bytes"
    return repr(value)[:80]


class _SafeDisk(diskcache.Disk):
    """diskcache's Disk that refuses pickles and foreign rows and leaves no partial file."""

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.local = threading.local()   # .written: the value file the last set() wrote

    def get(self, key, raw):
        return super().get(check_key(key, raw), raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not read and not isinstance(value, (bytes, str)):
            raise TypeError(f"the result store keeps bytes and str only, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise PlantedRow("refusing a pickled value in the result store")
        if filename is not None:
            check_filename(self._directory, filename)
        return super().fetch(mode, filename, value, read)

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        name, full_path = super().filename(key, value)
        self.local.written = name
        return name, full_path

    def _write(self, full_path, iterator, mode, encoding=None):
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except OSError:   # e.g. disk full: leave no partial file behind
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise

    def remove(self, file_path):
        try:
            check_filename(self._directory, file_path)
        except PlantedRow as err:
            log.warning("result store: not deleting %s", err)
            return
        super().remove(file_path)


class _ReadOnlyCache:
    """A store folder that cannot be written: its entries are read, nothing is saved."""

    def __init__(self, directory: str):
        self.disk = _SafeDisk(directory)
        self._lock = threading.Lock()
        path = os.path.join(directory, diskcache.core.DBNAME)
        try:
            self._con = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, check_same_thread=False)
            self._con.execute("SELECT 1 FROM Cache LIMIT 1")
        except sqlite3.Error:
            self._con = None

    def _sql(self, query, args=()):
        if self._con is None:
            return _NoRows()
        with self._lock:
            return _NoRows(self._con.execute(query, args).fetchall())

    def get(self, key):
        rows = self._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
        return self.disk.fetch(*rows[0], False) if rows else None

    def set(self, key, value):
        raise OSError(errno.EROFS, "the store cannot be written")

    def delete(self, key):
        return False

    def __contains__(self, key):
        return bool(self._sql("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall())


class _NoRows:
    def __init__(self, rows=()):
        self.rows = list(rows)

    def fetchall(self):
        return self.rows


class ResultStore:
    def __init__(self, directory=None):
        self.directory = str(directory or os.environ.get("SINKVIZ_STORE_DIR")
                             or cache_root() / "results")
        self.quarantined: list[str] = []   # one line per row moved to quarantine
        self.warning: str | None = None    # why results are not being saved, once that happens
        self._opened = self._open()

    def _open(self):
        """The cache with foreign rows quarantined; read-only access if it cannot be written."""
        try:
            # no eviction: diskcache's default culls past 1 GB, which dropped an audit's own rows
            cache = diskcache.Cache(self.directory, disk=_SafeDisk, eviction_policy="none")
        except (OSError, sqlite3.Error, diskcache.Timeout) as err:
            self._cannot_save(err)
            return _ReadOnlyCache(self.directory)
        self._scan(cache)
        return cache

    @property
    def _cache(self):
        """The open cache, reopened afresh if its folder was deleted while we ran."""
        if not os.path.exists(os.path.join(self.directory, diskcache.core.DBNAME)):
            log.warning("result store %s disappeared; starting a new one", self.directory)
            self._opened = self._open()
        return self._opened

    def _cannot_save(self, err: Exception) -> None:
        if self.warning is None:
            self.warning = (f"the result store {self.directory} cannot be written "
                            f"({getattr(err, 'strerror', None) or err}); results are computed but not saved")
            if self.directory not in _warned:   # once per folder and process
                _warned.add(self.directory)
                log.warning("%s", self.warning)

    def _rows(self, cache) -> list[tuple]:
        """Every Cache row's (rowid, key, raw, mode, filename); [] (logged) if the table cannot be read."""
        try:
            return cache._sql("SELECT rowid, key, raw, mode, filename FROM Cache").fetchall()
        except (sqlite3.Error, diskcache.Timeout) as err:
            log.warning("result store %s cannot be listed: %s", self.directory, err)
            return []

    def _scan(self, cache, deep: bool = False) -> list[str]:
        """Quarantine the rows this store did not write; the keys of the others. ``deep``
        also follows each file name (symbolic links) after a fetch refused one."""
        keys = []
        for rowid, key, raw, mode, filename in self._rows(cache):
            problem = row_problem(self.directory if deep else None, key, raw, mode, filename)
            if problem is None:
                keys.append(key)
            else:
                self._quarantine(cache, rowid, problem)
        return keys

    def _quarantine(self, cache, rowid: int, problem: str) -> None:
        """Move a row to the Quarantine table (its file, if any, is not touched) and report it."""
        line = f"row {rowid}: {problem}"
        if line not in self.quarantined:
            self.quarantined.append(line)
            log.warning("result store %s: quarantined %s", self.directory, line)
        try:
            with cache.transact():
                cache._sql("CREATE TABLE IF NOT EXISTS Quarantine AS SELECT * FROM Cache WHERE 0")
                cache._sql("INSERT INTO Quarantine SELECT * FROM Cache WHERE rowid = ?", (rowid,))
                cache._sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
        except (AttributeError, sqlite3.Error, diskcache.Timeout) as err:  # read-only: skipped on read
            log.warning("result store: row %s stays in place (%s)", rowid, err)

    def get(self, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of a complete, readable entry, else None."""
        try:
            meta_text = self._cache.get(f"meta:{key}")
            if meta_text is None:
                return None
            data = self._cache.get(f"data:{key}")
            if data is None:
                raise ValueError("arrays missing")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            meta = json.loads(meta_text)
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a JSON {type(meta).__name__}, not an object")
            return meta, arrays
        except PlantedRow:
            self._scan(self._cache, deep=True)
            return None
        except diskcache.Timeout:
            return None   # busy, not broken: computed again, nothing deleted
        except UNREADABLE as err:
            self.discard(key, err)
            return None

    def put(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> bool:
        """Write arrays, then meta. False (one warning, no file left) when the store cannot be written."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            self._set(f"data:{key}", buffer.getvalue())
            self._set(f"meta:{key}", json.dumps(meta))
            return True
        except (OSError, sqlite3.Error, diskcache.Timeout) as err:
            self._cannot_save(err)
            log.info("could not store analysis %s: %s", key, err)
            self.delete(key)
            return False

    def _set(self, name: str, value) -> None:
        """cache.set(), removing the value file it wrote if its row was not saved."""
        cache = self._cache
        cache.disk.local.written = None
        try:
            cache.set(name, value)
        except BaseException:
            if getattr(cache.disk.local, "written", None):
                cache.disk.remove(cache.disk.local.written)
            raise

    def discard(self, key: str, reason: Exception) -> None:
        """Drop an unreadable entry so that it is recomputed."""
        log.warning("discarding unreadable store entry %s: %s", key, reason)
        self.delete(key)

    def delete(self, key: str) -> None:
        for part in ("meta", "data"):
            try:
                self._cache.delete(f"{part}:{key}")
            except (OSError, sqlite3.Error, diskcache.Timeout):
                pass

    def metas(self) -> list[dict]:
        """Meta of every readable stored analysis, newest first (unreadable ones are discarded)."""
        found = [meta for meta in map(self._meta, self._scan(self._cache)) if meta is not None]
        return sorted(found, key=lambda m: m["created"] if isinstance(m.get("created"), (int, float)) else 0,
                      reverse=True)

    def _meta(self, name: str) -> dict | None:
        """The JSON object under ``meta:<key>`` (None for data rows and unreadable metas)."""
        if not name.startswith("meta:"):
            return None
        try:
            meta = json.loads(self._cache.get(name))
            if not isinstance(meta, dict):
                raise ValueError(f"meta is a JSON {type(meta).__name__}, not an object")
            if meta.get("key") != name.removeprefix("meta:"):
                raise ValueError("meta names another key")
            return meta
        except PlantedRow:
            self._scan(self._cache, deep=True)
        except diskcache.Timeout:
            pass
        except UNREADABLE as err:
            self.discard(name.removeprefix("meta:"), err)
        return None

    def __contains__(self, key: str) -> bool:
        return f"meta:{key}" in self._cache
