# compute_paged.S - benchmark: compute.S's sieve with paging on (4 KiB pages, identity map).
# hvsim: paging
#
# The same sieve of Eratosthenes as compute.S (benchmarks/guests/include/sieve.S, included: the answer is
# 148933), run after the kernel has built two-level 32-bit page tables and set CR0.PG. Nothing in
# the loop exits, so what it measures is what a translation costs each technique when the guest's
# paging is on: under native Unicorn's own MMU walks the guest's tables; under trap (shadow
# paging) and hvm (EPT) hvsim's C TLB fill walks them against the guest's CR0/CR3/CR4, and every
# TLB miss is one such walk (a hidden shadow fault under trap). The sieve's 2,000,000 bytes span
# 489 pages, more than Unicorn's TLB (256 entries to start with) keeps, and the inner loop sweeps
# them all again for every small prime: about 55,600 TLB misses a pass, each a walk under trap. So
# this guest is paged code under TLB pressure, as real programs are; micro/nano_tlbmiss.S gives
# the cost of one miss.
#
# The map: a page directory at 2 MiB and two page tables after it, identity-mapping 0-8 MiB with
# 4 KiB pages (present, writable, supervisor): the kernel and runtime at 1 MiB, the tables
# themselves, and the sieve at 4 MiB. Nothing above 8 MiB is mapped; no device needs MMIO.
#
# `# hvsim: paging` tells benchmarks/run.py that raw-fill (bare Unicorn with the identity TLB
# fill, benchmarks/raw.py) cannot run this guest: that fill refuses a translation once CR0.PG is
# set and has no monitor to switch walkers, so the row is skipped with a note.

REPEAT = 10
SIEVE_N = 2000000
SIEVE = 0x400000
PD = 0x200000
PT0 = 0x201000                          # 0-4 MiB; PT1 at 0x202000 maps 4-8 MiB

main:
    mov esi, c_name
    call puts
    call paging_on
    .include "include/sieve.S"

# Identity-map 0-8 MiB with 4 KiB pages and turn paging on. Preserves nothing but ESP.
paging_on:
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd                           # every PDE not present ...
    mov dword ptr [0x200000], 0x201003  # ... but the two page tables (present, writable)
    mov dword ptr [0x200004], 0x202003
    mov edi, PT0
    mov eax, 0x3                        # frame 0, present, writable, supervisor
    mov ecx, 0x800                      # both tables, back to back: 2048 pages
c_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz c_fill
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                  # PG
    mov cr0, eax
    ret

c_name:    .asciz "compute_paged\n"
c_result:  .asciz "primes below 2000000: "
c_repeats: .asciz "repeats: "

.include "../../guests/runtime.S"
