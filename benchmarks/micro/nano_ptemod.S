# nano_ptemod.S - nanobenchmark: K page-table updates as a kernel makes them, paging on.
# hvsim: paging
#
# Each iteration points the virtual page V = 0x600000 at the other of two frames (0x600000,
# holding 1, and 0x601000, holding 2) by writing its PTE, runs `invlpg [V]` (the SDM's rule: a
# changed present entry may stay cached until then) and reads V through the new translation.
# The values read are summed and checked at the end (exit code 1 if a read ever saw the old
# frame), so a technique that let a stale translation survive the invlpg fails the benchmark
# instead of timing it. Under native Unicorn's MMU drops the one page and walks the tables
# again; under trap the page table is write-protected (the shadow was built from it,
# memory/shadow.py), so the PTE write goes through the alias window and drops the page's shadow
# entry, the invlpg is a #GP at ring 1 that the monitor emulates (the entry, and the whole TLB),
# and the read is a hidden fault in the C fill; under hvm the invlpg exits (INVLPG exiting) and the
# monitor flushes the TLB too. Paired with nano_pg_base.S (a `nop` for each of the write, the
# invlpg and the read), and itself the baseline of nano_pgfault.S, which differs from it only in
# the PTE it writes: not present.

K = 20000
V = 0x600000
PTE_V = 0x202800                        # paging.S: the PTE of 0x600000

main:
    mov eax, 14
    mov ebx, m_pf
    mov cl, 0x8e                        # the #PF gate nano_pgfault.S needs, set up here too
    call idt_set_gate
    call idt_load
    call paging_on
    mov dword ptr [0x300000], 0         # the handler's count of faults
    mov dword ptr [0x600000], 1
    mov dword ptr [0x601000], 2
    mov ecx, K
    xor ebp, ebp                        # the sum of the values read
    mov edx, 0x600007                   # V -> itself (present, writable, user) ...
    mov esi, 0x1000                     # ... toggled to 0x601007 and back by the xor
m_loop:
    xor edx, esi
    mov dword ptr [PTE_V], edx          # the PTE modification
    invlpg [V]
    mov eax, dword ptr [V]              # a TLB miss: 2, 1, 2, 1, ...
    add ebp, eax
    dec ecx
    jnz m_loop
    mov eax, K                          # expected: K ones, and a two for every odd iteration
    mov ebx, eax
    inc ebx
    shr ebx, 1
    add eax, ebx
    cmp ebp, eax
    setne al                            # exit code 1 if any read missed the new frame
    ret

m_pf:                                   # never taken here
    inc dword ptr [0x300000]        # a data page: a store into the code's page would cost a retranslation
    mov dword ptr [PTE_V], 0x600007
    add esp, 4
    iretd

.include "paging.S"
.include "../../guests/runtime.S"
