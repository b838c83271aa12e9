# runtime.S - the few things every guest kernel needs before it can say anything.
#
# A guest is a real kernel: nobody has set up a console, a stack or descriptor tables for it.
# This runtime is what a tiny OS would have in its first file: the entry point `_start`, a
# stack, the COM1 serial port as console, number printing, a flat GDT with ring-0 and ring-3
# segments and a TSS slot, an empty IDT with a helper to fill gates, and `exit` through QEMU's
# isa-debug-exit port. A guest includes it (`.include "runtime.S"`) and defines `main`.
#
# Calling convention (every routine preserves all registers except EFLAGS unless noted):
#   main            defined by the guest; called with the runtime set up; returns the exit code in AL
#   putc            AL = byte to send
#   puts            ESI = address of a NUL-terminated string
#   putnl           prints "\n"
#   puthex32        EAX = value, printed as 0x%08x
#   putdec          EAX = value, printed as unsigned decimal
#   put_kv_hex      ESI = label string, EAX = value: prints label, 0x%08x, newline
#   put_kv_dec      ESI = label string, EAX = value: prints label, decimal, newline
#   idt_set_gate    EAX = vector, EBX = handler address, CL = gate type/attributes byte
#                   (0x8E: 32-bit interrupt gate DPL 0; 0x8F: trap gate DPL 0; 0xEF: trap gate DPL 3)
#   idt_load        loads the runtime's IDT (all gates not present until set)
#   exit            AL = exit code; never returns
# Data: boot_magic / boot_info hold EAX / EBX as the boot loader left them; tss is the TSS
# (esp0 at tss+4, ss0 = 0x10 already), rt_kstack_top is the default ring-0 stack in the TSS.
#
# Selectors: 0x08 ring-0 code, 0x10 ring-0 data, 0x1b ring-3 code, 0x23 ring-3 data, 0x28 TSS.
#
# keystone 0.9.2 puts a 0x66 prefix on lgdt/lidt, `mov ds, ax`, `push cs/ds/es` and on
# `push CONSTANT` when CONSTANT is a symbol (a 16-bit push!), and cannot encode far
# jumps, so those are written as bytes or with 32-bit registers (see shared UNICORN.md).

COM1 = 0x3f8
DEBUG_EXIT_PORT = 0xf4
SEL_KCODE = 0x08
SEL_KDATA = 0x10
SEL_UCODE = 0x1b
SEL_UDATA = 0x23
SEL_TSS = 0x28

_start:
    mov esp, rt_stack_top
    mov dword ptr [boot_magic], eax
    mov dword ptr [boot_info], ebx
    call serial_init
    call gdt_init
    call main
    jmp exit

# The 16550 needs its line set up before it is a console: 115200 baud (divisor 1), 8N1, FIFOs on.
serial_init:
    push eax
    push edx
    mov dx, COM1 + 1
    mov al, 0x00
    out dx, al              # IER: no interrupts; we poll
    mov dx, COM1 + 3
    mov al, 0x80
    out dx, al              # LCR: DLAB=1 exposes the divisor latch at +0/+1
    mov dx, COM1
    mov al, 0x01
    out dx, al              # DLL
    mov dx, COM1 + 1
    mov al, 0x00
    out dx, al              # DLM
    mov dx, COM1 + 3
    mov al, 0x03
    out dx, al              # LCR: 8 data bits, no parity, 1 stop bit, DLAB=0
    mov dx, COM1 + 2
    mov al, 0xc7
    out dx, al              # FCR: enable and clear FIFOs, 14-byte trigger
    mov dx, COM1 + 4
    mov al, 0x03
    out dx, al              # MCR: DTR and RTS
    pop edx
    pop eax
    ret

# Wait until the transmit holding register is empty (LSR bit 5), then hand it the byte.
putc:
    push edx
    push eax
    mov dx, COM1 + 5
rt_putc_wait:
    in al, dx
    test al, 0x20
    jz rt_putc_wait
    pop eax
    mov dx, COM1
    out dx, al
    pop edx
    ret

puts:
    push eax
    push esi
rt_puts_loop:
    mov al, byte ptr [esi]
    test al, al
    jz rt_puts_done
    call putc
    inc esi
    jmp rt_puts_loop
rt_puts_done:
    pop esi
    pop eax
    ret

putnl:
    push eax
    mov al, 10
    call putc
    pop eax
    ret

puthex32:
    pushad
    mov ebx, eax
    mov al, 48              # '0'
    call putc
    mov al, 120             # 'x'
    call putc
    mov ecx, 8
rt_hex_loop:
    rol ebx, 4
    mov al, bl
    and al, 0x0f
    cmp al, 10
    jb rt_hex_digit
    add al, 39              # 'a' - 10 - '0'
