"""The binary translator's blocks run, from a translation cache above 4 GiB, to the state the
guest's own code reaches (hypervisor/techniques/bt/).

A small harness plays the monitor: the TC is mapped at TC_BASE, CS's base is set there (the C TLB
fill maps linear addresses above 4 GiB to themselves, which is how the monitor's own memory is
reached), and the harness answers the ``int3``s the translated code stops at: an exit stub or
the lookup's MISS (translate the target and go on), and a callout for ``hlt`` (the program's
end). The same guest code is also run directly at CS base 0, and both runs must end with the
same registers, flags and memory. Hypothesis writes the programs: straight-line arithmetic,
forward and backward conditional branches, loops, calls and returns, and jumps and calls
through registers and memory, nested.
"""
from __future__ import annotations

import struct

import keystone
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from unicorn import UC_HOOK_INTR
from unicorn import x86_const as X

from hypervisor.machine.cpu import CS, Cpu
from hypervisor.machine.descriptors import encode_segment
from hypervisor.machine.native.tlbfill import TlbFill, native_fill
from hypervisor.techniques.bt.cache import BLOCKS, MISS, TranslationCache
from hypervisor.techniques.bt.classify import Kind, classify
from hypervisor.techniques.bt.translator import ENTRY, translate_block
from hypervisor.vmm.decode import decode

pytestmark = pytest.mark.skipif(native_fill() is None, reason="the C TLB fill is not built")

RAM = 0x100000
CODE = 0x10000
DATA = 0x40000
STACK = 0x80000
TC_BASE = 0x1_0000_0000
TC_SIZE = BLOCKS + 0x40000
GPRS = (X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX, X.UC_X86_REG_ESP,
        X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI)
FLAGS_SEEN = 0x8D5                          # CF PF AF ZF SF OF: what the programs can leave different
_ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_32)


class Machine:
    """A flat ring-0 CPU with guest RAM, the TC region, and the C fill for addresses above 4 GiB."""

    def __init__(self, program: bytes):
        self.cpu = cpu = Cpu(counting="count")
        uc = self.uc = cpu.uc
        uc.mem_map(0, RAM)
        uc.mem_map(TC_BASE, TC_SIZE)
        gdt = [0, encode_segment(0, 0xFFFFF, 0x9A), encode_segment(0, 0xFFFFF, 0x92)]
        uc.mem_write(0x1000, b"".join(struct.pack("<Q", d) for d in gdt))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x1000, 0x17, 0))
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)
        uc.reg_write(X.UC_X86_REG_CS, 0x8)
        for reg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
            uc.reg_write(reg, 0x10)
        uc.reg_write(X.UC_X86_REG_ESP, STACK)
        uc.mem_write(CODE, program)
        uc.mem_write(DATA, bytes(range(256)) * 4)
        self.tlb = TlbFill(cpu, native=True)
        self.stopped_at: int | None = None
        uc.hook_add(UC_HOOK_INTR, self._interrupt)

    def _interrupt(self, uc, intno, _):
        self.stopped_at = (intno, uc.reg_read(X.UC_X86_REG_EIP))
        uc.emu_stop()

    def state(self) -> tuple:
        """Registers, the flags a program can test, the data, and the live stack (from ESP up: below
        ESP the lookup stub saves registers, where the bare machine's interrupts would push too)."""
        flags = self.uc.reg_read(X.UC_X86_REG_EFLAGS) & FLAGS_SEEN
        esp = self.uc.reg_read(X.UC_X86_REG_ESP)
        live = bytes(self.uc.mem_read(esp, STACK - esp)) if esp <= STACK else b""
        return tuple(self.uc.reg_read(r) for r in GPRS) + (flags, bytes(self.uc.mem_read(DATA, 0x400)), live)

    def run_native(self, budget: int = 200_000) -> tuple:
        """The guest's code as written, to its hlt."""
        self.uc.emu_start(CODE, 0xFFFFFFFF, count=budget)
        return self.state()


