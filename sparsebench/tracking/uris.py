"""Tracking URIs as strings: which store a command uses, and how to show one without its password.

Pure string and path work with no MLflow import, so the CLI, reports and sweeps can resolve, check
and print URIs cheaply; ``store`` opens them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sparsebench.errors import ConfigError

DEFAULT_STORE = Path("mlruns")
EXPERIMENT = "sparsebench"

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
"""SQLAlchemy backends MLflow stores runs in; a ``+driver`` suffix is allowed (``postgresql+psycopg``)."""
OTHER_SCHEMES = ("file", "http", "https", "databricks")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an sqlite file under ./mlruns/ (absolute, so it survives a ``cd``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.absolute() / 'mlflow.db'}"


def resolve_uri(explicit: str | None = None) -> str:
    """The store a command uses: ``explicit`` (``--tracking-uri``) > $MLFLOW_TRACKING_URI > ./mlruns.

    Resolved once per command (``sparsebench.env.Env``), so every part of a command talks to the
    same store even if the working directory or the environment changes later. An unknown scheme
    is refused here, before anything waits on it.
    """
    uri = (explicit or "").strip() or default_tracking_uri()
    check_scheme(uri)
    return uri


def scheme_of(uri: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``; ``""`` for a plain path (a local folder store)."""
    if re.match(r"^[A-Za-z]:[\\/]", uri):  # a Windows drive letter, not a scheme
        return ""
    head, sep, _ = uri.partition(":")
    return head.split("+", 1)[0].lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else ""


def check_scheme(uri: str) -> None:
    """Refuse a URI no MLflow backend takes, naming the ones that work."""
    scheme = scheme_of(uri)
    if scheme and scheme not in DATABASE_SCHEMES + OTHER_SCHEMES:
        raise ConfigError(
            f"tracking URI {mask_uri(uri)}: unknown scheme {scheme!r}; use sqlite:///PATH/mlflow.db, "
            "postgresql://USER@HOST/DB, http(s)://SERVER or a folder"
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///PATH`` URI (None for other stores and in-memory sqlite)."""
    if scheme_of(uri) != "sqlite" or not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def local_folder(uri: str) -> Path | None:
    """The folder a local store keeps its files in: beside the sqlite file, or the folder store itself."""
    if (path := sqlite_path(uri)) is not None:
        return path.parent
    scheme = scheme_of(uri)
    if scheme == "file":
        return Path(uri.removeprefix("file://") or "/")
    if scheme == "":
        return Path(uri)
    return None


_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|api_?key)=)[^&#]*")


def mask_uri(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part (and secret query values) as ``***``.

    Tracking and optuna storage URLs may carry a database password, and every URI we print (hints,
    status lines), log (MLflow tags and params) or write (reports) would show it to whoever reads the
    terminal, the store or a committed file. Pure string work, so any module can use it without
    importing MLflow. Where the end of the password is ambiguous (a raw ``@`` in it, or in a path after
    a host:port), more is masked rather than less.
    """
    scheme, sep, rest = uri.partition("://")
    if sep and not rest.startswith("/"):
        before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
        at = before_query.rfind("@")
        user, colon, _ = before_query[:at].partition(":") if at > 0 else ("", "", "")
        if colon and not set(user) & set("/@"):
            rest = f"{user}:***{rest[at:]}"
    return _SECRET_QUERY.sub(r"\1***", scheme + sep + rest)
