"""The result store: diskcache under ``cache/results`` (or ``$SINKVIZ_STORE_DIR``) holding JSON and npz bytes only.

Each analysis is two entries: ``data:<key>`` (npz bytes, loaded with allow_pickle=False)
written first, then ``meta:<key>`` (JSON text). An entry without both, or one that fails
to parse, counts as missing and is deleted, so a bad entry is recomputed, never shown.
"""

import io
import json
import logging
import os
import sqlite3

import diskcache
import numpy as np

from .paths import cache_root

log = logging.getLogger(__name__)


class _NoPickleDisk(diskcache.Disk):
    """Stores and returns only bytes and str: a planted pickle is refused, never loaded."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not read and not isinstance(value, (bytes, str)):
            raise TypeError(f"the result store keeps bytes and str only, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("refusing a pickled value in the result store")
        return super().fetch(mode, filename, value, read)


class ResultStore:
    def __init__(self, directory=None):
        self.directory = str(directory or os.environ.get("SINKVIZ_STORE_DIR")
                             or cache_root() / "results")
        self._opened = diskcache.Cache(self.directory, disk=_NoPickleDisk)

    @property
    def _cache(self) -> diskcache.Cache:
        """The open cache, reopened afresh if its folder was deleted while we ran."""
        if not os.path.exists(os.path.join(self.directory, diskcache.core.DBNAME)):
            log.warning("result store %s disappeared; starting a new one", self.directory)
            self._opened = diskcache.Cache(self.directory, disk=_NoPickleDisk)
        return self._opened

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
            return json.loads(meta_text), arrays
        except (ValueError, KeyError, OSError, EOFError, TypeError, sqlite3.Error) as err:
            self.discard(key, err)
            return None

    def put(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> bool:
        """Write arrays, then meta. False (and a log line) when the write fails, e.g. disk full."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        try:
            self._cache.set(f"data:{key}", buffer.getvalue())
            self._cache.set(f"meta:{key}", json.dumps(meta))
            return True
        except (OSError, sqlite3.Error) as err:
            log.error("could not store analysis %s: %s", key, err)
            self.delete(key)
            return False

    def discard(self, key: str, reason: Exception) -> None:
        """Drop an unreadable entry so that it is recomputed."""
        log.warning("discarding unreadable store entry %s: %s", key, reason)
        self.delete(key)

    def delete(self, key: str) -> None:
        for part in ("meta", "data"):
            try:
                self._cache.delete(f"{part}:{key}")
            except (OSError, sqlite3.Error):
                pass

    def metas(self) -> list[dict]:
        """Meta of every stored analysis, newest first."""
        found = []
        for name in list(self._cache.iterkeys()):
            if isinstance(name, str) and name.startswith("meta:"):
                try:
                    found.append(json.loads(self._cache.get(name)))
                except (ValueError, TypeError, OSError, sqlite3.Error):
                    continue
        return sorted(found, key=lambda m: m.get("created", 0), reverse=True)

    def __contains__(self, key: str) -> bool:
        return f"meta:{key}" in self._cache