class Translated(Machine):
    """The same, but every instruction from the TC: the harness is the monitor."""

    def __init__(self, program: bytes, tc_size: int = TC_SIZE):
        super().__init__(program)
        self.cache = TranslationCache(self._write, tc_size)

    def _write(self, tc: int, data: bytes) -> None:
        self.uc.mem_write(TC_BASE + tc, data)
        self.uc.ctl_remove_cache(TC_BASE + tc, TC_BASE + tc + len(data))

    def _read_code(self, address: int, length: int) -> bytes:
        return bytes(self.uc.mem_read(address, min(length, RAM - address)))

    def entry(self, guest_eip: int) -> int:
        tc = self.cache.lookup(guest_eip)
        if tc is None:
            tc = self.cache.add(translate_block(self._read_code, guest_eip))
        return tc

    def run_translated(self, budget: int = 400_000) -> tuple:
        cpu, uc = self.cpu, self.uc
        cpu._caches[CS].base = TC_BASE
        eip = self.entry(CODE)
        for _ in range(10_000):
            self.stopped_at = None
            uc.emu_start(eip, 0xFFFF_FFFF_FFFF, count=budget)
            assert self.stopped_at is not None and self.stopped_at[0] == 3, self.stopped_at
            at = self.stopped_at[1] - 1             # the int3
            target = self.cache.exit_stub_target(at)
            if target is not None:
                eip = self.entry(target)
                continue
            if at == MISS:
                esp = uc.reg_read(X.UC_X86_REG_ESP)
                ecx, eflags, eax, target = struct.unpack("<4I", uc.mem_read(esp, 16))
                for reg, value in ((X.UC_X86_REG_ECX, ecx), (X.UC_X86_REG_EFLAGS, eflags),
                                   (X.UC_X86_REG_EAX, eax), (X.UC_X86_REG_ESP, esp + 16)):
                    uc.reg_write(reg, value)
                self.cache.missed()
                eip = self.entry(target)
                continue
            callout = self.cache.callout_at(at)
            assert callout is not None and callout.insn.mnemonic == "hlt", (hex(at), callout)
            return self.state()
        raise AssertionError("the translated program did not reach its hlt")


def assemble(source: str) -> bytes:
    return bytes(_ks.asm(source, CODE)[0])


def both(source: str) -> tuple[tuple, Translated]:
    program = assemble(source)
    native = Machine(program).run_native()
    translated = Translated(program)
    assert translated.run_translated() == native
    return native, translated


# -- the code the CPU runs above 4 GiB --------------------------------------------------------------
def test_code_runs_at_a_cs_base_above_4_gib_and_data_addresses_are_cut_to_32_bits():
    """The two facts the TC stands on (QEMU 5's translate.c, under the C fill): an instruction
    fetch at CS base + EIP above 4 GiB reaches that memory, and a data access through any
    segment, CS included, is cut to 32 bits, so it reaches guest RAM and never the TC."""
    m = Machine(b"")
    code = bytes(_ks.asm("mov eax, 0x1234; mov [0x2000], eax; mov ecx, cs:[0x100]; call l; l: pop edx; hlt")[0])
    m.uc.mem_write(TC_BASE, code)
    m.uc.mem_write(TC_BASE + 0x100, struct.pack("<I", 0xCAFEBABE))
    m.uc.mem_write(0x100, struct.pack("<I", 0x600DF00D))
    m.cpu._caches[CS].base = TC_BASE
    m.uc.emu_start(0, 0xFFFF_FFFF_FFFF, count=6)
    read = m.uc.reg_read
    assert read(X.UC_X86_REG_EAX) == 0x1234 and struct.unpack("<I", m.uc.mem_read(0x2000, 4))[0] == 0x1234
    assert read(X.UC_X86_REG_ECX) == 0x600DF00D             # cs:[0x100] read guest RAM, not the TC
    assert read(X.UC_X86_REG_EDX) == len(code) - 2          # call pushed the TC offset: why calls are rewritten


