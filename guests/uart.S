# uart.S - the 16550's registers, one by one, as a driver would probe them.
#
# The console is a 16550 UART at 0x3f8, and the device model is judged by this guest: every
# register read here must return what QEMU's 16550 returns. The guest writes and reads back the
# scratch register, the divisor latch (LCR.DLAB=1), IER and MCR; reads LSR once the transmitter is
# idle (THR empty + transmitter empty: 0x60); reads IIR with nothing pending, FIFOs on (0xc1) and
# off (0x01); and, in loopback mode (MCR bit 4), sends a byte to itself and reads it back from
# RBR with LSR.DR set, and reads MSR, whose bits then mirror MCR. The host side of the serial line
# (MSR outside loopback) is deliberately not printed: it depends on how QEMU's stdio is connected.

main:
    mov esi, u_name
    call puts

    mov dx, COM1 + 7
    mov al, 0x5a
    out dx, al
    in al, dx
    mov esi, u_scr1
    call put_al
    mov al, 0xa5
    out dx, al
    in al, dx
    mov esi, u_scr2
    call put_al

    # While DLAB=1, port 0x3f8 is the divisor latch, not THR: nothing can be printed, so the
    # read-backs are kept in BL, BH, CL and printed afterwards.
    mov dx, COM1 + 3
    mov al, 0x83                        # DLAB=1, 8N1
    out dx, al
    in al, dx
    mov bl, al
    mov dx, COM1
    mov al, 0x0c                        # 9600 baud
    out dx, al
    mov dx, COM1 + 1
    mov al, 0x00
    out dx, al
    mov dx, COM1
    in al, dx
    mov bh, al
    mov dx, COM1 + 1
    in al, dx
    mov cl, al
    mov dx, COM1
    mov al, 0x01                        # back to 115200 before DLAB goes away
    out dx, al
    mov dx, COM1 + 3
    mov al, 0x03
    out dx, al
    mov al, bl
    mov esi, u_lcr_dlab
    call put_al
    mov al, bh
    mov esi, u_dll
    call put_al
    mov al, cl
    mov esi, u_dlm
    call put_al
    mov dx, COM1 + 3
    in al, dx
    mov esi, u_lcr
    call put_al

    mov dx, COM1 + 1
    mov al, 0x05                        # IER: received data + line status (no THRE interrupt)
    out dx, al
    in al, dx
    mov esi, u_ier
    call put_al
    mov al, 0x00
    out dx, al

    mov dx, COM1 + 4
    mov al, 0x0f                        # MCR: DTR, RTS, OUT1, OUT2
    out dx, al
    in al, dx
    mov esi, u_mcr
    call put_al
    mov al, 0x03
    out dx, al

    call u_wait_idle
    mov dx, COM1 + 5
    in al, dx
    mov esi, u_lsr
    call put_al

    mov dx, COM1 + 2
    in al, dx
    mov esi, u_iir_fifo
    call put_al
    mov al, 0x00                        # FCR: FIFOs off
    out dx, al
    in al, dx
    mov esi, u_iir
    call put_al
    mov al, 0xc7                        # FCR: FIFOs back on, cleared
    out dx, al

    call u_wait_idle
    mov dx, COM1 + 4
    mov al, 0x13                        # MCR: loopback + DTR + RTS
    out dx, al
    mov dx, COM1
    mov al, 0x42
    out dx, al                          # goes to our own receiver, not the console
    mov dx, COM1 + 5
u_wait_rx:
    in al, dx
    test al, 0x01
    jz u_wait_rx
    call u_wait_idle
    mov dx, COM1 + 5
    in al, dx
    mov bl, al
    mov dx, COM1
    in al, dx
    mov cl, al
    mov dx, COM1 + 6
    in al, dx                           # first read clears the delta bits
    in al, dx
    mov bh, al
    mov dx, COM1 + 5
    in al, dx
    mov ch, al
    mov dx, COM1 + 4
    mov al, 0x03                        # loopback off before printing again
    out dx, al
    mov al, bl
    mov esi, u_lb_lsr
    call put_al
    mov al, cl
    mov esi, u_lb_rbr
    call put_al
    mov al, ch
    mov esi, u_lb_lsr2
    call put_al
    mov al, bh
    mov esi, u_lb_msr
    call put_al

    mov al, 0
    ret

# ESI = label, AL = register value.
put_al:
    push eax
    movzx eax, al
    call put_kv_hex
    pop eax
    ret

# Wait until the transmitter is completely idle (LSR bit 6), so LSR reads are repeatable.
u_wait_idle:
    push eax
    push edx
    mov dx, COM1 + 5
u_idle_loop:
    in al, dx
    test al, 0x40
    jz u_idle_loop
    pop edx
    pop eax
    ret

u_name:     .asciz "uart\n"
u_scr1:     .asciz "scratch write 0x5a, read: "
u_scr2:     .asciz "scratch write 0xa5, read: "
u_lcr_dlab: .asciz "LCR write 0x83 (DLAB), read: "
u_dll:      .asciz "DLL write 0x0c, read: "
u_dlm:      .asciz "DLM write 0x00, read: "
u_lcr:      .asciz "LCR write 0x03, read: "
u_ier:      .asciz "IER write 0x05, read: "
u_mcr:      .asciz "MCR write 0x0f, read: "
u_lsr:      .asciz "LSR idle: "
u_iir_fifo: .asciz "IIR, FIFOs on, nothing pending: "
u_iir:      .asciz "IIR, FIFOs off, nothing pending: "
u_lb_lsr:   .asciz "loopback LSR with byte received: "
u_lb_rbr:   .asciz "loopback RBR: "
u_lb_lsr2:  .asciz "loopback LSR after reading RBR: "
u_lb_msr:   .asciz "loopback MSR with MCR 0x13: "

.include "runtime.S"
