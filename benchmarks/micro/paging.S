# paging.S - the address space of the paged nanobenchmarks: 0-8 MiB mapped to itself, 4 KiB pages.
#
# The paged loops (nano_pgfault, nano_ptemod, nano_tlbmiss, nano_syscall_paged and their
# baselines) include this file before the runtime and call `paging_on` first thing, so each pair
# runs in the same address space and differs in its loop body alone. The map is the one
# compute_paged.S uses: a page directory at 2 MiB and two page tables after it, every page
# present, writable and user (U/S does not restrict ring 0 without SMAP; the syscall loop runs
# its ring-3 half inside the kernel image). PTE n of the second table, at 0x202000 + 4n, maps
# 0x400000 + n * 0x1000: the page the loops remap, 0x600000, has its PTE at 0x202800.

paging_on:
    pushad
    mov edi, 0x200000                   # the page directory
    mov ecx, 0x400
    xor eax, eax
    rep stosd                           # every PDE not present ...
    mov dword ptr [0x200000], 0x201007  # ... but the two page tables (present, writable, user)
    mov dword ptr [0x200004], 0x202007
    mov edi, 0x201000
    mov eax, 0x7                        # frame 0, present, writable, user
    mov ecx, 0x800                      # both tables, back to back: 2048 pages, 0-8 MiB
pg_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz pg_fill
    mov eax, 0x200000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                  # PG
    mov cr0, eax
    popad
    ret