# -- the translator's decisions ----------------------------------------------------------------------
@pytest.mark.parametrize("source, kind", [
    ("add eax, ebx", Kind.IDENT), ("mov eax, dword ptr [ebx + 4]", Kind.IDENT), ("rdtsc", Kind.IDENT),
    ("jmp 0x10010", Kind.JUMP), ("je 0x10010", Kind.BRANCH), ("loop 0x10010", Kind.LOOP), ("jecxz 0x10010", Kind.LOOP),
    ("call 0x10010", Kind.CALL), ("ret", Kind.RETURN), ("jmp eax", Kind.JUMP_INDIRECT),
    ("jmp dword ptr [eax*4 + 0x100]", Kind.JUMP_INDIRECT), ("call dword ptr [esp + 4]", Kind.CALL_INDIRECT),
    ("int 0x80", Kind.TRAP), ("int3", Kind.TRAP), ("into", Kind.TRAP),
    ("pushfd", Kind.CALLOUT), ("popfd", Kind.CALLOUT), ("sgdt [eax]", Kind.CALLOUT), ("sidt [eax]", Kind.CALLOUT),
    ("sldt eax", Kind.CALLOUT), ("str eax", Kind.CALLOUT), ("smsw eax", Kind.CALLOUT), ("mov eax, cs", Kind.CALLOUT),
    ("push cs", Kind.CALLOUT), ("push ds", Kind.CALLOUT), ("pop es", Kind.IDENT), ("mov ds, eax", Kind.IDENT),
    ("mov ax, ss", Kind.CALLOUT), ("mov word ptr [eax], cs", Kind.CALLOUT), ("lds eax, [ebx]", Kind.IDENT),
    ("lar eax, ebx", Kind.CALLOUT), ("lsl eax, ebx", Kind.CALLOUT), ("verr ax", Kind.CALLOUT), ("verw ax", Kind.CALLOUT),
    ("cli", Kind.CALLOUT), ("sti", Kind.CALLOUT), ("hlt", Kind.CALLOUT), ("iretd", Kind.CALLOUT),
    ("mov cr0, eax", Kind.CALLOUT), ("mov eax, cr3", Kind.CALLOUT), ("mov dr7, eax", Kind.CALLOUT),
    ("in al, dx", Kind.CALLOUT), ("out 0x80, al", Kind.CALLOUT), ("rep outsb", Kind.CALLOUT),
    ("lgdt [eax]", Kind.CALLOUT), ("lidt [eax]", Kind.CALLOUT), ("ltr ax", Kind.CALLOUT), ("invlpg [eax]", Kind.CALLOUT),
    ("ret 4", Kind.CALLOUT), ("retf", Kind.CALLOUT), ("jmp dword ptr [eax]", Kind.JUMP_INDIRECT),
    ("ljmp 8:0x1000", Kind.CALLOUT), ("wrmsr", Kind.CALLOUT),
    ("sysenter", Kind.CALLOUT), ("lss esp, [eax]", Kind.IDENT), ("cpuid", Kind.CALLOUT),
])
def test_every_privileged_and_sensitive_instruction_is_a_callout(source, kind):
    insn = decode(assemble(source), CODE)
    assert classify(insn) is kind, insn.text


@pytest.mark.parametrize("raw", [b"\xff\x28", b"\xff\x18", b"\xff\x6c\x24\x04",
                                 b"\x66\xe8\x00\x00", b"\x66\xc3", b"\x66\xff\xe0"])
def test_far_and_16_bit_control_transfers_are_callouts(raw):
    """FF /5 and FF /3 load CS from an m16:32 (capstone names them jmp/call, the call with a
    4-byte operand): the ModRM's reg field tells them from the near forms. With an operand-size
    prefix a call, ret or jmp cuts EIP to 16 bits."""
    assert classify(decode(raw, CODE)) is Kind.CALLOUT


def test_a_read_through_cs_is_copied_only_while_the_guests_cs_is_flat():
    insn = decode(assemble("mov eax, dword ptr cs:[ebx]"), CODE)
    assert classify(insn, guest_cs_base=0) is Kind.IDENT
    assert classify(insn, guest_cs_base=0x1000) is Kind.CALLOUT


