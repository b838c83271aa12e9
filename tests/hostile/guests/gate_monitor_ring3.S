# gate_monitor_ring3.S - a DPL-3 call gate to the monitor's code selector, called from ring 3.
#
# The same door as gate_monitor_ring1.S, opened wider: a gate any ring may use, whose target is
# hvsim's ring-0 code selector 0xFFE8 in the shadow GDT. A ring-3 program calls it; the payload
# prints PWNED with its real CS RPL. On the bare machine 0xFFE8 is beyond the guest's GDT limit:
# the lcall is a #GP with the target selector as error code, taken from ring 3.

main:
    call hv_setup
    mov esi, g_name
    call puts
    # SLOT_A: a present 32-bit call gate, DPL 3, to 0xffe8:g_payload, no parameters.
    mov eax, g_payload
    mov ebx, hv_gdt + SLOT_A
    mov word ptr [ebx], ax
    mov word ptr [ebx + 2], 0xffe8
    mov byte ptr [ebx + 4], 0
    mov byte ptr [ebx + 5], 0xec
    shr eax, 16
    mov word ptr [ebx + 6], ax
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]
    mov eax, g_user
    mov ebx, SEL_UCODE
    mov ecx, 0x2
    mov edx, SEL_UDATA
    mov esi, hv_stack3_top
    jmp hv_enter_ring

g_user:
    mov eax, 1
    mov ebx, g_call
    int 0x80
    mov dword ptr [fault_resume], g_after
    .byte 0x9a; .long 0; .word SLOT_A + 3       # lcall SLOT_A|3:0
g_after:
    mov eax, 1
    mov ebx, g_done
    int 0x80
    mov eax, 2
    mov ebx, 0
    int 0x80

g_payload:
    mov eax, hv_escaped
    call eax
    mov eax, cr0
    mov esi, g_pwned
    mov eax, hv_print_cs
    call eax
    mov al, PWNED_EXIT
    mov edx, exit
    jmp edx

g_name:  .asciz "gate_monitor_ring3\n"
g_call:  .asciz "user: lcall through a DPL-3 gate to 0xffe8\n"
g_done:  .asciz "user: carried on after the lcall\n"
g_pwned: .asciz "PWNED: the gate's target ran with real cs rpl "

.include "hostile.S"
