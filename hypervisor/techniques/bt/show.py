"""One guest block before and after translation, for people: ``hv translate IMAGE --at ADDR``.

The block is translated as the bt technique will translate it and placed in a fresh translation
cache, so what is printed is what the CPU would run: the TC addresses, each rel32 aimed where the
cache aimed it (an exit stub for a successor not yet translated, the lookup stub for an indirect
branch), and for every guest instruction what the translator made of it and why.
"""
from __future__ import annotations

from typing import Callable

from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from ...vmm.decode import decode
from .cache import LOOKUP, TranslationCache
from .classify import classify, why_called_out
from .translator import translate_block

_cs = Cs(CS_ARCH_X86, CS_MODE_32)


def translation(read_code: Callable[[int, int], bytes], address: int) -> dict:
    """The guest block at ``address`` and its translation, as plain data (``--json`` prints it)."""
    tc = bytearray()

    def write(at: int, data: bytes) -> None:
        if len(tc) < at + len(data):
            tc.extend(bytes(at + len(data) - len(tc)))
        tc[at:at + len(data)] = data

    cache = TranslationCache(write)
    block = translate_block(read_code, address)
    direct = cache.add(block)
    start = block.tc
    guest = []
    eip = address
    while eip < block.guest_end:
        insn = decode(bytes(read_code(eip, 15)), eip)
        if insn is None:
            guest.append({"address": eip, "bytes": "", "text": "(does not decode)", "kind": "callout",
                          "why": "bytes that do not decode, or cannot be fetched"})
            break
        guest.append({"address": eip, "bytes": insn.raw.hex(" "), "text": insn.text,
                      "kind": classify(insn).value, "why": why_called_out(insn)})
        eip += insn.size
    translated = []
    end = start + len(block.code) + len({t for _, t in block.exits})
    pieces = {start + p.offset: p for p in block.pieces}
    for offset, size, mnemonic, op_str in _cs.disasm_lite(bytes(tc[start:end]), start):
        row = {"address": offset, "bytes": bytes(tc[offset:offset + size]).hex(" "),
               "text": f"{mnemonic} {op_str}".strip(), "note": _note(cache, block, pieces, offset, start)}
        translated.append(row)
    return {"guest_address": address, "guest_end": block.guest_end, "instructions": block.instructions,
            "tc_address": start, "direct_entry": direct, "tc_bytes": end - start,
            "guest": guest, "translated": translated}


def _note(cache: TranslationCache, block, pieces: dict, at: int, start: int) -> str:
    """What the TC instruction at ``at`` is for."""
    if at == start:
        return "indirect entry: puts the guest's return address back in the slot the lookup popped"
    callout = cache.callout_at(at)
    if callout is not None:
        text = callout.insn.text if callout.insn is not None else "undecodable bytes"
        return f"callout: {text} ({callout.why})"
    target = cache.exit_stub_target(at)
    if target is not None:
        return f"exit stub: {target:#010x} is not translated yet"
    piece = pieces.get(at)
    if piece is None:
        return ""
    offset, exits = at - start, dict(block.exits)
    for field in (offset + 1, offset + 2):            # after E9, or after 0F 8x
        if field in exits:
            return f"-> {exits[field]:#010x}"
        if field in block.lookups:
            return f"-> the lookup stub at {LOOKUP:#x} (an indirect branch)"
    return f"<- {piece.guest_eip:#010x}" if piece.boundary else f"   (part of {piece.guest_eip:#010x})"


def format_translation(t: dict) -> str:
    """The two listings, guest then translated, as ``hv translate`` prints them."""
    lines = [f"guest block at {t['guest_address']:#010x}: {t['instructions']} instruction(s), "
             f"{t['guest_end'] - t['guest_address']} bytes"]
    for row in t["guest"]:
        why = f": {row['why']}" if row["why"] else ""
        lines.append(f"  {row['address']:#010x}  {row['bytes']:<24} {row['text']:<34} {row['kind'].upper()}{why}")
    lines.append(f"translated at TC {t['tc_address']:#010x} (direct entry {t['direct_entry']:#010x}), "
                 f"{t['tc_bytes']} bytes")
    for row in t["translated"]:
        lines.append(f"  {row['address']:#010x}  {row['bytes']:<24} {row['text']:<34} {row['note']}")
    return "\n".join(lines)

