/*
 * PVH entry. QEMU's -kernel loader finds the XEN_ELFNOTE_PHYS32_ENTRY note and enters
 * pvh_start32 in 32-bit protected mode, paging off, %ebx = hvm_start_info.
 *
 * The stub clears .bss, identity-maps the first 4 GiB with 2 MiB pages (RAM below 3 GiB on
 * microvm and the MMIO hole above it, which gets PCD|PWT), enables PAE, SSE (OSFXSR,
 * OSXMMEXCPT), long mode and paging, and calls rust_main(start_info) on the boot stack.
 * Memory above 4 GiB is mapped later by mem::init from the PVH memory map, which also unmaps
 * the guard page below the stack.
 */
.section .note.Xen, "a"
    .align 4
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

.section .boot32, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                  /* start_info, kept in esi/rsi */
    /* clear .bss: page tables and stacks live there */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $boot_stack_top, %esp
    /* PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3 */
    mov $boot_pdpt, %eax
    or $0x3, %eax                   /* present | writable */
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:  mov %eax, boot_pdpt(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jne 1b
    /* 2048 PD entries of 2 MiB each: ecx = index, phys = ecx << 21 */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                  /* present | writable | page size */
    cmp $1536, %ecx                 /* 3 GiB and up: MMIO, uncached */
    jb 3f
    or $0x18, %eax                  /* PWT | PCD */
3:  mov %eax, boot_pd(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax                   /* high dword: (ecx << 21) >> 32 */
    mov %eax, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    mov %cr4, %eax
    or $0x620, %eax                 /* PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax           /* clear EM */
    or $0x80000022, %eax            /* PG | NE | MP */
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $start64

.code64
start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $boot_stack_top, %rsp
    mov %rsi, %rdi                  /* rust_main(start_info) */
    call rust_main
4:  cli
    hlt
    jmp 4b

.section .rodata
.align 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

.section .bss
.align 4096
.global boot_pml4
boot_pml4: .skip 4096
.global boot_pdpt
boot_pdpt: .skip 4096
.global boot_pd
boot_pd:   .skip 4096*4
/* the page table mem::guard_stack uses to unmap the guard page below the stack */
.global boot_pt_guard
boot_pt_guard: .skip 4096
.global boot_stack_guard
boot_stack_guard: .skip 4096
.global boot_stack_bottom
boot_stack_bottom:
    .skip 1024*1024                 /* the kernel's (and the action's) stack: 1 MiB */
.global boot_stack_top
boot_stack_top:
