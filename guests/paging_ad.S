# paging_ad.S - the Accessed and Dirty bits the CPU writes into the guest's own page tables.
#
# Paging is on (PSE too); the page directory at 0x200000 maps 0-4 MiB through an identity page
# table (the kernel) and, with A and D clear in every entry under test:
#   PDE 1  page table 0x202000: 0x400000 and 0x401000, user read/write (PTE 0x..007);
#   PDE 2  a 4 MiB page at 0x800000 (PDE 0x800087);
#   PDE 3  page table 0x203000 whose entry for 0xc00000 is not present (0x00c00006).
# Each line shows entries masked to P (0x1), R/W (0x2), U/S (0x4), A (0x20), D (0x40), and PS
# (0x80) for the 4 MiB PDE. A read sets A in the PDE and the PTE; a write then sets D in the PTE
# only (bit 6 of a PDE that points to a page table is ignored, never set), although no invlpg
# came between the read and the write: the first write through a translation cached clean must
# still go back to the PTE. A first write sets A and D at once. A 4 MiB page's PDE is its PTE: it
# gets A, then D. A read that faults on the not-present PTE still leaves A in the PDE it walked
# through (QEMU sets it before it reads the PTE), and the PTE is unchanged. Last, A and D are
# cleared by the kernel, invlpg drops the cached translation, and the next read and write set
# them again. (The kernel prints nothing that a stale TLB entry could change: every clear is
# followed by invlpg.)
# A monitor must get this right because the guest's page tables are the guest's memory: a
# shadow page table that maps a page writable before the guest's PTE has D set, or never writes
# A back, hides from the guest kernel which pages it must write out or may reclaim.

PD = 0x200000

main:
    mov esi, a_name
    call puts
    mov eax, 14
    mov ebx, a_pf
    mov cl, 0x8e
    call idt_set_gate
    call idt_load

    mov edi, 0x200000                   # directory and three page tables, all zero
    mov ecx, 0x1000
    xor eax, eax
    rep stosd
    mov edi, 0x201000
    mov eax, 0x3
    mov ecx, 0x400
a_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz a_fill
    mov dword ptr [0x200000], 0x201003
    mov dword ptr [0x200004], 0x202007
    mov dword ptr [0x200008], 0x800087
    mov dword ptr [0x20000c], 0x203007
    mov dword ptr [0x202000], 0x400007
    mov dword ptr [0x202004], 0x401007
    mov dword ptr [0x203000], 0xc00006  # not present; the other bits must stay as they are

    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov esi, a_fresh
    call a_show_4k
    mov eax, dword ptr [0x400000]
    mov esi, a_read
    call a_show_4k
    mov dword ptr [0x400000], eax
    mov esi, a_write
    call a_show_4k

    mov esi, a_big_fresh
    call a_show_4m
    mov eax, dword ptr [0x800000]
    mov esi, a_big_read
    call a_show_4m
    mov dword ptr [0x800000], eax
    mov esi, a_big_write
    call a_show_4m

    mov dword ptr [0x401000], eax
    mov esi, a_first_write
    mov eax, dword ptr [0x202004]
    and eax, 0x67
    call put_kv_hex

    mov esi, a_np
    call puts
    mov eax, dword ptr [0xc00000]       # #PF: the handler skips it
    mov esi, a_np_pde
    mov eax, dword ptr [0x20000c]
    and eax, 0x67
    call puts
    call puthex32
    mov esi, a_np_pte
    mov eax, dword ptr [0x203000]
    and eax, 0x67
    call put_kv_hex

    and dword ptr [0x202000], 0xffffff9f  # clear A and D in the PTE ...
    and dword ptr [0x200004], 0xffffff9f  # ... and A in the PDE
    invlpg [0x400000]
    mov esi, a_cleared
    call a_show_4k
    mov eax, dword ptr [0x400000]
    mov esi, a_read
    call a_show_4k
    and dword ptr [0x202000], 0xffffffbf  # clear D only
    invlpg [0x400000]
    mov dword ptr [0x400000], eax
    mov esi, a_d_again
    call a_show_4k
    mov al, 0
    ret

# ESI = label: prints PDE 1 and the PTE of 0x400000, masked to P, R/W, U/S, A, D.
a_show_4k:
    push eax
    call puts
    mov esi, a_pde_msg
    call puts
    mov eax, dword ptr [0x200004]
    and eax, 0x67
    call puthex32
    mov esi, a_pte_msg
    mov eax, dword ptr [0x202000]
    and eax, 0x67
    call put_kv_hex
    pop eax
    ret

# ESI = label: prints PDE 2 (the 4 MiB page), masked to P, R/W, U/S, A, D, PS.
a_show_4m:
    push eax
    call puts
    mov esi, a_pde_msg
    mov eax, dword ptr [0x200008]
    and eax, 0xe7
    call put_kv_hex
    pop eax
    ret

# #PF: print the error code and CR2, skip the faulting 5-byte `mov eax, [moffs32]`.
a_pf:
    push eax
    push esi
    mov esi, a_pf_msg
    mov eax, dword ptr [esp + 8]
    call puts
    call puthex32
    mov esi, a_cr2_msg
    mov eax, cr2
    call puts
    call puthex32
    add dword ptr [esp + 12], 5         # the frame's EIP
    pop esi
    pop eax
    add esp, 4
    iretd

a_name:        .asciz "paging_ad\n"
a_pde_msg:     .asciz ": PDE "
a_pte_msg:     .asciz " PTE "
a_fresh:       .asciz "0x400000 fresh"
a_read:        .asciz "0x400000 after a read"
a_write:       .asciz "0x400000 after a write"
a_big_fresh:   .asciz "4 MiB page 0x800000 fresh"
a_big_read:    .asciz "4 MiB page 0x800000 after a read"
a_big_write:   .asciz "4 MiB page 0x800000 after a write"
a_first_write: .asciz "0x401000 after a write with no read before: PTE "
a_np:          .asciz "read of 0xc00000 (PTE not present): "
a_pf_msg:      .asciz "#PF error "
a_cr2_msg:     .asciz " cr2 "
a_np_pde:      .asciz "; PDE "
a_np_pte:      .asciz " PTE "
a_cleared:     .asciz "0x400000 after clearing A and D, invlpg"
a_d_again:     .asciz "0x400000 after clearing D, invlpg, a write"

.include "runtime.S"
