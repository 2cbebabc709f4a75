"""Bag files on disk: the error every bag problem becomes, output paths that never replace what a user
made, and a writer that moves a bag into place only once it is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence

if TYPE_CHECKING:
    from rosbags.interfaces import Connection, Qos
    from rosbags.typesys.store import Typestore

STORAGES = ("sqlite3", "mcap")
BAG_VERSION: Literal[8] = 8  # rosbag2 metadata version 8: what Jazzy writes; rosbags writes 8 or 9
STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}


class BagError(ValueError):
    """A bag that cannot be read or written: missing, cut short, corrupt, lacking a topic, or an
    output that already exists. The message names the path; the CLI prints it as one line."""


def describe(error: BaseException) -> str:
    """``error`` as one line for a BagError: its type (rosbags, sqlite and the OS raise many) and text."""
    text = str(error).strip() or "no details"
    return f"{type(error).__name__}: {text}" if not isinstance(error, (BagError, OSError)) else text


def check_new_output(path: str | os.PathLike[str] | None, what: str, *, overwrite: bool = False,
                     bag: bool = False) -> None:
    """Refuse an output that exists, so no run silently replaces a user's file.

    With ``overwrite`` an existing file (or, for ``bag``, an existing bag folder or empty folder) may
    be replaced; anything else, a folder full of other things for instance, is still refused.
    """
    if path is None:
        return
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise BagError(f"{what} {path} already exists; choose another path or pass --overwrite to replace it")
    if bag:
        if not path.is_dir() or not (not any(path.iterdir()) or (path / "metadata.yaml").is_file()):
            raise BagError(f"{what} {path} exists and is not a bag folder; refusing to replace it")
    elif path.is_dir():
        raise BagError(f"{what} {path} is a folder; refusing to replace it")


def storage_of(bag: Path) -> str:
    """'mcap' or 'sqlite3': what a bag folder or a bag file stores its messages in."""
    if bag.is_file():
        return STORAGE_SUFFIXES.get(bag.suffix, "sqlite3")
    return "mcap" if any(bag.glob("*.mcap")) else "sqlite3"


class BagWriter:
    """A rosbags ``Writer`` that builds the bag in a hidden folder beside ``out`` and moves it to
    ``out`` only when closed without error: an interrupted or failed run leaves no half bag at
    ``out``, and an existing bag there (replaced only with ``overwrite``) stays until the new one
    is complete. rosbags, OS and disk errors become :class:`BagError` naming ``out``.
    """

    def __init__(self, out: str | os.PathLike[str], storage: str = "sqlite3", *, overwrite: bool = False,
                 what: str = "output bag"):
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; supported: {', '.join(STORAGES)}")
        self.out = Path(out)
        self.storage = storage
        self.overwrite = overwrite
        self.what = what
        # Named after the bag, so a stale one of a killed run is found (and replaced) by the next run.
        self.staging = self.out.parent / f".{self.out.name}.partial"
        self._writer: Any = None

    def __enter__(self) -> BagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        check_new_output(self.out, self.what, overwrite=self.overwrite, bag=True)
        plugin = StoragePlugin.SQLITE3 if self.storage == "sqlite3" else StoragePlugin.MCAP
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
            # the inner folder has the bag's own name, which rosbags gives its storage file
            self._writer = Writer(self.staging / self.out.name, version=BAG_VERSION, storage_plugin=plugin)
            self._writer.open()
        except Exception as e:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise BagError(f"cannot write {self.what} {self.out}: {describe(e)}") from e
        return self

    def connection(self, topic: str, msgtype: str, typestore: Typestore,
                   qos: Sequence[Qos] = ()) -> Connection:
        try:
            connection: Connection = self._writer.add_connection(topic, msgtype, typestore=typestore,
                                                                 offered_qos_profiles=list(qos))
        except Exception as e:
            raise BagError(f"cannot write {self.what} {self.out}: {describe(e)}") from e
        return connection

    def write(self, connection: Connection, timestamp_ns: int, message: Any, typestore: Typestore) -> None:
        """Serialise ``message`` (of the connection's type) and write it at ``timestamp_ns``."""
        data = typestore.serialize_cdr(message, connection.msgtype)
        try:
            self._writer.write(connection, timestamp_ns, data)
        except Exception as e:
            raise BagError(f"cannot write {self.what} {self.out}: {describe(e)}") from e

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        writer, self._writer = self._writer, None
        try:
            if exc_type is not None:
                with contextlib.suppress(Exception):
                    writer.abort()
                return
            try:
                writer.close()
                self._move_into_place()
            except Exception as e:
                raise BagError(f"cannot write {self.what} {self.out}: {describe(e)}") from e
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def _move_into_place(self) -> None:
        built = self.staging / self.out.name
        if self.out.exists():  # only with overwrite (checked on enter): keep it until the new one is in place
            replaced = self.staging / "replaced"
            os.replace(self.out, replaced)
        os.replace(built, self.out)
