# stale_gdt_ring3.S - after lgdt the kernel adds ring-3 segments to its GDT, then irets to them.
#
# The CPU reads descriptors from memory at each segment load, so segments added to the GDT after
# lgdt work at once on the bare machine. Under trap the real GDT is hvsim's shadow, built at lgdt,
# and the iretd to ring 3 is the monitor's own (its stub, at real ring 0): a shadow that does not
# follow the edit leaves that iretd facing an empty descriptor. The user program says where it is
# and exits through int 0x80.

main:
    call hv_setup
    mov esi, u_name
    call puts
    # SLOT_B: ring-3 code, SLOT_C: ring-3 data, both flat, written after the last lgdt.
    mov ebx, hv_gdt                             # (keystone mis-assembles [label + SYM])
    mov dword ptr [ebx + SLOT_B], 0x0000ffff
    mov dword ptr [ebx + SLOT_B + 4], 0x00cffa00
    mov dword ptr [ebx + SLOT_C], 0x0000ffff
    mov dword ptr [ebx + SLOT_C + 4], 0x00cff200
    mov esi, u_iret
    call puts
    mov eax, u_user
    mov ebx, SLOT_B + 3
    mov ecx, 0x2
    mov edx, SLOT_C + 3
    mov esi, hv_stack3_top
    jmp hv_enter_ring

u_user:
    mov eax, 1
    mov ebx, u_hello
    int 0x80
    mov ebx, cs
    mov eax, 3
    mov esi, u_cs
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

u_name:  .asciz "stale_gdt_ring3\n"
u_iret:  .asciz "kernel: iretd to ring 3 through segments added after lgdt\n"
u_hello: .asciz "user: running in ring 3\n"
u_cs:    .asciz "user: cs "

.include "hostile.S"
