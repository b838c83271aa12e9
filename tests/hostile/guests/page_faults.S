# page_faults.S - page faults with paging on: a write, a read and a fetch at unmapped addresses,
# and a ring-3 write to a supervisor page.
#
# The page directory maps 0-4 MiB as one user 4 MiB page (the kernel, its stacks and this table)
# and 4-8 MiB as a supervisor-only one; nothing else. Each access below is a #PF whose error code
# the CPU computes (P: the page was present, W: a write, U: from ring 3; no I/D bit without NX)
# and whose address is in CR2. hvsim delivers #PF itself; working out the error code, it walked the
# guest's page tables from Python and the walker's PageFault escaped from the monitor, most surely
# for the fetch, whose EIP is itself unmapped. The kernel prints vector, ring, error code and CR2
# for each, and carries on.

PD = 0x9000

main:
    call hv_setup
    mov esi, f_name
    call puts
    mov edi, PD
    xor eax, eax
    mov ecx, 0x400
f_clear:
    mov dword ptr [edi + ecx * 4 - 4], eax
    dec ecx
    jnz f_clear
    mov dword ptr [edi], 0x00000087             # 0-4 MiB: present, writable, user, 4 MiB page
    mov dword ptr [edi + 4], 0x00400083         # 4-8 MiB: present, writable, supervisor only
    mov eax, cr4
    or eax, 0x10                                # CR4.PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, f_on
    call puts

    mov esi, f_write
    call puts
    mov dword ptr [fault_resume], f_1
    mov eax, 0x80000000
    mov dword ptr [eax], 1
f_1:
    mov esi, f_read
    call puts
    mov dword ptr [fault_resume], f_2
    mov eax, 0x80000004
    mov eax, dword ptr [eax]
f_2:
    mov esi, f_fetch
    call puts
    mov dword ptr [fault_resume], f_3
    mov eax, 0x80001000
    call eax
f_3:
    add esp, 4                                  # (the call pushed its return address)
    mov eax, f_user
    mov ebx, SEL_UCODE
    mov ecx, 0x2
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

f_user:
    mov eax, 1
    mov ebx, f_user_write
    int 0x80
    mov dword ptr [fault_resume], f_4
    mov eax, 0x400000
    mov dword ptr [eax], 1
f_4:
    mov eax, 1
    mov ebx, f_done
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

f_name:       .asciz "page_faults\n"
f_on:         .asciz "kernel: paging on\n"
f_write:      .asciz "kernel: write to 0x80000000 (not present)\n"
f_read:       .asciz "kernel: read from 0x80000004 (not present)\n"
f_fetch:      .asciz "kernel: call 0x80001000 (not present)\n"
f_user_write: .asciz "user: write to 0x400000 (a supervisor page)\n"
f_done:       .asciz "user: carried on\n"

.include "hostile.S"
