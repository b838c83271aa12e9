"""The trace: one JSON line per exit, written like a lab notebook.

Each record says where the guest was (EIP, the instruction's bytes and text), why
control reached the monitor (the exit reason and its qualification), which handler
answered, and, in plain words, what it did. Records carry the guest instruction count,
never wall-clock time, so the same run twice writes the same trace.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import IO

from .exits import ExitReason


@dataclass
class ExitRecord:
    seq: int
    instructions: int
    eip: int
    reason: ExitReason
    handler: str
    explanation: str
    insn_bytes: bytes = b""
    insn_text: str = ""
    qualification: str = ""

    def as_json(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason.label
        d["reason_code"] = int(self.reason)
        d["eip"] = f"{self.eip:#010x}"
        d["insn_bytes"] = self.insn_bytes.hex(" ")
        return d


class Trace:
    """Collects exit records; optionally streams them to a file as JSON lines."""

    def __init__(self, sink: IO[str] | None = None, keep: bool = False):
        self.sink = sink
        self.keep = keep
        self.records: list[ExitRecord] = []
        self.seq = 0

    @property
    def enabled(self) -> bool:
        return self.sink is not None or self.keep

    def add(self, record: ExitRecord) -> None:
        self.seq += 1
        record.seq = self.seq
        if self.keep:
            self.records.append(record)
        if self.sink is not None:
            self.sink.write(json.dumps(record.as_json(), sort_keys=True) + "\n")
