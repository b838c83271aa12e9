# hello.S - the smallest guest: proves the boot path and the console.
#
# If this prints, the image was loaded at 1 MiB, entered at _start in protected mode, and the
# COM1 transmit path works; the exit code proves the isa-debug-exit port does.

main:
    mov esi, hello_name
    call puts
    mov esi, hello_msg
    call puts
    mov eax, dword ptr [boot_magic]
    mov esi, hello_magic
    call put_kv_hex
    mov al, 0
    ret

hello_name:  .asciz "hello\n"
hello_msg:   .asciz "Hello from hvsim guest\n"
hello_magic: .asciz "boot magic: "

.include "runtime.S"
