# compute_paged_4m.S - benchmark: compute_paged.S with 4 MiB pages (CR4.PSE) instead of 4 KiB ones.
# hvsim: paging
#
# The variant of compute_paged.S: the same sieve (compute.S's loop, line for line; the answer is
# 148933), but the page directory maps 0-8 MiB with two 4 MiB PDEs (PS set) and no page tables.
# On hardware that is the point of large pages: one TLB entry covers the whole sieve, and a miss
# walks one level instead of two. Here neither TLB holds a 4 MiB entry: QEMU's softmmu (Unicorn,
# under native) and hvsim's C fill (trap, hvm) both cache 4 KiB pieces of the big page, so the
# misses are as many as with 4 KiB pages and only the walk is shorter. Set beside compute_paged,
# it shows what a large page buys an emulator: one memory read less per miss, nothing more.
#
# `# hvsim: paging`: raw-fill cannot run it either (see compute_paged.S).

REPEAT = 10
SIEVE_N = 2000000
SIEVE = 0x400000
PD = 0x200000

main:
    mov esi, c_name
    call puts
    call paging_on
    .include "include/sieve.S"

# Identity-map 0-8 MiB with two 4 MiB pages and turn paging on. Preserves nothing but ESP.
paging_on:
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd                           # every PDE not present ...
    mov dword ptr [0x200000], 0x000083  # ... but 0-4 MiB and 4-8 MiB: PS, present, writable
    mov dword ptr [0x200004], 0x400083
    mov eax, cr4
    or eax, 0x10                        # PSE: a PDE with PS maps 4 MiB
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                  # PG
    mov cr0, eax
    ret

c_name:    .asciz "compute_paged_4m\n"
c_result:  .asciz "primes below 2000000: "
c_repeats: .asciz "repeats: "

.include "../../guests/runtime.S"
