# mptable.S - the MultiProcessor Specification tables, found the way xv6's mpinit finds them.
#
# The BIOS data area says where the EBDA is (segment at 0x40e) and how much base memory
# there is (KiB at 0x413). The kernel searches the first KiB of the EBDA for the floating
# pointer "_MP_" (16 bytes that sum to 0), then, as xv6 and Linux do, 0xF0000-0xFFFFF. It
# prints where the pointer is, then the configuration table ("PCMP") it points to: header,
# checksum, and every entry decoded (processor, buses, I/O APIC, I/O interrupt assignments,
# local interrupt assignments). The addresses printed are QEMU's (SeaBIOS's F-segment).

main:
    mov esi, m_name
    call puts
    movzx eax, word ptr [0x40e]
    mov esi, m_ebda_seg
    call put_kv_hex
    movzx eax, word ptr [0x413]
    mov esi, m_base_mem
    call put_kv_dec
    movzx ebx, word ptr [0x40e]
    shl ebx, 4
    movzx eax, byte ptr [ebx]
    mov esi, m_ebda_size
    call put_kv_dec
    mov esi, ebx
    mov ecx, 1024
    call find_mp
    mov esi, m_in_ebda
    call put_yes_no
    test eax, eax
    jnz m_found
    mov esi, 0xf0000
    mov ecx, 0x10000
    call find_mp
m_found:
    mov esi, m_mp_at
    call put_kv_hex
    test eax, eax
    jz m_fail
    mov ebx, eax
    mov eax, dword ptr [ebx + 4]
    mov esi, m_config
    call put_kv_hex
    movzx eax, byte ptr [ebx + 8]
    mov esi, m_mp_length
    call put_kv_dec
    movzx eax, byte ptr [ebx + 9]
    mov esi, m_spec
    call put_kv_dec
    mov eax, dword ptr [ebx + 11]
    mov esi, m_features
    call put_kv_hex
    movzx eax, byte ptr [ebx + 15]
    mov esi, m_feature5
    call put_kv_hex
    mov ebx, dword ptr [ebx + 4]
    call show_config
    mov al, 0
    ret
m_fail:
    mov al, 1
    ret

# find_mp: the first 16-byte-aligned "_MP_" in ECX bytes at ESI whose 16 bytes sum to 0,
# in EAX (0 if none).
find_mp:
    push esi
    push ecx
    push edx
    mov edx, esi
    add edx, ecx
fm_loop:
    cmp esi, edx
    jae fm_none
    cmp dword ptr [esi], 0x5f504d5f     # "_MP_"
    jne fm_next
    mov ecx, 16
    call sum_bytes
    test al, al
    jz fm_found
fm_next:
    add esi, 16
    jmp fm_loop
fm_none:
    xor esi, esi
fm_found:
    mov eax, esi
    pop edx
    pop ecx
    pop esi
    ret

# put_field: ESI = label, EAX = value printed in decimal, no newline.
put_field:
    call puts
    jmp putdec

# show_config: the configuration table at EBX.
show_config:
    cmp dword ptr [ebx], 0x504d4350     # "PCMP"
    jne sc_out
    movzx eax, word ptr [ebx + 4]
    mov esi, m_pcmp_length
    call put_field
    movzx eax, byte ptr [ebx + 6]
    mov esi, m_spec_sp
    call put_field
    mov esi, ebx
    movzx ecx, word ptr [ebx + 4]
    call sum_bytes
    test al, al
    mov esi, m_sum_ok
    jz sc_sum
    mov esi, m_sum_bad
sc_sum:
    call puts
    mov esi, m_oem
    call puts
    lea esi, [ebx + 8]
    mov ecx, 8
    call put_chars
    mov esi, m_product
    call puts
    lea esi, [ebx + 16]
    mov ecx, 12
    call put_chars
    mov al, 124                         # '|': the product ID ends in spaces
    call putc
    call putnl
    movzx eax, word ptr [ebx + 34]
    mov esi, m_entries
    call put_kv_dec
    mov eax, dword ptr [ebx + 36]
    mov esi, m_lapic
    call put_kv_hex
    movzx eax, word ptr [ebx + 40]
    mov esi, m_ext
    call put_kv_dec
    movzx edx, word ptr [ebx + 34]      # entries left
    lea edi, [ebx + 44]
