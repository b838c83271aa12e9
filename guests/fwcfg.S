# fwcfg.S - QEMU's firmware configuration device, item by item, port by port.
#
# The traditional interface: a 16-bit write of a key to 0x510 selects an item, byte reads
# of 0x511 return it. The kernel reads the signature ("QEMU", then zeros past its end, and
# it stops with exit code 1 if the device is not there, as a kernel would),
# FW_CFG_ID (3: traditional interface and DMA), NB_CPUS as kvm-unit-tests do (outw, two
# inb), MAX_CPUS, RAM_SIZE (8 bytes), the arch key IRQ0_OVERRIDE (0x8002), NB_CPUS again
# through the write-channel alias 0x4005, and a key past the file slots (0x40: nothing).
# Then the ports' corner cases: a byte read of 0x510 is a data read, inw 0x510 is refused
# (reads 0) without consuming data, a byte written to 0x511 and a misaligned outw 0x511
# select nothing. The file directory (key 0x19) is searched by name, as a kernel does: for
# "etc/e820" and "etc/boot-fail-wait" it prints the selector key, the size and the contents,
# a name QEMU does not list is not found. (QEMU lists more files than hvsim keeps, so neither
# the count nor the list is printed.)
# Then DMA at 0x514: the "QEMU CFG" signature read back in dwords and bytes (a misaligned
# inw 0x515 reads 0), and transfers through a descriptor (big-endian control, length,
# address): select NB_CPUS and read 2 bytes, read 8 bytes of the 4-byte signature (the rest
# is zero-filled), skip 2 bytes of it and read 2, a write (refused with the error bit, yet
# the item's offset moves past the bytes it would have written, so the data port then reads
# 0), a select with no operation (nothing moves, the data port then reads that item from its
# start). The control word the device stores back is printed after each. e820 addresses and
# lengths are 64-bit: printed high half, then low half.

FW_CTL = 0x510
FW_DATA = 0x511
FW_DMA_HI = 0x514
FW_DMA_LO = 0x518
# DMA control bits: 0x01 error, 0x02 read, 0x04 skip, 0x08 select (key in bits 31-16),
# 0x10 write. keystone cannot OR symbols together, so the control words below are literals.

main:
    mov esi, f_name
    call puts

# ---- items -------------------------------------------------------------------------------
    mov ax, 0x00
    call fw_select
    mov esi, f_signature
    call puts
    call fw_dword
    mov dword ptr [f_sig], eax
    mov esi, f_sig
    call puts
    call putnl
    cmp eax, 0x554d4551                 # "QEMU": a kernel checks before trusting the device
    jne f_absent
    call fw_dword
    mov esi, f_past_end
    call put_kv_hex

    mov ax, 0x01
    call fw_select
    call fw_dword
    mov esi, f_id
    call put_kv_hex

    mov ax, 0x05                        # kvm-unit-tests' fwcfg_get_nb_cpus
    mov dx, FW_CTL
    out dx, ax
    mov dx, FW_DATA
    in al, dx
    mov bl, al
    in al, dx
    mov bh, al
    movzx eax, bx
    mov esi, f_nb_cpus
    call put_kv_dec

    mov ax, 0x0f
    call fw_select
    call fw_dword
    mov esi, f_max_cpus
    call put_kv_hex

    mov ax, 0x03
    call fw_select
    call fw_dword
    mov esi, f_ram_lo
    call put_kv_hex
    call fw_dword
    mov esi, f_ram_hi
    call put_kv_hex

    mov ax, 0x8002
    call fw_select
    call fw_dword
    mov esi, f_irq0
    call put_kv_hex

    mov ax, 0x4005
    call fw_select
    call fw_dword
    mov esi, f_alias
    call put_kv_hex

    mov ax, 0x40
    call fw_select
    call fw_dword
    mov esi, f_beyond
    call put_kv_hex

# ---- the ports' corner cases ---------------------------------------------------------------
    mov ax, 0x00
    call fw_select
    mov dx, FW_CTL
    in al, dx
    movzx eax, al
    mov esi, f_inb_ctl
    call put_kv_hex
    in ax, dx
    movzx eax, ax
    mov esi, f_inw_ctl
    call put_kv_hex
    call fw_byte
    movzx eax, al
    mov esi, f_then
    call put_kv_hex
    mov dx, FW_DATA
    mov al, 0x01
    out dx, al
    mov ax, 0x01
    out dx, ax                          # outw 0x511: misaligned, ignored
    call fw_byte
    movzx eax, al
    mov esi, f_after_writes
    call put_kv_hex