def test_a_block_ends_at_its_page_and_maps_every_piece_back_to_the_guest():
    program = b"\x90" * (0x1000 - (CODE & 0xFFF) - 2) + b"\x40\x40\x40"   # nops, then inc eax over the page end
    m = Translated(b"")
    m.uc.mem_write(CODE, program)
    block = translate_block(m._read_code, CODE + 0xFF0)
    assert block.guest_end == CODE + 0x1000 + 1 or block.guest_end == CODE + 0x1000
    assert block.exits[-1][1] == block.guest_end and block.pieces[0].offset == ENTRY
    assert [p.guest_eip for p in block.pieces if p.boundary][:3] == [CODE + 0xFF0, CODE + 0xFF1, CODE + 0xFF2]


# -- blocks run from the cache to the guest's own results -------------------------------------------
def test_arithmetic_and_branches_reach_the_same_state():
    both("""
        mov eax, 5; mov ecx, 10; xor edx, edx
    top: add edx, eax; dec ecx; jnz top
        cmp edx, 50; je fine; mov ebx, 1; hlt
    fine: mov ebx, 2; hlt
    """)


def test_calls_and_returns_run_through_the_lookup_stub_and_chain():
    _, m = both("""
        mov ecx, 100; xor eax, eax
    again: call twice; loop again; hlt
    twice: call once; call once; ret
    once: inc eax; ret
    """)
    s = m.cache.stats
    assert s.lookup_misses <= 4 and s.chained >= 3         # each return site misses once, then hits


def test_indirect_jumps_and_calls_through_registers_and_memory():
    both(f"""
        mov esi, {DATA + 0x300}
        mov dword ptr [esi], offset_a
        mov ecx, 20; xor eax, eax
    again: mov edx, a; call edx; call dword ptr [esi]; lea edx, [b]; jmp edx
    b: loop again; hlt
    a: add eax, 3; ret
    """.replace("offset_a", "a"))


def test_loop_and_jecxz_take_both_ways():
    both("""
        mov ecx, 3; xor eax, eax
    l1: inc eax; loop l1
        jecxz z; mov eax, 99
    z: mov ecx, 1; jecxz bad; add eax, 10; hlt
    bad: mov eax, 77; hlt
    """)


def test_a_full_cache_flushes_and_the_program_still_reaches_its_state():
    """A TC with room for a few blocks only: it fills, flushes and translates again, mid-run."""
    source = """
        mov ecx, 50; xor eax, eax
    again: call a; call b; call c; loop again; hlt
    a: add eax, 1; ret
    b: add eax, 2; ret
    c: add eax, 3; ret
    """
    program = assemble(source)
    native = Machine(program).run_native()
    small = Translated(program, tc_size=BLOCKS + 96)
    assert small.run_translated() == native
    assert small.cache.stats.flushes >= 2


def test_a_write_to_translated_code_drops_its_blocks_and_the_new_code_runs():
    """The code is run once translated; then its bytes change (as self-modifying code or a loader
    would change them) and the page is invalidated: the next run translates the new bytes."""
    m = Translated(assemble("mov eax, 1; call f; hlt; f: add eax, 10; ret"))
    assert m.run_translated()[0] == 11
    f = CODE + len(assemble("mov eax, 1; call f; hlt; f:"))
    m.uc.mem_write(f, assemble("add eax, 20"))         # the same length: f is where it was
    assert m.cache.invalidate_page(CODE >> 12) == 3        # the entry block, the return site, f
    m.uc.reg_write(X.UC_X86_REG_ESP, STACK)
    assert m.run_translated()[0] == 21
    assert m.cache.stats.invalidations == 3


