# pit.S - the 8254 counts from the moment it is programmed, and a latched read shows it counting.
#
# (a) The kernel reprograms channel 0 to about 1 kHz (mode 2, divisor 1193 = 0x4a9) with IRQ0
#     unmasked on a remapped PIC but IF=0, and waits with IF still clear until the tick is
#     pending: it polls the master's IRR, with a delay loop of ~2000 instructions between polls,
#     for at most 0x4e20 polls (tens of milliseconds on QEMU, 40 ms of hvsim's 1-instruction-per-
#     nanosecond time), far more than the 1 ms the new divisor needs. The BIOS had left channel 0
#     at 18.2 Hz (55 ms); a PIT that kept that old deadline would leave the IRR empty here. Then
#     `sti; nop; nop; ...; cli`: the pending tick is taken at once, right after sti's shadow (the
#     first nop), so the frame's EIP is the second nop.
# (b) "Poll until it changes", as Linux calibrates its delay loop: latch channel 0 (out 0x43, 0),
#     read low and high byte, and repeat, up to 0xc350 times, until the value differs from the
#     first. At 1.193 MHz the count moves every 838 ns, so it must change; every value latched
#     must also lie in mode 2's range 1..0x4a9.
# Only facts that do not depend on the host's speed are printed: QEMU runs its PIT on wall time.

PIT_DIVISOR = 0x4a9                     # 1193182 Hz / 1193 = ~1000 Hz
WAIT_POLLS = 0x4e20                     # 20000 IRR polls at most
WAIT_DELAY = 0x3e8                      # 1000 x (dec, jnz) between polls
LATCH_POLLS = 0xc350                    # 50000 latched reads at most

main:
    mov esi, p_name
    call puts
    mov al, 0xfe                        # master mask: only IRQ0
    call pic_remap
    mov eax, 0x20
    mov ebx, p_irq0
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x27
    mov ebx, p_spurious
    call idt_set_gate
    call idt_load

# ---- (a) reprogram, wait with IF=0, sti ------------------------------------------------------
    mov al, 0x34                        # channel 0, lobyte/hibyte, mode 2, binary
    out 0x43, al
    mov al, PIT_DIVISOR & 0xff
    out 0x40, al
    mov al, PIT_DIVISOR >> 8
    out 0x40, al
    mov al, 0x0a                        # OCW3: port 0x20 reads the IRR
    out 0x20, al
    mov ebx, WAIT_POLLS
p_wait:
    in al, 0x20
    test al, 0x01
    jnz p_pending
    mov ecx, WAIT_DELAY
p_delay:
    dec ecx
    jnz p_delay
    dec ebx
    jnz p_wait
    jmp p_window
p_pending:
    mov dword ptr [p_seen_irr], 1
p_window:
    sti
    nop                                 # sti's shadow
p_second:
    nop                                 # the tick is taken before this one
    nop
    nop
    cli
    mov al, 0xff                        # no more ticks (if none came, none will)
    out 0x21, al

    mov esi, p_irr_msg
    mov eax, dword ptr [p_seen_irr]
    call p_yes_no
    mov esi, p_count_msg
    mov eax, dword ptr [p_ticks]
    call put_kv_dec
    mov esi, p_eip_msg
    mov eax, dword ptr [p_eip]
    sub eax, p_second
    call put_kv_hex

# ---- (b) latch, read, until the count changes ------------------------------------------------
    call p_latch_read
    mov edx, eax                        # the first value
    mov ebx, LATCH_POLLS
p_poll:
    call p_latch_read
    cmp eax, edx
    jne p_changed
    dec ebx
    jnz p_poll
    jmp p_poll_done
p_changed:
    mov dword ptr [p_changed_flag], 1
p_poll_done:
    mov esi, p_changed_msg
    mov eax, dword ptr [p_changed_flag]
    call p_yes_no
    mov esi, p_range_msg
    mov eax, dword ptr [p_out_of_range]
    xor eax, 1
    call p_yes_no
    mov al, 0
    ret

# Latch channel 0 and read its count: EAX = count (low byte first, then high).
# Records in p_out_of_range any value outside 1..PIT_DIVISOR.
p_latch_read:
    mov al, 0x00                        # counter latch command, channel 0
    out 0x43, al
    in al, 0x40
    mov ah, al
    in al, 0x40
    xchg al, ah
    movzx eax, ax
    cmp eax, 1
    jb p_bad_value
    cmp eax, PIT_DIVISOR
    ja p_bad_value
    ret
p_bad_value:
    mov dword ptr [p_out_of_range], 1
    ret

# ESI = label, EAX = 0 or 1: prints label, "no" or "yes", newline.
p_yes_no:
    call puts
    mov esi, p_no
    test eax, eax
    jz p_yes_no_print
    mov esi, p_yes
p_yes_no_print:
    call puts
    jmp putnl

# The first tick masks IRQ0: on QEMU a host that deschedules the guest for a millisecond
# could otherwise slip a second tick into the window.
p_irq0:
    push eax
    mov eax, dword ptr [esp + 4]        # frame EIP
    mov dword ptr [p_eip], eax
    inc dword ptr [p_ticks]
    mov al, 0xff                        # OCW1: mask IRQ0
    out 0x21, al
    mov al, 0x20                        # non-specific EOI
    out 0x20, al
    pop eax
    iretd

p_spurious:
    iretd

p_seen_irr:     .long 0
p_ticks:        .long 0
p_eip:          .long 0xffffffff
p_changed_flag: .long 0
p_out_of_range: .long 0
p_name:         .asciz "pit\n"
p_yes:          .asciz "yes"
p_no:           .asciz "no"
p_irr_msg:      .asciz "1 kHz tick pending in the IRR while IF=0: "
p_count_msg:    .asciz "sti; nop; nop: IRQ0 handler runs: "
p_eip_msg:      .asciz "sti; nop; nop: frame EIP - the second nop: "
p_changed_msg:  .asciz "latched count changed between reads: "
p_range_msg:    .asciz "every latched count within 1..0x4a9: "

.include "runtime.S"
