# empty.S - exits at once. qemu-system-i386 needs ~0.1 s of its own to start and stop a PC;
# benchmarks/run.py times this guest in every round and subtracts it from QEMU's benchmark
# times, so the qemu row shows the guest's work alone.

main:
    mov al, 0
    ret

.include "../guests/runtime.S"
