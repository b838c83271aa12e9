# iret_ring2.S - an iretd to a DPL-2 code segment; code in ring 2 runs a privileged instruction.
#
# Rings 1 and 2 are real rings: code there is not the kernel, and `mov eax, cr0` is a #GP (only
# CPL 0 may). Under trap the guest kernel runs at real ring 1 and the DPL-2 segment is present in
# the kernel's shadow view, so the iretd outward to ring 2 runs on the CPU without trapping: the
# monitor kept the virtual CPL at 0 and emulated the instruction for ring-2 code. The ring-2 code
# runs with IOPL 3, so it may print itself; the kernel's #GP handler prints the vector and the
# ring in the frame, then the code carries on and ends the run through int 0x80.

main:
    call hv_setup
    mov esi, i_name
    call puts
    mov eax, i_ring
    mov ebx, SEL_R2CODE
    mov ecx, 0x3002                             # IOPL 3, IF 0
    mov edx, SEL_R2DATA
    mov esi, hv_stack2_top
    jmp hv_enter_ring

i_ring:
    mov esi, i_cs
    call hv_print_cs
    mov esi, i_try
    call puts
    mov dword ptr [fault_resume], i_1
    mov eax, cr0
    mov esi, i_cr0
    call put_kv_hex
i_1:
    mov esi, i_on
    call puts
    mov eax, 2
    mov ebx, 0
    int 0x80

i_name: .asciz "iret_ring2\n"
i_cs:   .asciz "ring 2: real cs rpl "
i_try:  .asciz "ring 2: mov eax, cr0\n"
i_cr0:  .asciz "ring 2: no fault, cr0 reads "
i_on:   .asciz "ring 2: carried on\n"

.include "hostile.S"
