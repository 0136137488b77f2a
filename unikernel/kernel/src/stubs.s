/*
 * Interrupt entry points. All gates use an IST stack (interrupts.rs), so the CPU never pushes
 * its frame into the interrupted code's red zone (the linux-gnu target uses one).
 *
 * Exceptions: push a dummy error code where the CPU pushes none, then the vector, and call
 * kernel_exception(frame) in Rust, which reports and exits (it never returns).
 * Device and timer interrupts are handled here, without Rust code, so that no SSE or other
 * register state has to be saved: they acknowledge, set IRQ_PENDING and return.
 */
.section .text

.macro EXC n
exc_\n:
    .if (\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
    .else
    push $0
    .endif
    push $\n
    jmp exc_common
.endm

.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
EXC \n
.endr

exc_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call kernel_exception
5:  cli
    hlt
    jmp 5b

/* virtio-mmio: InterruptACK = InterruptStatus at the device, then LAPIC EOI */
.global irq_virtio
irq_virtio:
    push %rax
    push %rdx
    mov VIRTIO_IRQ_BASE(%rip), %rax
    test %rax, %rax
    jz 1f
    movl 0x60(%rax), %edx           /* InterruptStatus */
    movl %edx, 0x64(%rax)           /* InterruptACK */
1:  movl $1, IRQ_PENDING(%rip)
    movabs $0xfee000b0, %rax        /* LAPIC EOI */
    movl $0, (%rax)
    pop %rdx
    pop %rax
    iretq

.global irq_timer
irq_timer:
    push %rax
    movl $1, IRQ_PENDING(%rip)
    movabs $0xfee000b0, %rax
    movl $0, (%rax)
    pop %rax
    iretq

/* The LAPIC's spurious vector: no EOI. */
.global irq_spurious
irq_spurious:
    iretq

.section .rodata
.align 8
.global EXCEPTION_STUBS
EXCEPTION_STUBS:
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_\n
.endr