# -- random programs ------------------------------------------------------------------------------
ALU = st.sampled_from(["add eax, ebx", "sub ebx, ecx", "xor edx, eax", "imul eax, ebx", "inc esi", "dec esi",
                       "shl eax, 3", "ror ebx, 5", "adc edx, 7", "neg ecx", "and eax, 0xff0f", "or esi, edx",
                       "mov ebx, dword ptr [ebp + 8]", "mov dword ptr [ebp + 12], eax", "push eax\n    pop edx",
                       "lea ecx, [eax + ebx*2 + 4]", "cmp eax, ebx", "test esi, 1", "setc al", "cmovz ebx, ecx",
                       "xchg eax, edx", "bswap esi", "add dword ptr [ebp + 16], ecx"])


@st.composite
def programs(draw) -> str:
    """A main loop of random pieces: arithmetic, branches over it, and calls to subroutines that
    may call each other and return, through a register, memory or directly. Well formed: stack
    pushes are popped, and EDI counts the loop alone."""
    n = draw(st.integers(1, 4))
    subs = []
    for i in range(n):
        body = draw(st.lists(ALU, min_size=0, max_size=4))
        if i + 1 < n and draw(st.booleans()):
            body.append(f"call sub{i + 1}")
        subs.append(f"sub{i}:\n    " + "\n    ".join(body + ["ret"]))
    main = []
    for j in range(draw(st.integers(1, 8))):
        choice = draw(st.sampled_from(["alu", "branch", "call", "call_reg", "call_mem", "jmp_reg"]))
        target = draw(st.integers(0, n - 1))
        if choice == "alu":
            main += draw(st.lists(ALU, min_size=1, max_size=3))
        elif choice == "branch":
            cond = draw(st.sampled_from(["jz", "jnz", "jc", "js", "jo", "jbe", "jg"]))
            main += [f"{cond} skip{j}"] + draw(st.lists(ALU, min_size=1, max_size=2)) + [f"skip{j}:"]
        elif choice == "call":
            main.append(f"call sub{target}")
        elif choice == "call_reg":
            main += [f"mov edx, sub{target}", "call edx"]
        elif choice == "call_mem":
            main += [f"mov dword ptr [ebp + 20], sub{target}", "call dword ptr [ebp + 20]"]
        else:
            main += [f"mov edx, next{j}", "jmp edx", f"next{j}:"]
    loops = draw(st.integers(1, 5))
    return "\n".join([f"mov ebp, {DATA}", f"mov edi, {loops}", "mov eax, 0x1234", "mov ebx, 0x77",
                      "mov ecx, 3", "top:"] + main + ["dec edi", "jnz top", "hlt"] + subs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_reach_the_same_state_translated(source):
    both(source)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 0xFFF))
def test_any_bytes_translate_and_place_without_error(code, offset):
    """Whatever a hostile guest puts at an address: the translator decodes what decodes, calls out
    the rest, maps every piece to a guest address of the block, and the cache places it."""
    start = 0x400000 + offset
    memory = dict(enumerate(code, start))

    def read(address: int, length: int) -> bytes:
        return bytes(memory[a] for a in range(address, address + length) if a in memory)
    block = translate_block(read, start)
    assert block.instructions >= 1 and block.guest_end > start
    assert all(start <= p.guest_eip <= block.guest_end or p.guest_eip in {t for _, t in block.exits}
               for p in block.pieces)
    cache = TranslationCache(lambda at, data: None, BLOCKS + 4096)
    assert cache.add(block) == block.tc + ENTRY


@pytest.mark.parametrize("raw, opcode", [(b"\xf3\x70\x00", b"\x0f\x80"), (b"\x2e\x74\x00", b"\x0f\x84"),
                                         (b"\x3e\x0f\x85\x00\x00\x00\x00", b"\x0f\x85")])
def test_a_prefixed_conditional_branch_keeps_its_condition(raw, opcode):
    """Capstone leaves some prefixes out of its list (an F3 before jo): the opcode is found after
    every legacy prefix byte, and the rewritten jcc tests the same condition."""
    block = translate_block(lambda address, length: raw[address - CODE:address - CODE + length], CODE)
    assert block.code[ENTRY:ENTRY + 2] == opcode
