# exceptions.S - protected-mode exception delivery, as the CPU does it and a monitor must.
#
# Unicorn never delivers through the guest's IDT, so every technique's delivery code is judged by
# this guest. It installs gates, then raises, at CPL 0: #DE (div by zero, a fault: EIP on the div),
# #BP (int3, a trap: EIP after it), #UD (ud2), #GP with an error code (loading selector 0x48,
# past the GDT limit, into DS: error code = the selector), #NP (int 0x81 through a not-present
# gate: error code = 0x81*8 + 2, bit 1 saying "IDT"), and int 0x80 through a DPL-3 trap gate.
# Each handler prints where the CPU left EIP relative to the instruction ("site+N"), the CS in
# the frame, the error code when the CPU pushes one, and IF in the saved EFLAGS (read from the
# frame, not with pushf: pushf is sensitive and would show the real IF under trap-and-emulate);
# then it moves EIP past the instruction and returns.

main:
    mov esi, x_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 0
    mov ebx, h_de
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 3
    mov ebx, h_bp
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 6
    mov ebx, h_ud
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 11
    mov ebx, h_np
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 13
    mov ebx, h_gp
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x80
    mov ebx, h_syscall
    mov cl, 0xef                        # 32-bit trap gate, DPL 3, present
    call idt_set_gate
    mov eax, 0x81
    mov ebx, h_syscall
    mov cl, 0x6f                        # the same gate, but not present (P=0)
    call idt_set_gate
    call idt_load
    sti                                 # so the handlers can show which gates clear IF

    mov eax, 7
    xor edx, edx
    xor ecx, ecx
de_site:
    div ecx
    mov eax, 0x48
bp_site:
    int3
ud_site:
    ud2
gp_site:
    mov ds, eax
np_site:
    int 0x81
    mov eax, 0x1234
sys_site:
    int 0x80
    cli
    mov eax, dword ptr [x_count]
    mov esi, x_handled
    call put_kv_dec
    mov al, 0
    ret

# ESI = name, EAX = frame EIP - site, ECX = error code or 0xffffffff for none,
# EDX = frame CS, EBX = EFLAGS now (inside the handler).
report:
    call puts
    push esi
    mov esi, x_site
    call puts
    call putdec
    mov esi, x_cs
    mov eax, edx
    call puts
    call puthex32
    cmp ecx, 0xffffffff
    je report_no_error
    mov esi, x_error
    mov eax, ecx
    call puts
    call puthex32
report_no_error:
    mov esi, x_if
    call puts
    mov eax, ebx
    shr eax, 9
    and eax, 1
    call putdec
    call putnl
    inc dword ptr [x_count]
    pop esi
    ret

# Handlers without an error code: the frame is EIP, CS, EFLAGS at [esp] on entry.
h_de:
    pushad
    mov esi, x_de
    mov eax, dword ptr [esp + 32]
    sub eax, de_site
    mov ecx, 0xffffffff
    mov edx, dword ptr [esp + 36]
    mov ebx, dword ptr [esp + 40]   # EFLAGS in the frame: the interrupted code's IF
    call report
    add dword ptr [esp + 32], 2         # skip `div ecx` (f7 f1)
    popad
    iretd

h_bp:
    pushad
    mov esi, x_bp
    mov eax, dword ptr [esp + 32]
    sub eax, bp_site
    mov ecx, 0xffffffff
    mov edx, dword ptr [esp + 36]
    mov ebx, dword ptr [esp + 40]   # EFLAGS in the frame: the interrupted code's IF
    call report                         # a trap: EIP is already past int3
    popad
    iretd

h_ud:
    pushad
    mov esi, x_ud
    mov eax, dword ptr [esp + 32]
    sub eax, ud_site
    mov ecx, 0xffffffff
    mov edx, dword ptr [esp + 36]
    mov ebx, dword ptr [esp + 40]   # EFLAGS in the frame: the interrupted code's IF
    call report
    add dword ptr [esp + 32], 2         # skip ud2 (0f 0b)
    popad
    iretd

h_syscall:
    pushad
    mov esi, x_sys
    mov eax, dword ptr [esp + 28]       # the caller's EAX, saved by pushad
    call puts
    call puthex32
    mov esi, x_sys2
    mov eax, dword ptr [esp + 32]
    sub eax, sys_site
    mov ecx, 0xffffffff
    mov edx, dword ptr [esp + 36]
    mov ebx, dword ptr [esp + 40]   # EFLAGS in the frame: the interrupted code's IF
    call report                         # int n is a trap: EIP is past it already
    popad
    iretd

# Handlers with an error code: it sits on top of the frame and iretd must not see it.
h_gp:
    pushad
    mov esi, x_gp
    mov eax, dword ptr [esp + 36]
    sub eax, gp_site
    mov ecx, dword ptr [esp + 32]
    mov edx, dword ptr [esp + 40]
    mov ebx, dword ptr [esp + 44]   # EFLAGS in the frame: the interrupted code's IF
    call report
    add dword ptr [esp + 36], 2         # skip `mov ds, eax` (8e d8)
    popad
    add esp, 4
    iretd

h_np:
    pushad
    mov esi, x_np
    mov eax, dword ptr [esp + 36]
    sub eax, np_site
    mov ecx, dword ptr [esp + 32]
    mov edx, dword ptr [esp + 40]
    mov ebx, dword ptr [esp + 44]   # EFLAGS in the frame: the interrupted code's IF
    call report
    add dword ptr [esp + 36], 2         # skip `int 0x81` (cd 81)
    popad
    add esp, 4
    iretd

x_count:   .long 0
x_name:    .asciz "exceptions\n"
x_de:      .asciz "#DE vector 0 (div by zero)"
x_bp:      .asciz "#BP vector 3 (int3)"
x_ud:      .asciz "#UD vector 6 (ud2)"
x_gp:      .asciz "#GP vector 13 (mov ds, 0x48)"
x_np:      .asciz "#NP vector 11 (int 0x81, gate not present)"
x_sys:     .asciz "int 0x80 (DPL-3 trap gate) eax="
x_sys2:    .asciz ""
x_site:    .asciz ": eip=site+"
x_cs:      .asciz " cs="
x_error:   .asciz " error="
x_if:      .asciz " frame IF="
x_handled: .asciz "exceptions handled: "

.include "runtime.S"
