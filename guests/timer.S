# timer.S - external interrupts: the 8259A PIC, the 8254 PIT and an idle loop on hlt.
#
# The kernel remaps the master PIC to vectors 0x20-0x27 (the BIOS left IRQ0 on vector 8, which
# protected mode uses for #DF) and the slave to 0x28-0x2f, unmasks IRQ0 only, programs PIT
# channel 0 in mode 2 (rate generator) at 100 Hz, and sleeps in `hlt` with IF=1. Each IRQ0 bumps a
# counter and acknowledges with a non-specific EOI; after 5 ticks the kernel prints what it saw.
# Nothing printed depends on wall-clock time: the tick count, how many times hlt returned (only
# IRQ0 can wake it), the PIC's mask register, and its in-service register read inside the first
# handler (IRQ0 in service: 0x01) and after the EOI (0x00).

TICKS = 5
PIT_DIVISOR = 11932                     # 1193182 Hz / 100

main:
    mov esi, t_name
    call puts
    mov al, 0xfe                        # master mask: only IRQ0
    call pic_remap

    mov eax, 0x20
    mov ebx, t_irq0
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x27                       # the master's spurious IRQ7, just in case: no EOI
    mov ebx, t_spurious
    call idt_set_gate
    call idt_load

    mov al, 0x34                        # channel 0, lobyte/hibyte, mode 2, binary
    out 0x43, al
    mov al, PIT_DIVISOR & 0xff
    out 0x40, al
    mov al, PIT_DIVISOR >> 8
    out 0x40, al

    sti
t_idle:
    hlt
    inc dword ptr [t_wakeups]
    cmp dword ptr [t_ticks], TICKS
    jb t_idle
    cli

    mov esi, t_ticks_msg
    mov eax, dword ptr [t_ticks]
    call put_kv_dec
    mov esi, t_wake_msg
    mov eax, dword ptr [t_wakeups]
    call put_kv_dec
    in al, 0x21
    movzx eax, al
    mov esi, t_imr_msg
    call put_kv_hex
    mov esi, t_isr_msg
    mov eax, dword ptr [t_isr_in]
    call put_kv_hex
    mov esi, t_isr2_msg
    mov eax, dword ptr [t_isr_after]
    call put_kv_hex
    mov al, 0
    ret

t_irq0:
    push eax
    cmp dword ptr [t_ticks], 0
    jne t_irq0_eoi
    mov al, 0x0b                        # OCW3: next read of port 0x20 returns the ISR
    out 0x20, al
    in al, 0x20
    movzx eax, al
    mov dword ptr [t_isr_in], eax
t_irq0_eoi:
    mov al, 0x20                        # OCW2: non-specific EOI
    out 0x20, al
    cmp dword ptr [t_ticks], 0
    jne t_irq0_done
    in al, 0x20                         # still selecting the ISR
    movzx eax, al
    mov dword ptr [t_isr_after], eax
    mov al, 0x0a                        # OCW3: back to reading the IRR
    out 0x20, al
t_irq0_done:
    inc dword ptr [t_ticks]
    pop eax
    iretd

t_spurious:
    iretd

t_ticks:     .long 0
t_wakeups:   .long 0
t_isr_in:    .long 0xffffffff
t_isr_after: .long 0xffffffff
t_name:      .asciz "timer\n"
t_ticks_msg: .asciz "ticks: "
t_wake_msg:  .asciz "hlt wakeups: "
t_imr_msg:   .asciz "PIC master IMR: "
t_isr_msg:   .asciz "PIC ISR in first IRQ0 handler: "
t_isr2_msg:  .asciz "PIC ISR after EOI: "

.include "runtime.S"
