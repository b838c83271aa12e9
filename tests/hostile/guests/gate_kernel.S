# gate_kernel.S - an ordinary DPL-3 call gate into the guest kernel, called from ring 3.
#
# The oldest way into a kernel: a call gate in the GDT, DPL 3 so user code may call it, to the
# kernel's ring-0 code. On the bare machine `lcall` switches to the TSS's ring-0 stack, pushes the
# caller's SS, ESP, CS and EIP there, and runs the handler at CPL 0; `retf` goes back to ring 3.
# Under trap the gate is copied into the shadow GDT, where its target is now a DPL-1 segment, and
# the stack switch reads the *monitor's* TSS; Unicorn aborted the whole process on it. The handler
# prints what it was given (caller's CS, whether the frame sits at the TSS's esp0) and its real CS
# RPL: 0 on the bare machine; under trap, where the gate may be emulated into virtual ring 0, it
# must be 1 (mov r, cs is sensitive and unprivileged: it shows the real RPL).

main:
    call hv_setup
    mov esi, g_name
    call puts
    # SLOT_A: a present 32-bit call gate, DPL 3, to 0x08:g_handler, no parameters.
    mov eax, g_handler
    mov ebx, hv_gdt + SLOT_A
    mov word ptr [ebx], ax
    mov word ptr [ebx + 2], SEL_KCODE
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
    mov eax, 1
    mov ebx, g_back
    int 0x80
g_after:
    mov eax, 2
    mov ebx, 0
    int 0x80

# On the ring-0 stack: [esp] EIP, [esp+4] CS, [esp+8] ESP, [esp+12] SS of the caller.
g_handler:
    mov esi, g_in
    call puts
    mov esi, g_caller
    mov eax, dword ptr [esp + 4]
    call put_kv_hex
    mov esi, g_caller_ss
    mov eax, dword ptr [esp + 12]
    call put_kv_hex
    mov esi, g_esp0_yes
    lea eax, [esp + 16]
    cmp eax, dword ptr [tss + 4]
    je g_esp0
    mov esi, g_esp0_no
g_esp0:
    call puts
    mov esi, g_cs
    call hv_print_cs
    .byte 0xcb                                  # retf

g_name:      .asciz "gate_kernel\n"
g_call:      .asciz "user: lcall through a DPL-3 gate to the kernel\n"
g_in:        .asciz "kernel: in the call gate's handler\n"
g_caller:    .asciz "kernel: caller's cs "
g_caller_ss: .asciz "kernel: caller's ss "
g_esp0_yes:  .asciz "kernel: frame at the TSS's esp0: yes\n"
g_esp0_no:   .asciz "kernel: frame at the TSS's esp0: no\n"
g_cs:        .asciz "kernel: real cs rpl "
g_back:      .asciz "user: back in ring 3 after retf\n"

.include "hostile.S"
