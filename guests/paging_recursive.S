# paging_recursive.S - a recursive page directory: the page tables seen as ordinary memory.
#
# The page directory at 0x200000 points its last entry (PDE 1023) at itself. Walking 0xffc00000-
# 0xffffffff then uses the directory as the page table, so every page table appears as a page
# in that 4 MiB window: the PTE of virtual V is the dword at 0xffc00000 + (V >> 12) * 4, and the
# directory itself, walked twice, is the page at 0xfffff000 (PDE i at 0xfffff000 + i * 4).
# PDE 0 maps 0-4 MiB through an identity page table (0x201000); PDE 1 has an empty page table
# (0x202000). Entries are printed masked with 0xfffff003 (frame, R/W, P): the CPU sets A and D
# in PDE 1023 as it serves as a PTE, and nothing printed should depend on that.
# The kernel reads PDE 1023, PDE 0 and the kernel's own PTE through the windows; maps 0x400000 to
# frame 0x300000 by writing its PTE at 0xffc01000, runs invlpg, reads the frame's marker and
# writes through the new page (seen again at 0x300004, and the PTE in the page table at
# 0x202000); then makes a page table out of frame 0x203000 by writing PDE 2 at 0xfffff008, finds
# it at 0xffc02000, clears it through the window, maps 0x800000 in it and reads that page.
# A monitor must get this right because here the guest edits its live page tables with plain
# stores through a mapping of its own making: a shadow-paging monitor must catch writes to a
# page that is both a page directory and, through PDE 1023, a page table and a data page.

PD = 0x200000

main:
    mov esi, r_name
    call puts
    mov dword ptr [0x300000], 0x30300000
    mov dword ptr [0x301000], 0x31310000
    mov edi, 0x200000                   # directory and two page tables, all zero
    mov ecx, 0xc00
    xor eax, eax
    rep stosd
    mov edi, 0x201000
    mov eax, 0x3
    mov ecx, 0x400
r_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz r_fill
    mov dword ptr [0x200000], 0x201003
    mov dword ptr [0x200004], 0x202003
    mov dword ptr [0x200ffc], 0x200003  # PDE 1023: the directory itself

    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov esi, r_pde1023
    mov eax, dword ptr [0xfffffffc]
    call r_show
    mov esi, r_pde0
    mov eax, dword ptr [0xfffff000]
    call r_show
    mov esi, r_pte_kernel
    mov eax, dword ptr [0xffc00400]     # 0xffc00000 + (0x100000 >> 12) * 4
    call r_show
    mov esi, r_pte_4m_before
    mov eax, dword ptr [0xffc01000]
    call r_show

    mov dword ptr [0xffc01000], 0x300003  # map 0x400000 -> 0x300000 through the window
    invlpg [0x400000]
    mov esi, r_mapped
    mov eax, dword ptr [0x400000]
    call put_kv_hex
    mov dword ptr [0x400004], 0x12345678
    mov esi, r_frame
    mov eax, dword ptr [0x300004]
    call put_kv_hex
    mov esi, r_pt1
    mov eax, dword ptr [0x202000]
    call r_show

    mov dword ptr [0xfffff008], 0x203003  # PDE 2: a new page table, frame 0x203000
    mov edi, 0xffc02000                 # ... which is now the page 0xffc02000
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0xffc02000], 0x301003  # map 0x800000 -> 0x301000 in it
    mov esi, r_pde2
    mov eax, dword ptr [0xfffff008]
    call r_show
    mov esi, r_pde2_phys
    mov eax, dword ptr [0x200008]
    call r_show
    mov esi, r_new_page
    mov eax, dword ptr [0x800000]
    call put_kv_hex
    mov al, 0
    ret

# ESI = label, EAX = entry: prints it masked to the frame, R/W and P.
r_show:
    and eax, 0xfffff003
    jmp put_kv_hex

r_name:          .asciz "paging_recursive\n"
r_pde1023:       .asciz "PDE 1023 read at 0xfffffffc: "
r_pde0:          .asciz "PDE 0 read at 0xfffff000: "
r_pte_kernel:    .asciz "PTE of 0x100000 read at 0xffc00400: "
r_pte_4m_before: .asciz "PTE of 0x400000 read at 0xffc01000: "
r_mapped:        .asciz "PTE written at 0xffc01000, invlpg, read of 0x400000: "
r_frame:         .asciz "wrote 0x12345678 at 0x400004, read at 0x300004: "
r_pt1:           .asciz "page table 0x202000 entry 0 (identity read): "
r_pde2:          .asciz "PDE 2 written at 0xfffff008, read there: "
r_pde2_phys:     .asciz "PDE 2 at 0x200008 (identity read): "
r_new_page:      .asciz "0x800000 mapped through the new table at 0xffc02000: "

.include "runtime.S"
