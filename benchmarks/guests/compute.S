# compute.S - benchmark: pure computation, no exits at all.
#
# A sieve of Eratosthenes over 2,000,000 bytes of RAM (at 4 MiB, outside the image), REPEAT times.
# It never touches a device or a privileged instruction until it prints, so it measures the cost
# of simply running guest code under a technique (translation, block chaining, memory access);
# ~2.6 s under raw Unicorn, ~0.25 s under QEMU TCG with REPEAT = 10. The answer is 148933.

REPEAT = 10
SIEVE_N = 2000000
SIEVE = 0x400000

main:
    mov esi, c_name
    call puts
    .include "include/sieve.S"

c_name:    .asciz "compute\n"
c_result:  .asciz "primes below 2000000: "
c_repeats: .asciz "repeats: "

.include "../../guests/runtime.S"
