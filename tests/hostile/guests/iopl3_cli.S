# iopl3_cli.S - a ring-3 program given IOPL 3 runs cli and sti.
#
# cli and sti are privileged only relative to IOPL: at CPL <= IOPL they simply work, and a kernel
# that hands a user program IOPL 3 (as X servers once had) expects exactly that. Under trap the
# monitor emulated cli/sti only for the guest kernel and reflected the #GP from ring 3 as if IOPL
# did not matter. With IOPL 3 the program can also drive the serial port itself.

main:
    call hv_setup
    mov esi, p_name
    call puts
    mov eax, p_user
    mov ebx, SEL_UCODE
    mov ecx, 0x3002                             # IOPL 3, IF 0
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

p_user:
    mov esi, p_cli
    call puts
    mov dword ptr [fault_resume], p_1
    cli
    mov esi, p_cli_ok
    call puts
p_1:
    mov esi, p_sti
    call puts
    mov dword ptr [fault_resume], p_2
    sti
    mov esi, p_sti_ok
    call puts
p_2:
    mov eax, 2
    mov ebx, 0
    int 0x80

p_name:   .asciz "iopl3_cli\n"
p_cli:    .asciz "user: cli with IOPL 3\n"
p_cli_ok: .asciz "user: cli did not fault\n"
p_sti:    .asciz "user: sti with IOPL 3\n"
p_sti_ok: .asciz "user: sti did not fault\n"

.include "hostile.S"
