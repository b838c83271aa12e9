# gate_monitor_ring1.S - a DPL-1 call gate to the monitor's code selector, called by the kernel.
#
# Under trap hvsim's own ring-0 code and data descriptors sit at the top of the shadow GDT
# (0xFFE8, 0xFFF0) and its TSS at 0xFFF8, above any guest entry. A call gate is a system
# descriptor: copied unchanged into the shadow GDT, a DPL-1 gate whose target is 0xFFE8 is a door
# from the guest kernel's real ring 1 into real ring 0 (and the stack switch it asks for reads the
# monitor's TSS). The gate's payload prints PWNED with its real CS RPL. On the bare machine 0xFFE8
# is beyond the guest's GDT limit: the lcall is a #GP with the target selector as error code.

main:
    call hv_setup
    mov esi, g_name
    call puts
    # SLOT_A: a present 32-bit call gate, DPL 1, to 0xffe8:g_payload, no parameters.
    mov eax, g_payload
    mov ebx, hv_gdt + SLOT_A
    mov word ptr [ebx], ax
    mov word ptr [ebx + 2], 0xffe8
    mov byte ptr [ebx + 4], 0
    mov byte ptr [ebx + 5], 0xac
    shr eax, 16
    mov word ptr [ebx + 6], ax
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]
    mov esi, g_call
    call puts
    mov dword ptr [fault_resume], g_after
    .byte 0x9a; .long 0; .word SLOT_A           # lcall SLOT_A:0
g_after:
    mov esi, g_done
    call puts
    mov al, 0
    ret

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

g_name:  .asciz "gate_monitor_ring1\n"
g_call:  .asciz "kernel: lcall through a DPL-1 gate to 0xffe8\n"
g_done:  .asciz "kernel: carried on after the lcall\n"
g_pwned: .asciz "PWNED: the gate's target ran with real cs rpl "

.include "hostile.S"