# ---- files ----------------------------------------------------------------------------------
    mov esi, f_e820_name
    call fw_find
    call show_file
    test eax, eax
    jz f_no_e820
    mov ecx, edx
f_e820_loop:
    cmp ecx, 20
    jb f_no_e820
    mov esi, f_e820_addr
    call puts
    call fw_dword
    mov ebx, eax
    call fw_dword
    call puthex32
    mov al, 32
    call putc
    mov eax, ebx
    call puthex32
    mov esi, f_e820_len
    call puts
    call fw_dword
    mov ebx, eax
    call fw_dword
    call puthex32
    mov al, 32
    call putc
    mov eax, ebx
    call puthex32
    mov esi, f_e820_type
    call fw_dword
    call put_kv_dec
    sub ecx, 20
    jmp f_e820_loop
f_no_e820:
    mov esi, f_bfw_name
    call fw_find
    call show_file
    test eax, eax
    jz f_no_bfw
    call fw_dword
    mov esi, f_contents
    call put_kv_hex
f_no_bfw:
    mov esi, f_bogus_name
    call fw_find
    call show_file

# ---- DMA --------------------------------------------------------------------------------------
    mov dx, FW_DMA_HI
    in eax, dx
    mov esi, f_dma_sig_lo
    call put_kv_hex
    mov dx, FW_DMA_LO
    in eax, dx
    mov esi, f_dma_sig_hi
    call put_kv_hex
    mov dx, 0x51b
    in al, dx
    movzx eax, al
    mov esi, f_dma_sig_7
    call put_kv_hex
    mov dx, 0x515
    in ax, dx
    movzx eax, ax
    mov esi, f_dma_sig_mis
    call put_kv_hex

    mov eax, 0x0005000a               # select key 5, read
    mov ecx, 2
    call dma
    mov esi, f_dma_cpus
    call show_dma

    mov eax, 0x0000000a               # select key 0, read
    mov ecx, 8
    call dma
    mov esi, f_dma_sig8
    call show_dma

    mov eax, 0x0000000c               # select key 0, skip
    mov ecx, 2
    call dma
    mov esi, f_dma_skip
    call show_dma
    mov eax, 0x00000002               # read
    mov ecx, 2
    call dma
    mov esi, f_dma_after_skip
    call show_dma

    mov eax, 0x00010018               # select key 1, write
    mov ecx, 4
    call dma
    mov esi, f_dma_write
    call show_dma
    call fw_dword
    mov esi, f_after_write
    call put_kv_hex

    mov eax, 0x00050008               # select key 5, nothing else
    mov ecx, 4
    call dma
    mov esi, f_dma_noop
    call show_dma
    call fw_byte
    movzx eax, al
    mov esi, f_after_noop
    call put_kv_hex

    mov al, 0
    ret
f_absent:
    mov al, 1
    ret

# ---- helpers -------------------------------------------------------------------------------
# fw_select: AX = key.
fw_select:
    push edx
    mov dx, FW_CTL
    out dx, ax
    pop edx
    ret

# fw_byte: AL = the next data byte.
fw_byte:
    push edx
    mov dx, FW_DATA
    in al, dx
    pop edx
    ret

# fw_dword: EAX = the next four data bytes, little-endian.
fw_dword:
    push ecx
    mov ecx, 4
fd_loop:
    call fw_byte
    ror eax, 8
    dec ecx
    jnz fd_loop
    pop ecx
    ret

# fw_find: ESI = file name -> EAX = its selector key and EDX = its size (both 0 if absent).
# The directory: a big-endian count, then 64-byte records (size, key, reserved, name[56]).
fw_find:
    push ebx
    push ecx
    push edi
    mov dword ptr [f_find_name], esi
    mov ax, 0x19
    call fw_select
    call fw_dword
    bswap eax
    mov ebx, eax
    cmp ebx, 32                         # the directory has 32 slots
    jbe ff_record
    mov ebx, 32
ff_record:
    test ebx, ebx
    jz ff_none
    mov edi, f_record
    mov ecx, 64
ff_read:
    call fw_byte
    mov byte ptr [edi], al
    inc edi
    dec ecx
    jnz ff_read
    mov esi, dword ptr [f_find_name]
    mov edi, f_record + 8
ff_cmp:
    mov al, byte ptr [esi]
    cmp al, byte ptr [edi]
    jne ff_next
    inc esi
    inc edi
    test al, al
    jnz ff_cmp
    movzx eax, word ptr [f_record + 4]
    xchg al, ah
    mov edx, dword ptr [f_record]
    bswap edx
    jmp ff_out
