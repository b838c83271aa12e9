# paging_basic.S - two-level 32-bit paging: turning it on, remapping a page, invlpg, turning it off.
#
# The kernel builds a page directory at 0x200000 and two page tables (0x201000, 0x202000) that
# identity-map the first 8 MiB with 4 KiB pages (supervisor, read/write), where the kernel, the
# runtime and the test frames live, and sets CR3 and CR0.PG. Frames A, B and C (0x300000,
# 0x301000, 0x302000) and the page 0x500000 hold markers written while paging was off. Then the
# virtual page V = 0x500000 is pointed at other frames by rewriting its PTE (0x202400):
#   identity (its own marker) -> frame B (reads and a write go to B, seen again through B's
#   identity address) -> frame C (invlpg, then read) -> not present (#PF, CR2 = V, error 0)
#   -> identity again. After every change of the PTE the kernel runs invlpg before it reads:
#   until then a real CPU may still use the old translation, and nothing printed depends on that.
# Last, V is pointed at frame C once more and CR0.PG cleared: the same address now reads the
# physical page 0x500000, not frame C.
# A monitor must get this right because every line is a translation the guest chose: a shadow
# page table that misses a PTE write, ignores invlpg, or keeps translating after CR0.PG is
# cleared prints another frame's marker.

PD = 0x200000
PT0 = 0x201000                          # 0-4 MiB
PT1 = 0x202000                          # 4-8 MiB

main:
    mov esi, b_name
    call puts
    mov eax, 14
    mov ebx, b_pf
    mov cl, 0x8e
    call idt_set_gate
    call idt_load

    mov dword ptr [0x300000], 0xaaaa0000 # frame A
    mov dword ptr [0x301000], 0xbbbb0000 # frame B
    mov dword ptr [0x302000], 0xcccc0000 # frame C
    mov dword ptr [0x500000], 0x55550000 # the page V maps to itself

    # PD: two page tables, the rest not present. PT0 and PT1: identity, 0x3 = present, write.
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0x200000], 0x201003
    mov dword ptr [0x200004], 0x202003
    mov edi, PT0
    mov eax, 0x3
    mov ecx, 0x800                      # both tables, back to back
b_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz b_fill

    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, b_cr0
    and eax, 0x80000001                 # PG and PE
    call put_kv_hex
    mov esi, b_cr3
    mov eax, cr3
    call put_kv_hex
    mov esi, b_ident
    mov eax, dword ptr [0x300000]
    call put_kv_hex
    mov esi, b_v_ident
    mov eax, dword ptr [0x500000]
    call put_kv_hex

    mov dword ptr [0x202400], 0x301003  # V -> frame B
    invlpg [0x500000]
    mov esi, b_v_b
    mov eax, dword ptr [0x500000]
    call put_kv_hex
    mov dword ptr [0x500004], 0x12345678 # a write through V ...
    mov esi, b_b_ident
    mov eax, dword ptr [0x301004]       # ... lands in frame B
    call put_kv_hex

    mov dword ptr [0x202400], 0x302003  # V -> frame C
    mov eax, dword ptr [0x500000]       # may still read frame B: not printed
    invlpg [0x500000]
    mov esi, b_v_c
    mov eax, dword ptr [0x500000]
    call put_kv_hex

    mov dword ptr [0x202400], 0         # unmapped
    invlpg [0x500000]
    mov esi, b_unmapped
    call puts
    mov dword ptr [b_fixup], b_after_np
    mov eax, dword ptr [0x500000]
b_after_np:
    mov dword ptr [0x202400], 0x500003  # identity again
    invlpg [0x500000]
    mov esi, b_remapped
    mov eax, dword ptr [0x500000]
    call put_kv_hex

    mov dword ptr [0x202400], 0x302003  # V -> frame C, then paging off
    invlpg [0x500000]
    mov esi, b_v_c_again
    mov eax, dword ptr [0x500000]
    call put_kv_hex
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    mov esi, b_cr0_off
    and eax, 0x80000001
    call put_kv_hex
    mov esi, b_phys
    mov eax, dword ptr [0x500000]
    call put_kv_hex
    mov esi, b_phys_b
    mov eax, dword ptr [0x301004]
    call put_kv_hex
    mov al, 0
    ret

# #PF: print CR2 and the error code, resume at b_fixup (the faulting read is skipped).
b_pf:
    push eax
    push esi
    mov esi, b_pf_cr2
    mov eax, cr2
    call puts
    call puthex32
    mov esi, b_pf_err
    mov eax, dword ptr [esp + 8]        # the error code, under EAX and ESI
    call puts
    call puthex32
    call putnl
    mov eax, dword ptr [b_fixup]
    mov dword ptr [esp + 12], eax       # the frame's EIP
    pop esi
    pop eax
    add esp, 4
    iretd

b_fixup:      .long 0
b_name:       .asciz "paging_basic\n"
b_cr0:        .asciz "CR0 & (PG|PE) after paging on: "
b_cr3:        .asciz "CR3: "
b_ident:      .asciz "identity read of frame A 0x300000: "
b_v_ident:    .asciz "V 0x500000 mapped to itself: "
b_v_b:        .asciz "V mapped to frame B 0x301000: "
b_b_ident:    .asciz "write of 0x12345678 to V+4, read at 0x301004: "
b_v_c:        .asciz "V mapped to frame C 0x302000, after invlpg: "
b_unmapped:   .asciz "V not present, read: "
b_pf_cr2:     .asciz "#PF cr2 "
b_pf_err:     .asciz " error "
b_remapped:   .asciz "V mapped to itself again: "
b_v_c_again:  .asciz "V mapped to frame C before paging off: "
b_cr0_off:    .asciz "CR0 & (PG|PE) after paging off: "
b_phys:       .asciz "paging off, read of 0x500000 (physical): "
b_phys_b:     .asciz "paging off, read of 0x301004 (physical): "

.include "runtime.S"
