"""Open a bag for reading whatever state it is in: every failure names the bag in one BagError, and an
MCAP cut short is read up to the cut with a warning that says how much was lost."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Collection, Iterator, Optional

from .cut_mcap import CutMcap, is_cut
from .files import STORAGE_SUFFIXES, BagError, describe, storage_of
from .interfaces import make_typestore


@dataclass(frozen=True)
class Topic:
    """A topic of a bag: its type and how many messages the bag lists on it."""

    name: str
    msgtype: str
    count: int  # for an MCAP cut short: the messages before the cut


@dataclass(frozen=True)
class BagMessage:
    """One serialised (CDR) message as recorded."""

    topic: str
    msgtype: str
    timestamp_ns: int  # the recording clock: when the recorder received it
    data: Any  # bytes or memoryview


def _natural_key(path: Path) -> list[Any]:
    """bag_2.mcap before bag_10.mcap, as rosbag2 numbers split files."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def listed_in_metadata(bag: Path) -> tuple[list[Path], dict[str, int]]:
    """The storage files and the per-topic message counts a bag folder's metadata.yaml lists
    (what it can tell; empty when it cannot be parsed: rosbags then reports why)."""
    import yaml

    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        files = [bag / Path(name).name for name in info.get("relative_file_paths") or []]
        counts = {t["topic_metadata"]["name"]: int(t["message_count"])
                  for t in info.get("topics_with_message_count") or []}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return [], {}
    return files, counts


