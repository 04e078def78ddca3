/* A kernel written for GNU as, as a user would: Intel syntax, a global _start, sections,
 * numeric local labels, a recursive macro guarded by .if, .irp, and `offset` where an
 * address is meant. It prints over COM1 and exits through isa-debug-exit. */
.intel_syntax noprefix
.globl _start
.type _start, @function

.equ COM1, 0x3f8

.section .multiboot, "a"
.align 4
mb_header:
    .long 0x1badb002
    .long 0x00010003
    .long -(0x1badb002 + 0x00010003)
    .long mb_header
    .long mb_header                 # load_addr: the image starts with this header
    .long _edata
    .long _end
    .long _start

.macro sum_to n                     # eax += n + (n-1) + ... + 1
.if \n
    add eax, \n
    sum_to "(\n-1)"
.endif
.endm

.text
.code32
_start:
    mov esp, offset stack_top
    mov esi, offset message         # the address: offset
    call puts
    xor eax, eax
    sum_to 4                        # 10
    .irp r, ebx, ecx
    mov \r, eax
    .endr
    add eax, ebx
    add eax, ecx                    # 30
    cmp eax, [expected]             # a load: GNU as reads a bare label as memory
    jne 1f
    mov eax, expected_value         # also a load
    cmp eax, 30
    jne 1f
    mov esi, offset pass
    call puts
    xor eax, eax
    out 0xf4, eax
1:  mov esi, offset fail
    call puts
    mov eax, 1
    out 0xf4, eax
2:  hlt
    jmp 2b
.size _start, . - _start

.type puts, @function
puts:
1:  mov al, [esi]
    test al, al
    jz 2f
    mov dx, COM1
    out dx, al
    inc esi
    jmp 1b
2:  ret
.size puts, . - puts

.section .rodata
message: .asciz "hello from GNU as\n"
pass: .asciz "pass\n"
fail: .asciz "fail\n"

.data
.align 4
expected: .long 30
expected_value: .long 30
_edata:

.bss
.align 16
    .space 4096
stack_top:
_end:
