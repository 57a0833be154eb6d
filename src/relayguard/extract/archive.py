"""Zip archives read defensively: every size is checked as declared AND as actually read.

A zip's central directory can lie, so declared sizes are only a first filter: members are read in
bounded chunks and the bytes are counted as they come, stopping at the per-member size limit, at
the compression ratio limit and at the deadline. Nested archives count against one depth limit
and one member total per message, so a 42.zip-style bomb ends early as ``unscannable``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import IO

from relayguard.extract.base import (
    Budget,
    BudgetExceededError,
    Dispatch,
    Item,
    Problem,
    Source,
    TextUnit,
    UnscannableError,
)

CHUNK = 64 * 1024
RATIO_FLOOR = 1 << 20  # members smaller than this may compress as well as they like


class SafeZip:
    """A zip archive whose members can only be read within the scan's limits."""

    def __init__(self, data: bytes, budget: Budget, *, kind: str = "zip") -> None:
        self.budget = budget
        self.kind = kind
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
            self.infos = [i for i in self.zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise UnscannableError(f"corrupt {kind}") from exc
        self._check_archive()

    def _check_archive(self) -> None:
        limits = self.budget.limits
        self.budget.members += len(self.infos)
        if len(self.infos) > limits.max_members or self.budget.members > limits.max_members:
            raise UnscannableError(f"too many {self.kind} members")
        declared = sum(i.file_size for i in self.infos)
        packed = sum(i.compress_size for i in self.infos)
        if declared > RATIO_FLOOR and declared > limits.max_ratio * max(packed, 1):
            # Name the single member when one alone is the bomb: it is the more useful reason.
            whole = not any(i.file_size > self._ratio_cap(i) for i in self.infos)
            raise UnscannableError(f"{self.kind} over ratio limit" if whole
                                   else f"{self.kind} member over ratio limit")

    def names(self) -> list[str]:
        return [i.filename for i in self.infos]

    def has(self, name: str) -> bool:
        return name in self.zf.NameToInfo

    def member_limit(self, info: zipfile.ZipInfo, *, cap: int) -> int:
        """How many bytes ``info`` may yield; raises :class:`UnscannableError` when it is over a limit."""
        if info.flag_bits & 0x1:
            raise UnscannableError(f"encrypted {self.kind}")
        if info.file_size > cap:
            raise UnscannableError(f"{self.kind} member over size limit")
        ratio_cap = self._ratio_cap(info)
        if info.file_size > ratio_cap:
            raise UnscannableError(f"{self.kind} member over ratio limit")
        # Never trust the declared size: the reader stops at the smallest bound it may reach.
        return min(cap, ratio_cap, info.file_size)

    def _ratio_cap(self, info: zipfile.ZipInfo) -> int:
        return max(RATIO_FLOOR, int(self.budget.limits.max_ratio * max(info.compress_size, 1)))

    def open(self, name: str, *, cap: int | None = None) -> IO[bytes]:
        """A stream of member ``name`` that raises :class:`UnscannableError` past any limit."""
        info = self.zf.getinfo(name)
        limit = self.member_limit(info, cap=cap or self.budget.limits.max_part_bytes)
        try:
            raw = self.zf.open(info)
        except NotImplementedError as exc:  # deflate64, bzip2 variants, unknown methods
            raise UnscannableError(f"unsupported {self.kind} compression") from exc
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
            raise UnscannableError(f"corrupt {self.kind}") from exc
        return io.BufferedReader(BoundedReader(raw, limit=limit, budget=self.budget, kind=self.kind),
                                 buffer_size=CHUNK)

    def stream(self, name: str) -> IO[bytes]:
        """Member ``name`` for streaming parsers: bounded by ratio and deadline, not by size.

        A streamed part is never held whole, so the per-part size limit would only refuse big
        but honest workbooks; the ratio limit still stops bombs.
        """
        limits = self.budget.limits
        return self.open(name, cap=int(limits.max_ratio * limits.max_part_bytes))

    def read(self, name: str, *, cap: int | None = None) -> bytes:
        """The whole member ``name``, read in chunks and counted against the decoded total."""
        with self.open(name, cap=cap) as stream:
            data = stream.read()
        self.budget.add_decoded(len(data))
        return data


class BoundedReader(io.RawIOBase):
    """Reads a member in chunks, counting bytes, checking the deadline, stopping at ``limit``."""

    def __init__(self, raw: IO[bytes], *, limit: int, budget: Budget, kind: str) -> None:
        super().__init__()
        self._raw = raw
        self._left = limit
        self._budget = budget
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._budget.check_time()
        want = min(len(buffer), CHUNK)
        try:
            data = self._raw.read(want)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # bad CRC, truncated
            raise UnscannableError(f"corrupt {self._kind}") from exc
        if len(data) > self._left:
            raise UnscannableError(f"{self._kind} member larger than declared or allowed")
        self._left -= len(data)
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def extract_zip(src: Source, budget: Budget, dispatch: Dispatch) -> Iterator[Item]:
    """Every member of a zip archive, each through the dispatcher, one level deeper."""
    if src.depth + 1 > budget.limits.max_depth:
        raise UnscannableError("nesting too deep")
    archive = SafeZip(src.data, budget)
    for name in archive.names():
        where = f"{src.where}/{name}"
        yield TextUnit(where, name)  # member names can carry identifiers too
        try:
            data = archive.read(name)
        except BudgetExceededError:
            raise
        except UnscannableError as exc:
            yield Problem(where, exc.reason)
            continue
        yield from dispatch(Source(data, where, name=name, depth=src.depth + 1), budget)
