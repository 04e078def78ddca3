# bigmem.S: RAM above 4 GiB, as QEMU's pc machine lays it out.
# Checked: the multiboot memory map's usable RAM above 4 GiB is what the RAM size fw_cfg reports
# leaves there (none below 3.5 GiB of RAM; from 3.5 GiB on, all but the 3 GiB kept below 4 GiB).
# When there is RAM above 4 GiB: a distinct value written to its first qword, to a qword in its
# middle and to its last qword (through a 1 GiB window of 2 MiB pages at virtual 4 GiB) reads
# back after all three writes, so no two alias; then the addresses written are printed.
# With 128 MiB (the bundled-guest run) only the memory-map check runs.
.include "prelude.inc"

.equ WINDOW, 0x100000000                # virtual 4 GiB: PDPT[4] -> pd_window

main:
    # RAM size from fw_cfg (selector 0x03, 64 bits little-endian).
    mov dx, 0x510
    mov ax, 0x03
    out dx, ax
    mov dx, 0x511
    xor ebx, ebx
    xor ecx, ecx
.Lsize:
    in al, dx
    movzx eax, al
    shl rax, cl
    or rbx, rax
    add ecx, 8
    cmp ecx, 64
    jb .Lsize
    mov [rip + ram_size], rbx
    # Expected RAM above 4 GiB: none below 3.5 GiB of RAM, else all but 3 GiB.
    xor r12d, r12d
    mov rax, 0xe0000000
    cmp rbx, rax
    jb .Lexpect
    mov r12, rbx
    mov rax, 0xc0000000
    sub r12, rax
.Lexpect:
    # Usable RAM at or above 4 GiB in the memory map: its sum, its first base and its end.
    mov rbx, [rip + mb_info]
    mov ecx, dword ptr [rbx + 44]
    mov ebx, dword ptr [rbx + 48]
    add rcx, rbx
    xor r13d, r13d                          # sum
    xor r14d, r14d                          # lowest base
    xor r15d, r15d                          # highest end
.Lmmap:
    cmp rbx, rcx
    jae .Lmmap_done
    cmp dword ptr [rbx + 20], 1
    jne .Lmmap_next
    mov rax, [rbx + 4]
    mov rdx, WINDOW
    cmp rax, rdx
    jb .Lmmap_next
    add r13, [rbx + 12]
    test r14, r14
    jnz .Lmmap_base_set
    mov r14, rax
.Lmmap_base_set:
    add rax, [rbx + 12]
    cmp rax, r15
    jbe .Lmmap_next
    mov r15, rax
.Lmmap_next:
    mov edx, dword ptr [rbx]
    lea rbx, [rbx + rdx + 4]
    jmp .Lmmap
.Lmmap_done:
    check_eq r13, r12, "mmap: usable RAM above 4 GiB is what the RAM size leaves there"
    test r13, r13
    jnz .Lhigh
    print "# no RAM above 4 GiB\n"
    ret

.Lhigh:
    check_eq r14, WINDOW, "RAM above 4 GiB starts at 4 GiB"
    mov rax, WINDOW
    mov rdx, 0x200000000
    mov [rip + addr0], rax
    mov rax, r14
    add rax, r15
    shr rax, 1
    and rax, -8
    mov [rip + addr1], rax
    lea rax, [r15 - 8]
    mov [rip + addr2], rax
    # pdpt[4] -> pd_window
    lea rax, [rip + pd_window]
    or rax, 3
    lea rdx, [rip + pdpt]
    mov [rdx + 4 * 8], rax

    mov rdi, [rip + addr0]
    mov rsi, 0x1111222233334444
    call poke
    mov rdi, [rip + addr1]
    mov rsi, 0x5555666677778888
    call poke
    mov rdi, [rip + addr2]
    mov rsi, 0x99990000aaaabbbb
    call poke
    mov rdi, [rip + addr0]
    call peek
    check_eq rax, 0x1111222233334444, "first qword above 4 GiB reads back"
    mov rdi, [rip + addr1]
    call peek
    check_eq rax, 0x5555666677778888, "a qword in the middle of high RAM reads back"
    mov rdi, [rip + addr2]
    call peek
    check_eq rax, 0x99990000aaaabbbb, "the last qword of RAM reads back"
    print "# wrote "
    mov rdi, [rip + addr0]
    call puthex64
    print " "
    mov rdi, [rip + addr1]
    call puthex64
    print " "
    mov rdi, [rip + addr2]
    call puthex64
    call newline
    ret

# window: rdi = physical address -> rax = its virtual address in the window, which now maps
# the 1 GiB around it (2 MiB pages from rdi rounded down to 1 GiB).
window:
    push rcx
    push rdx
    push rdi
    mov rax, rdi
    shr rax, 30
    shl rax, 30
    lea rdx, [rip + pd_window]
    mov ecx, 512
    or rax, 0x83
.Lwindow:
    mov [rdx], rax
    add rax, 0x200000
    add rdx, 8
    dec ecx
    jnz .Lwindow
    mov rax, cr3
    mov cr3, rax
    pop rdi
    mov rax, rdi
    and rax, 0x3fffffff
    mov rdx, WINDOW
    add rax, rdx
    pop rdx
    pop rcx
    ret

# poke: rdi = physical address, rsi = qword to store.
poke:
    call window
    mov [rax], rsi
    ret

# peek: rdi = physical address -> rax = the qword there.
peek:
    call window
    mov rax, [rax]
    ret

.bss
.align 4096
pd_window:  .space 4096
ram_size:   .space 8
addr0:      .space 8
addr1:      .space 8
addr2:      .space 8
