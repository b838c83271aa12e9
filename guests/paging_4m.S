# paging_4m.S - 4 MiB pages (CR4.PSE, the PS bit in a PDE), alone and mixed with page tables.
#
# With CR4.PSE set, a PDE with PS (bit 7) maps 4 MiB directly, no page table. The page directory
# at 0x200000 has:
#   PDE 0, 1  4 MiB pages mapping 0-8 MiB to themselves (the kernel runs in PDE 0's page);
#   PDE 2     virtual 0x800000-0xbfffff, a 4 MiB page mapping physical 0xc00000 first, then
#             (remapped) physical 0x800000;
#   PDE 3     virtual 0xc00000, a page table (0x201000) of 4 KiB pages that point into the
#             big pages: 0xc00000 -> 0x401000, 0xc01000 -> 0x800000, 0xc02000 -> 0xc00000;
#   PDE 4     virtual 0x1000000, a 4 MiB page not present (PS set, P clear), made present later.
# Markers written with paging off tell the frames apart. The remap of PDE 2 is followed by one
# invlpg of 0x800000, yet 0xbff000 (another 4 KiB of the same big page, read before the remap)
# reads the new frame: INVLPG drops every TLB entry for the page that contains its address,
# and the page is 4 MiB (SDM 4.10.4.1, INVLPG). A write through the big page is read back
# through a 4 KiB alias; a read and a write inside the not-present big page are #PF 0x0 and 0x2
# with CR2 the full address; setting P needs no invlpg (not-present entries are never cached).
# A monitor must get this right because a shadow page table may split a 4 MiB page into 4 KiB
# pieces: then one invlpg must drop all 1,024 of them, and the guest's big PDE (not a page
# table) is what it must watch for writes.

PD = 0x200000

main:
    mov esi, g_name
    call puts
    mov eax, 14
    mov ebx, g_pf
    mov cl, 0x8e
    call idt_set_gate
    call idt_load

    mov dword ptr [0x401000], 0x41410000
    mov dword ptr [0x800010], 0x88880000
    mov dword ptr [0xbff000], 0x0bff0000
    mov dword ptr [0xc00010], 0xcccc0000
    mov dword ptr [0xfff000], 0x0fff0000
    mov dword ptr [0x1000ab0], 0x10100000
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0x200000], 0x000083  # PS, write, present
    mov dword ptr [0x200004], 0x400083
    mov dword ptr [0x200008], 0xc00083
    mov dword ptr [0x20000c], 0x201003  # a page table
    mov dword ptr [0x200010], 0x1000082 # PS, write, not present
    mov edi, 0x201000
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0x201000], 0x401003
    mov dword ptr [0x201004], 0x800003
    mov dword ptr [0x201008], 0xc00003

    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, g_cr4
    mov eax, cr4
    and eax, 0x10
    call put_kv_hex

    mov esi, g_ident
    mov eax, dword ptr [0x401000]
    call put_kv_hex
    mov esi, g_pde2_c
    mov eax, dword ptr [0x800010]
    call put_kv_hex
    mov esi, g_end_c
    mov eax, dword ptr [0xbff000]
    call put_kv_hex

    mov dword ptr [0x200008], 0x800083  # PDE 2 -> physical 0x800000
    invlpg [0x800000]                   # one invlpg for the whole 4 MiB page
    mov esi, g_pde2_8
    mov eax, dword ptr [0x800010]
    call put_kv_hex
    mov esi, g_end_8
    mov eax, dword ptr [0xbff000]
    call put_kv_hex

    mov dword ptr [0x800010], 0x12345678
    mov esi, g_alias
    mov eax, dword ptr [0xc01010]
    call put_kv_hex
    mov esi, g_small0
    mov eax, dword ptr [0xc00000]
    call put_kv_hex
    mov esi, g_small2
    mov eax, dword ptr [0xc02010]
    call put_kv_hex

    mov esi, g_np_read
    call puts
    mov dword ptr [g_fixup], g_r1
    mov eax, dword ptr [0x1000ab0]
g_r1:
    mov esi, g_np_write
    call puts
    mov dword ptr [g_fixup], g_r2
    mov dword ptr [0x1000ab0], eax
g_r2:
    or dword ptr [0x200010], 1          # present now; no invlpg needed
    mov esi, g_present
    mov eax, dword ptr [0x1000ab0]
    call put_kv_hex
    mov al, 0
    ret

# #PF: print CR2 and the error code, resume at g_fixup (the access is skipped).
g_pf:
    push eax
    push esi
    mov esi, g_cr2_msg
    mov eax, cr2
    call puts
    call puthex32
    mov esi, g_err_msg
    mov eax, dword ptr [esp + 8]        # the error code, under EAX and ESI
    call puts
    call puthex32
    call putnl
    mov eax, dword ptr [g_fixup]
    mov dword ptr [esp + 12], eax       # the frame's EIP
    pop esi
    pop eax
    add esp, 4
    iretd

g_fixup:      .long 0
g_name:       .asciz "paging_4m\n"
g_cr4:        .asciz "CR4 & PSE: "
g_ident:      .asciz "0x401000 through the identity 4 MiB page: "
g_pde2_c:     .asciz "0x800010, PDE 2 -> 0xc00000: "
g_end_c:      .asciz "0xbff000, PDE 2 -> 0xc00000: "
g_pde2_8:     .asciz "0x800010, PDE 2 -> 0x800000, after invlpg 0x800000: "
g_end_8:      .asciz "0xbff000, same big page, no invlpg of its own: "
g_alias:      .asciz "wrote 0x12345678 at 0x800010, read at 4 KiB alias 0xc01010: "
g_small0:     .asciz "0xc00000 (4 KiB page -> 0x401000): "
g_small2:     .asciz "0xc02010 (4 KiB page -> 0xc00000): "
g_np_read:    .asciz "read of 0x1000ab0 (4 MiB page not present): "
g_np_write:   .asciz "write of 0x1000ab0 (4 MiB page not present): "
g_cr2_msg:    .asciz "#PF cr2 "
g_err_msg:    .asciz " error "
g_present:    .asciz "0x1000ab0 after PDE 4 is made present: "

.include "runtime.S"