ff_next:
    dec ebx
    jmp ff_record
ff_none:
    xor eax, eax
    xor edx, edx
ff_out:
    mov esi, dword ptr [f_find_name]
    pop edi
    pop ecx
    pop ebx
    ret

# show_file: ESI = name, EAX = key, EDX = size (from fw_find), selects the file if found.
show_file:
    push esi
    call puts
    test eax, eax
    jnz sf_found
    mov esi, f_not_found
    call puts
    pop esi
    ret
sf_found:
    mov esi, f_key
    call puts
    call puthex32
    mov esi, f_size
    call puts
    push eax
    mov eax, edx
    call putdec
    pop eax
    call putnl
    call fw_select
    pop esi
    ret

# dma: EAX = control (host order), ECX = length, runs one transfer into f_dma_buf (first
# filled with 0xff) through the descriptor f_desc, and returns.
dma:
    push eax
    push edx
    mov dword ptr [f_dma_buf], 0xffffffff
    mov dword ptr [f_dma_buf + 4], 0xffffffff
    bswap eax
    mov dword ptr [f_desc], eax
    bswap ecx
    mov dword ptr [f_desc + 4], ecx
    bswap ecx
    mov dword ptr [f_desc + 8], 0       # address high half (big-endian u64)
    mov eax, f_dma_buf
    bswap eax
    mov dword ptr [f_desc + 12], eax
    mov dx, FW_DMA_HI
    xor eax, eax
    out dx, eax
    mov dx, FW_DMA_LO
    mov eax, f_desc
    bswap eax
    out dx, eax
    pop edx
    pop eax
    ret

# show_dma: ESI = label, prints the control word stored back and the buffer's 8 bytes.
show_dma:
    call puts
    mov eax, dword ptr [f_desc]
    bswap eax
    call puthex32
    mov esi, f_buffer
    call puts
    mov eax, dword ptr [f_dma_buf]
    call puthex32
    mov al, 32
    call putc
    mov eax, dword ptr [f_dma_buf + 4]
    call puthex32
    jmp putnl

f_name:           .asciz "fwcfg\n"
f_signature:      .asciz "signature: "
f_past_end:       .asciz "signature, 4 bytes past its end: "
f_id:             .asciz "id: "
f_nb_cpus:        .asciz "nb_cpus: "
f_max_cpus:       .asciz "max_cpus: "
f_ram_lo:         .asciz "ram_size low: "
f_ram_hi:         .asciz "ram_size high: "
f_irq0:           .asciz "irq0_override (0x8002): "
f_alias:          .asciz "key 0x4005 (write channel bit) reads: "
f_beyond:         .asciz "key 0x40 (past the file slots) reads: "
f_inb_ctl:        .asciz "inb 0x510 after selecting the signature: "
f_inw_ctl:        .asciz "inw 0x510: "
f_then:           .asciz "next data byte: "
f_after_writes:   .asciz "after outb 0x511 and outw 0x511, next data byte: "
f_e820_name:      .asciz "etc/e820"
f_bfw_name:       .asciz "etc/boot-fail-wait"
f_bogus_name:     .asciz "etc/no-such-file"
f_not_found:      .asciz ": not found\n"
f_key:            .asciz ": key "
f_size:           .asciz " size "
f_e820_addr:      .asciz "  e820 address "
f_e820_len:       .asciz " length "
f_e820_type:      .asciz " type "
f_contents:       .asciz "  contents: "
f_dma_sig_lo:     .asciz "inl 0x514: "
f_dma_sig_hi:     .asciz "inl 0x518: "
f_dma_sig_7:      .asciz "inb 0x51b: "
f_dma_sig_mis:    .asciz "inw 0x515: "
f_dma_cpus:       .asciz "dma select nb_cpus, read 2: control "
f_dma_sig8:       .asciz "dma select signature, read 8: control "
f_dma_skip:       .asciz "dma select signature, skip 2: control "
f_dma_after_skip: .asciz "dma read 2: control "
f_dma_write:      .asciz "dma select id, write 4: control "
f_after_write:    .asciz "id read after the refused write: "
f_dma_noop:       .asciz "dma select nb_cpus, no operation: control "
f_after_noop:     .asciz "data port then reads: "
f_buffer:         .asciz " buffer "
.balign 16, 0
f_desc:           .long 0, 0, 0, 0
f_dma_buf:        .long 0, 0
f_find_name:      .long 0
f_sig:            .long 0, 0            # the signature read, NUL-terminated
f_record:         .fill 64, 1, 0

.include "runtime.S"
