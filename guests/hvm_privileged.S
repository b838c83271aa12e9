# hvm_privileged.S - the control-register and MSR instructions, at ring 0 and at ring 3.
#
# At ring 0 the kernel changes CR0 and CR4 bits of both kinds that hvm's VMCS tells apart
# (a host-owned bit exits, a guest-owned one does not: CR0.NE and WP, CR4.PSE and PGE), runs
# clts and lmsw, writes and reads back an MSR the MSR bitmaps pass through (SYSENTER_ESP) and
# one they intercept (IA32_PAT), and prints what it reads: every one of them must have its
# bare-machine effect whichever way the monitor lets it through.
# At ring 3 the same instructions are privileged: each is a #GP(0) before anything else (on
# VT-x, before any VM exit), which the kernel reports and skips by the length the user program
# leaves in EDI. Then the user program exits through `int 0x80`.

main:
    mov esi, k_name
    call puts
    mov eax, cr0
    or eax, 0x10020                     # NE (the host's under hvm) and WP (the guest's)
    mov cr0, eax
    mov eax, cr0
    mov esi, k_cr0
    call put_kv_hex
    mov eax, cr4
    or eax, 0x90                        # PSE (the host's) and PGE (the guest's)
    mov cr4, eax
    mov eax, cr4
    mov esi, k_cr4
    call put_kv_hex
    mov eax, cr0
    or eax, 8
    mov cr0, eax                        # TS set, then cleared by clts
    clts
    mov ax, 0x3                         # PE and MP
    lmsw ax
    mov eax, cr0
    mov esi, k_cr0
    call put_kv_hex
    xor edx, edx
    mov eax, 0x12345678
    mov ecx, 0x175                      # IA32_SYSENTER_ESP
    wrmsr
    xor eax, eax
    rdmsr
    mov esi, k_sysenter
    call put_kv_hex
    mov edx, 0x70406
    mov eax, 0x70106                    # IA32_PAT with PA1 = UC-: a legal value
    mov ecx, 0x277
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    mov esi, k_pat
    call put_kv_hex

    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov eax, 0x80
    mov ebx, k_syscall
    mov cl, 0xee                        # DPL 3: the user program's way out
    call idt_set_gate
    mov eax, 13
    mov ebx, k_gp
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax
.include "include/enter_user.S"

# ---- ring 3: each instruction faults; EDI is its length, for the kernel to skip it ----------
user_main:
    mov ecx, 0x175
    mov edi, 2
    rdmsr
    mov edi, 2
    wrmsr
    mov edi, 3
    mov cr0, eax
    mov edi, 3
    mov cr4, eax
    mov edi, 3
    mov cr3, eax
    mov edi, 2
    clts
    mov edi, 3
    lmsw ax
    int 0x80
user_spin:
    jmp user_spin

# ---- ring 0 -------------------------------------------------------------------------------
k_gp:
    push eax
    push esi
    mov eax, SEL_KDATA
    mov ds, eax
    mov esi, k_gpmsg
    mov eax, dword ptr [esp + 8]        # the error code
    call put_kv_hex
    add dword ptr [esp + 12], edi       # the user's EIP, past the instruction
    mov eax, SEL_UDATA
    mov ds, eax
    pop esi
    pop eax
    add esp, 4
    iretd

k_syscall:
    mov eax, SEL_KDATA
    mov ds, eax
    mov esi, k_done
    call puts
    mov al, 0
    jmp exit

k_name:     .asciz "hvm_privileged\n"
k_cr0:      .asciz "CR0: "
k_cr4:      .asciz "CR4: "
k_sysenter: .asciz "SYSENTER_ESP read back: "
k_pat:      .asciz "IA32_PAT low read back: "
k_gpmsg:    .asciz "ring 3: #GP error="
k_done:     .asciz "ring 3: done\n"

.balign 16, 0
u_stack:
.fill 256, 1, 0
u_stack_top:

.include "runtime.S"