class BagReader:
    """A rosbag2 bag read through rosbags: a bag folder (with metadata.yaml) or one .mcap or .db3 file.

    Use as a context manager. ``topics`` maps each topic to its :class:`Topic`; ``messages`` yields
    the messages of some topics in recording order; ``decode`` deserialises one. ``warnings`` collects
    what of a damaged bag could not be read (a file cut short, reading stopped at a corrupt record).
    """

    def __init__(self, path: str | os.PathLike[str], distro: str = "jazzy"):
        self.path = Path(path)
        self.typestore = make_typestore(distro)
        self.storage = "sqlite3"
        self.topics: dict[str, Topic] = {}
        self.warnings: list[str] = []
        self._rosbags: Any = None  # rosbags' AnyReader, for a bag that is whole
        self._cut_files: list[Path] = []  # the MCAP files read front to back, when one was cut short

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # ---- opening ------------------------------------------------------------------------------
    def _storage_files(self) -> list[Path]:
        """The storage files of the bag, in recording order; BagError if it is not a bag."""
        path = self.path
        if not path.exists():
            raise BagError(f"bag {path} does not exist")
        if path.is_file():
            if path.suffix not in STORAGE_SUFFIXES:
                raise BagError(f"{path} is not a bag: give a bag folder (with metadata.yaml) or a .mcap or .db3 file")
            return [path]
        files = sorted((p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES), key=_natural_key)
        if not (path / "metadata.yaml").is_file():
            hint = f", or give its file {files[0]} itself" if len(files) == 1 else ""
            raise BagError(f"bag folder {path} has no metadata.yaml (a recording that did not finish writes "
                           f"none); rebuild it with `ros2 bag reindex {path}`{hint}")
        listed, _ = listed_in_metadata(path)
        return listed or files

    def open(self) -> None:
        files = self._storage_files()
        self.storage = storage_of(self.path)
        try:
            cut = [f for f in files if f.suffix == ".mcap" and f.is_file() and is_cut(f)]
        except OSError as e:
            raise BagError(f"cannot read bag {self.path}: {describe(e)}") from e
        if cut:
            self._open_cut(files, cut)
            return
        from rosbags.highlevel import AnyReader

        reader = AnyReader([self.path], default_typestore=self.typestore)
        try:
            reader.open()
        except Exception as e:  # rosbags, sqlite, YAML and the OS raise many kinds for a broken bag
            raise BagError(f"cannot read bag {self.path}: {describe(e)}") from e
        self._rosbags = reader
        for connection in reader.connections:
            known = self.topics.get(connection.topic)
            count = connection.msgcount + (known.count if known else 0)
            self.topics[connection.topic] = Topic(connection.topic, connection.msgtype, count)

    def _open_cut(self, files: list[Path], cut: list[Path]) -> None:
        """Scan the MCAP files up to their cut: the topics, what was read and what was lost."""
        self._cut_files = [f for f in files if f.suffix == ".mcap" and f.is_file()]
        counts: dict[str, int] = {}
        types: dict[str, str] = {}
        try:
            for message in self._cut_messages():
                counts[message.topic] = counts.get(message.topic, 0) + 1
                types.setdefault(message.topic, message.msgtype)
        except BagError:
            raise
        except Exception as e:
            raise BagError(f"cannot read bag {self.path}: {describe(e)}") from e
        names = ", ".join(f.name for f in cut)
        if not counts:
            raise BagError(f"cannot read bag {self.path}: {names} was cut short before its first message")
        self.topics = {name: Topic(name, types[name], n) for name, n in counts.items()}
        read = sum(counts.values())
        _, listed = listed_in_metadata(self.path) if self.path.is_dir() else ([], {})
        listed_total = sum(listed.values())
        if listed_total > read:
            lost = f"metadata.yaml lists {listed_total}, so {listed_total - read} are lost"
        elif listed_total == read:
            lost = f"that is all {listed_total} that metadata.yaml lists"
        else:
            lost = "how many came after the cut is unknown"
        messages = f"{read} message{'s' if read != 1 else ''}"
        self.warnings.append(f"bag {self.path}: {names} was cut short (it has no MCAP footer: the recording did "
                             f"not finish); replaying the {messages} before the cut; {lost}")

    def close(self) -> None:
        reader, self._rosbags = self._rosbags, None
        if reader is not None:
            reader.close()

    # ---- reading ------------------------------------------------------------------------------
    def _cut_messages(self) -> Iterator[BagMessage]:
        for file in self._cut_files:
            for m in CutMcap(file).messages():
                yield BagMessage(m.topic, m.msgtype, m.log_time_ns, m.data)

    def _rosbags_messages(self, topics: Collection[str]) -> Iterator[BagMessage]:
        connections = [c for c in self._rosbags.connections if c.topic in topics]
        for connection, timestamp, data in self._rosbags.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, timestamp, data)

    def messages(self, topics: Collection[str]) -> Iterator[BagMessage]:
        """The messages on ``topics`` in recording order (file order for an MCAP cut short).

        Reading stops at a record the storage cannot read, with a warning in ``warnings`` saying
        how many messages were read, so the frames before it still count.
        """
        wanted = set(topics)
        source: Iterator[BagMessage]
        if self._cut_files:
            source = (m for m in self._cut_messages() if m.topic in wanted)
        else:
            source = self._rosbags_messages(wanted)
        read = 0
        try:
            for message in source:
                read += 1
                yield message
        except BagError:
            raise
        except Exception as e:  # a corrupt page or chunk in the middle of the bag
            listed = sum(self.topics[t].count for t in wanted if t in self.topics)
            self.warnings.append(f"bag {self.path}: reading stopped after {read} of the {listed} messages on "
                                 f"{', '.join(sorted(wanted))}: {describe(e)}; the rest is lost")

    def decode(self, message: BagMessage) -> Any:
        """The deserialised message; ValueError for a payload that is not a valid message of its type."""
        try:
            if self._rosbags is not None:
                return self._rosbags.deserialize(message.data, message.msgtype)
            return self.typestore.deserialize_cdr(message.data, message.msgtype)
        except Exception as e:
            raise ValueError(f"cannot deserialise the {message.msgtype} on {message.topic} recorded at "
                             f"{message.timestamp_ns} ns: {describe(e)}") from e