sc_loop:
    test edx, edx
    jz sc_out
    movzx eax, byte ptr [edi]
    cmp al, 0
    je sc_cpu
    cmp al, 1
    je sc_bus
    cmp al, 2
    je sc_ioapic
    cmp al, 3
    je sc_int
    cmp al, 4
    je sc_int
    mov esi, m_unknown
    call put_kv_dec
    jmp sc_out                          # the entry's length is unknown: stop
sc_cpu:
    mov esi, m_cpu
    movzx eax, byte ptr [edi + 1]
    call put_field
    mov esi, m_version
    call puts
    movzx eax, byte ptr [edi + 2]
    call puthex32
    mov esi, m_flags
    call puts
    movzx eax, byte ptr [edi + 3]
    call puthex32
    mov esi, m_signature
    call puts
    mov eax, dword ptr [edi + 4]
    call puthex32
    mov esi, m_cpu_features
    mov eax, dword ptr [edi + 8]
    call put_kv_hex
    add edi, 20
    jmp sc_next
sc_bus:
    mov esi, m_bus
    movzx eax, byte ptr [edi + 1]
    call put_field
    mov al, 32
    call putc
    lea esi, [edi + 2]
    mov ecx, 6
    call put_chars
    mov al, 124
    call putc
    call putnl
    add edi, 8
    jmp sc_next
sc_ioapic:
    mov esi, m_ioapic
    movzx eax, byte ptr [edi + 1]
    call put_field
    mov esi, m_version
    call puts
    movzx eax, byte ptr [edi + 2]
    call puthex32
    mov esi, m_flags
    call puts
    movzx eax, byte ptr [edi + 3]
    call puthex32
    mov esi, m_address
    mov eax, dword ptr [edi + 4]
    call put_kv_hex
    add edi, 8
    jmp sc_next
sc_int:
    mov esi, m_intsrc
    cmp byte ptr [edi], 3
    je sc_int_kind
    mov esi, m_lintsrc
sc_int_kind:
    movzx eax, byte ptr [edi + 1]
    call put_field
    mov esi, m_flags
    call puts
    movzx eax, word ptr [edi + 2]
    call puthex32
    mov esi, m_src_bus
    movzx eax, byte ptr [edi + 4]
    call put_field
    mov esi, m_src_irq
    movzx eax, byte ptr [edi + 5]
    call put_field
    mov esi, m_dst_apic
    movzx eax, byte ptr [edi + 6]
    call put_field
    mov esi, m_dst_pin
    movzx eax, byte ptr [edi + 7]
    call put_kv_dec
    add edi, 8
sc_next:
    dec edx
    jmp sc_loop
sc_out:
    ret

m_name:         .asciz "mptable\n"
m_ebda_seg:     .asciz "BDA EBDA segment: "
m_base_mem:     .asciz "BDA base memory KiB: "
m_ebda_size:    .asciz "EBDA size KiB: "
m_in_ebda:      .asciz "floating pointer in the EBDA: "
m_mp_at:        .asciz "floating pointer at: "
m_config:       .asciz "configuration table at: "
m_mp_length:    .asciz "floating pointer length (16-byte units): "
m_spec:         .asciz "specification revision: "
m_features:     .asciz "feature bytes 1-4: "
m_feature5:     .asciz "feature byte 5: "
m_pcmp_length:  .asciz "PCMP length "
m_spec_sp:      .asciz " revision "
m_sum_ok:       .asciz " checksum ok\n"
m_sum_bad:      .asciz " checksum BAD\n"
m_oem:          .asciz "PCMP OEM "
m_product:      .asciz " product "
m_entries:      .asciz "PCMP entries: "
m_lapic:        .asciz "PCMP local APIC: "
m_ext:          .asciz "PCMP extended table length: "
m_unknown:      .asciz "entry of unknown type "
m_cpu:          .asciz "processor APIC "
m_version:      .asciz " version "
m_flags:        .asciz " flags "
m_signature:    .asciz " signature "
m_cpu_features: .asciz " features "
m_bus:          .asciz "bus "
m_ioapic:       .asciz "I/O APIC "
m_address:      .asciz " address "
m_intsrc:       .asciz "I/O interrupt type "
m_lintsrc:      .asciz "local interrupt type "
m_src_bus:      .asciz " bus "
m_src_irq:      .asciz " irq "
m_dst_apic:     .asciz " -> APIC "
m_dst_pin:      .asciz " pin "

.include "include/tables.S"
.include "runtime.S"