rt_hex_digit:
    add al, 48
    call putc
    dec ecx
    jnz rt_hex_loop
    popad
    ret

putdec:
    pushad
    xor ecx, ecx
    mov ebx, 10
rt_dec_div:
    xor edx, edx
    div ebx
    push edx
    inc ecx
    test eax, eax
    jnz rt_dec_div
rt_dec_out:
    pop eax
    add al, 48
    call putc
    dec ecx
    jnz rt_dec_out
    popad
    ret

put_kv_hex:
    call puts
    call puthex32
    jmp putnl

put_kv_dec:
    call puts
    call putdec
    jmp putnl

# isa-debug-exit: QEMU exits with status (code << 1) | 1; hvsim ends the run with `code`.
exit:
    mov dx, DEBUG_EXIT_PORT
    out dx, al
rt_halt:
    cli
    hlt
    jmp rt_halt

# Multiboot leaves CS/DS flat but says the GDT may be anywhere (even gone): load our own.
gdt_init:
    push eax
    push ebx
    mov eax, tss
    mov ebx, gdt + SEL_TSS
    mov word ptr [ebx], 103             # limit: a TSS without an I/O bitmap
    mov word ptr [ebx + 2], ax
    shr eax, 16
    mov byte ptr [ebx + 4], al
    mov byte ptr [ebx + 5], 0x89        # present, DPL 0, available 32-bit TSS
    mov byte ptr [ebx + 6], 0
    mov byte ptr [ebx + 7], ah
    mov dword ptr [tss + 4], rt_kstack_top
    mov dword ptr [tss + 8], SEL_KDATA
    mov word ptr [tss + 102], 104       # I/O map base past the limit: no bitmap
    mov eax, gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    .byte 0xea; .long rt_gdt_reload; .word SEL_KCODE   # jmp far 0x08:rt_gdt_reload
rt_gdt_reload:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    mov ss, eax
    pop ebx
    pop eax
    ret

idt_set_gate:
    push edi
    push ebx
    lea edi, [idt + eax * 8]
    mov word ptr [edi], bx
    mov word ptr [edi + 2], SEL_KCODE
    mov byte ptr [edi + 4], 0
    mov byte ptr [edi + 5], cl
    shr ebx, 16
    mov word ptr [edi + 6], bx
    pop ebx
    pop edi
    ret

idt_load:
    push eax
    mov eax, idt_ptr
    .byte 0x0f, 0x01, 0x18              # lidt [eax]
    pop eax
    ret

.balign 8, 0
gdt:
    .long 0x00000000, 0x00000000        # 0x00 null
    .long 0x0000ffff, 0x00cf9a00        # 0x08 ring-0 code, flat 4 GiB
    .long 0x0000ffff, 0x00cf9200        # 0x10 ring-0 data
    .long 0x0000ffff, 0x00cffa00        # 0x18 ring-3 code (selector 0x1b)
    .long 0x0000ffff, 0x00cff200        # 0x20 ring-3 data (selector 0x23)
    .long 0x00000000, 0x00000000        # 0x28 TSS, filled in by gdt_init
gdt_end:
.balign 4, 0
    .word 0
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    .word 0
idt_ptr:
    .word 256 * 8 - 1
    .long idt
boot_magic:
    .long 0
boot_info:
    .long 0
.balign 8, 0
idt:
    .fill 256 * 8, 1, 0
.balign 16, 0
tss:
    .fill 104, 1, 0
.balign 16, 0
rt_kstack:
    .fill 4096, 1, 0
rt_kstack_top:
rt_stack:
    .fill 8192, 1, 0
rt_stack_top:

# (placed after the data, so that adding it moved no table a guest prints the address of)
# pic_remap: initialise both 8259As, master at vectors 0x20-0x27, slave at 0x28-0x2f (the BIOS
# leaves them at 0x08 and 0x70); AL = the master's mask, the slave fully masked. Preserves EAX.
pic_remap:
    push eax
    mov al, 0x11                        # ICW1: edge triggered, cascade, ICW4 follows
    out 0x20, al
    out 0xa0, al
    mov al, 0x20                        # ICW2: master vectors 0x20-0x27
    out 0x21, al
    mov al, 0x28                        # ICW2: slave vectors 0x28-0x2f
    out 0xa1, al
    mov al, 0x04                        # ICW3: slave on master's IRQ2
    out 0x21, al
    mov al, 0x02                        # ICW3: slave's cascade identity
    out 0xa1, al
    mov al, 0x01                        # ICW4: 8086 mode, normal EOI
    out 0x21, al
    out 0xa1, al
    pop eax
    out 0x21, al                        # OCW1: the master's mask from AL
    push eax
    mov al, 0xff                        # OCW1: the slave fully masked
    out 0xa1, al
    pop eax
    ret
