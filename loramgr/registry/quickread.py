"""``loramgr show NAME[@VERSION]`` on a SQLite registry, read with the standard library.

A CLI process that reads one record should not pay for importing SQLAlchemy and the ORM (about
150 ms, most of the command's time). This path answers only when it can answer exactly as
:meth:`loramgr.registry.api.Registry.resolve` would, and returns ``None`` otherwise, so the caller
falls back to the full registry: another database than SQLite, a registry file that does not exist
or is not at the newest schema (the full path migrates or refuses it), a sha256-prefix ref, or no
adapter of that name (a base, or an error the full path words). It never writes. The record comes
from the same converter as the full path's (:func:`loramgr.registry.rows.adapter`); a test holds the
two paths' ``show --json`` equal.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from types import SimpleNamespace
from typing import Any

from loramgr.config import Settings, sqlite_uri
from loramgr.formats.safetensors import TensorInfo
from loramgr.infra.store import Store
from loramgr.records import Adapter
from loramgr.registry import SCHEMA_HEAD, SCHEMA_TABLES, rows, sqlite_path

_JSON = ("peft_config", "tags")


def show_adapter(settings: Settings, ref: str) -> Adapter | None:
    """The full record of adapter ``ref`` (``NAME`` or ``NAME@VERSION``), or None: ask the registry."""
    path = sqlite_path(settings.db_url)
    if path is None or "?" in settings.db_url or not path.is_file() or ref.count("@") > 1:
        return None
    name, _, version = ref.partition("@")
    try:
        con = sqlite3.connect(sqlite_uri(path, "mode=ro"), uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        con.row_factory = sqlite3.Row
        head = con.execute("SELECT version_num FROM alembic_version").fetchall()
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if [r[0] for r in head] != [SCHEMA_HEAD] or not SCHEMA_TABLES <= tables:
            return None  # not at the head, or damaged: the full path migrates or refuses (exit 10)
        q = "SELECT * FROM adapter WHERE name = ?" + (" AND version = ?" if version else "")
        q += " ORDER BY version_num DESC LIMIT 1"
        row = con.execute(q, (name, version) if version else (name,)).fetchone()
        if row is None:
            return None
        tensors = tuple(
            TensorInfo(t["key"], t["dtype"], tuple(json.loads(t["shape"])), t["offset_begin"], t["offset_end"])
            for t in con.execute(
                "SELECT key, dtype, shape, offset_begin, offset_end FROM adapter_tensor WHERE adapter_id = ? "
                "ORDER BY key",
                (row["id"],),
            )
        )
        a = _row(row)
    except (sqlite3.Error, ValueError, TypeError, KeyError):  # locked, damaged, unexpected: the full path decides
        return None
    finally:
        con.close()
    return rows.adapter(a, Store(settings.store_dir).path_for(a.sha256), tensors=tensors)


def _row(row: sqlite3.Row) -> Any:
    """The row with the column types the ORM would give (JSON decoded, timestamps as datetime)."""
    d = {k: row[k] for k in row.keys()}
    for k in _JSON:
        d[k] = json.loads(d[k]) if isinstance(d[k], str) else d[k]
        if d[k] is not None and not isinstance(d[k], dict):  # the ORM's JsonObject refuses it: exit 10 there
            raise ValueError(f"{k} holds a {type(d[k]).__name__}")
    d["created_at"] = dt.datetime.fromisoformat(d["created_at"])
    return SimpleNamespace(**d)
