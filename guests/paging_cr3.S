# paging_cr3.S - two address spaces: the same virtual page, a different frame in each.
#
# Two page directories, A at 0x200000 and B at 0x203000, share the page table 0x201000 that
# identity-maps 0-4 MiB (the kernel, its stack, both directories and the frames), and each has
# its own page table for 4-8 MiB (A: 0x202000, B: 0x204000), in which virtual 0x400000 maps frame
# 0x300000 in A and frame 0x301000 in B. The kernel switches CR3 back and forth: each space reads
# its own marker at 0x400000, a write in one is not seen in the other, and both writes are found
# in their frames through the shared identity map. Then two ways a CR3 write is a TLB flush:
# B's PTE is pointed at frame 0x302000 and CR3 is reloaded with the same value (no invlpg), and
# A's PTE is changed while B is loaded, and A is loaded again: both read the new frame.
# A monitor must get this right because a shadow page table belongs to one guest directory: on
# each CR3 write it must switch to (or rebuild) the shadow of the new directory, treat a reload
# of the same value as a flush, and not trust a shadow built before the guest changed a page
# table that was not loaded at the time.

PD_A = 0x200000
PD_B = 0x203000

main:
    mov esi, c_name
    call puts
    mov dword ptr [0x300000], 0xa0a0a0a0
    mov dword ptr [0x301000], 0xb0b0b0b0
    mov dword ptr [0x302000], 0xc0c0c0c0
    mov dword ptr [0x300004], 0
    mov dword ptr [0x301004], 0
    mov dword ptr [0x302004], 0

    mov edi, 0x200000                   # 0x200000-0x204fff: five tables, all zero
    mov ecx, 0x1400
    xor eax, eax
    rep stosd
    mov edi, 0x201000                   # the shared identity table
    mov eax, 0x3
    mov ecx, 0x400
c_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz c_fill
    mov dword ptr [0x200000], 0x201003  # A: PDE 0 shared, PDE 1 its own
    mov dword ptr [0x200004], 0x202003
    mov dword ptr [0x202000], 0x300003  # A: 0x400000 -> 0x300000
    mov dword ptr [0x203000], 0x201003  # B: PDE 0 shared, PDE 1 its own
    mov dword ptr [0x203004], 0x204003
    mov dword ptr [0x204000], 0x301003  # B: 0x400000 -> 0x301000

    mov eax, PD_A
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    call c_show
    mov eax, PD_B
    mov cr3, eax
    call c_show
    mov dword ptr [0x400004], 0x0b0b0001
    mov esi, c_wrote_b
    call puts
    mov eax, PD_A
    mov cr3, eax
    call c_show
    mov dword ptr [0x400004], 0x0a0a0001
    mov esi, c_wrote_a
    call puts
    mov eax, PD_B
    mov cr3, eax
    call c_show
    mov esi, c_frame_a
    mov eax, dword ptr [0x300004]
    call put_kv_hex
    mov esi, c_frame_b
    mov eax, dword ptr [0x301004]
    call put_kv_hex

    mov dword ptr [0x204000], 0x302003  # B: 0x400000 -> 0x302000, no invlpg
    mov eax, cr3
    mov cr3, eax                        # the same value: a flush all the same
    mov esi, c_reload
    call puts
    call c_show
    mov dword ptr [0x202000], 0x302003  # A's table, while B is loaded
    mov eax, PD_A
    mov cr3, eax
    mov esi, c_changed_a
    call puts
    call c_show
    mov al, 0
    ret

# One line: CR3, then the two words at 0x400000 as this address space sees them.
c_show:
    mov esi, c_cr3
    mov eax, cr3
    call puts
    call puthex32
    mov esi, c_word0
    mov eax, dword ptr [0x400000]
    call puts
    call puthex32
    mov esi, c_word1
    mov eax, dword ptr [0x400004]
    jmp put_kv_hex

c_name:       .asciz "paging_cr3\n"
c_cr3:        .asciz "CR3 "
c_word0:      .asciz ": [0x400000] "
c_word1:      .asciz " [0x400004] "
c_wrote_b:    .asciz "wrote 0x0b0b0001 at 0x400004 in B\n"
c_wrote_a:    .asciz "wrote 0x0a0a0001 at 0x400004 in A\n"
c_frame_a:    .asciz "frame 0x300004 (A's) through the shared identity map: "
c_frame_b:    .asciz "frame 0x301004 (B's) through the shared identity map: "
c_reload:     .asciz "B's PTE -> 0x302000, CR3 reloaded with the same value: "
c_changed_a:  .asciz "A's PTE -> 0x302000 while B was loaded, then CR3 = A: "

.include "runtime.S"
