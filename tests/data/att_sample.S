# AT&T syntax sample: GNU as must assemble it to the same bytes as svmemu (tests/test_gas_dialect.py).
.att_syntax
.equ K, 0x42
start:
    movl $1, %eax
    movq %rax, 8(%rsp)
    movl (%rax,%rbx,4), %ecx
    movb $5, data
    movl data, %eax
    movl $data, %eax
    movq $data, %rax
    jmp *%rax
    call *8(%rax)
    jmp start
    call start
    movzbl (%rax), %ecx
    movzwl %ax, %ecx
    movsbq %al, %rdx
    movslq %eax, %rbx
    cltq
    cqto
    rep movsb
    rep stosl
    lock incl (%rax)
    shll %eax
    shrq $3, %rdx
    sarl %cl, %eax
    imull $10, %ecx, %eax
    outb %al, %dx
    inb $0x60, %al
    outl %eax, $0xf4
    movl %fs:0x28, %eax
    lgdt gdtp
    lidt gdtp(%rip)
    pushq $0
    pushq $K
    pushq data
    popq %rbx
    movw %ax, %ds
    leaq data(%rip), %rax
    vmrun %rax
    vmmcall
    vmload %rax
    stgi
    clgi
    invlpga %rax, %ecx
    addl $-4, -8(%rbp)
    movl $0, (,%rbx,8)
    movq %rax, %cr0
    movq %cr3, %rax
    testb $1, 4(%rax)
    int $0x80
    sete %al
    cmovzl %eax, %ecx
    cmovlq %rax, %rcx
    pushfq
    popfq
    iretq
    movabsq $0x123456789, %rax
    xchgq %rax, %rbx
    btl $5, %eax
    wrmsr
    rdmsr
    incq data(,%rbx,8)
    cmpb $0x20, (%rsi)
    subq $K+1, %rsp
    andl $0xfffffff0, %esp
    xorl %eax, %eax
    movq data+8(%rip), %rax
    1: jnz 1b
    jmp 1f
    1: ret
.code32
    movl $data, %edi
    ljmp $0x08, $start
    movl data, %eax
    lgdt gdtp
    pushl $5
    popl %eax
    lret
.code64
.data
gdtp: .word 0
      .quad 0
data: .quad 0, 0
