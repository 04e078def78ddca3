# mbinfo.S: prints the multiboot information block the loader passed in EBX and checks it.
# Printed (as "# name value" comments): MBI address, flags, mem_lower, mem_upper, boot_device,
# cmdline, mods_count, every memory-map entry, boot_loader_name.
# Checked: magic, flags has mem/cmdline/mmap/loader-name bits, mem_lower = 639 KiB,
# mem_upper * 1 KiB + 1 MiB = 128 MiB - 128 KiB (both run with 128 MiB of RAM; the firmware
# QEMU runs keeps the top 128 KiB, so svmemu reports the same),
# the memory map has a usable entry covering [1 MiB, 128 MiB - 128 KiB) and no usable entry
# at or above 128 MiB, every entry's size field is 20, the command line and the boot loader
# name are non-empty strings.  The name itself differs ("qemu" vs "svmemu"); it is only printed.
.include "prelude.inc"

.macro show label, value
    print "\label"
    mov rdi, \value
    call puthex64
    call newline
.endm

main:
    check_eq [mb_magic], 0x2badb002, "multiboot magic"
    mov rbx, [mb_info]
    show "# mbi ", rbx
    mov r12d, dword ptr [rbx]                   # flags
    show "# flags ", r12
    check_mask r12, 0x245, 0x245, "flags: mem, cmdline, mmap, loader name"
    mov eax, dword ptr [rbx + 4]
    show "# mem_lower ", rax
    check_eq rax, 639, "mem_lower is 639 KiB"
    mov eax, dword ptr [rbx + 8]
    show "# mem_upper ", rax
    shl rax, 10
    add rax, 0x100000
    check_eq rax, 128*1024*1024-128*1024, "mem_upper*1KiB + 1MiB is RAM size - 128 KiB"
    mov eax, dword ptr [rbx + 12]
    show "# boot_device ", rax
    print "# cmdline '"
    mov edi, dword ptr [rbx + 16]
    call puts
    print "'\n"
    mov edi, dword ptr [rbx + 16]
    call strlen
    check_ne rax, 0, "cmdline is not empty"
    mov eax, dword ptr [rbx + 20]
    show "# mods_count ", rax

    # Memory map: entries of (size u32, base u64, length u64, type u32), size excludes itself.
    mov r13d, dword ptr [rbx + 44]              # mmap_length
    show "# mmap_length ", r13
    mov r14d, dword ptr [rbx + 48]              # mmap_addr
    add r13, r14                                # end
    xor r15d, r15d                              # bad size fields
    xor ebp, ebp                                # found: bit 0 low usable covers 1 MiB, bit 1 usable >= 128 MiB
.Lmmap:
    cmp r14, r13
    jae .Lmmap_done
    print "# mmap base "
    mov rdi, [r14 + 4]
    call puthex64
    print " len "
    mov rdi, [r14 + 12]
    call puthex64
    print " type "
    mov edi, dword ptr [r14 + 20]
    call putdec
    call newline
    mov eax, dword ptr [r14]
    cmp eax, 20
    je .Lmmap_size_ok
    inc r15
.Lmmap_size_ok:
    cmp dword ptr [r14 + 20], 1
    jne .Lmmap_next
    mov rax, [r14 + 4]                          # base
    mov rcx, rax
    add rcx, [r14 + 12]                         # end
    mov rdx, 128 * 1024 * 1024
    cmp rcx, rdx
    jbe .Lmmap_below
    or ebp, 2
.Lmmap_below:
    cmp rax, 0x100000
    ja .Lmmap_next
    mov rdx, 128 * 1024 * 1024 - 128 * 1024
    cmp rcx, rdx
    jb .Lmmap_next
    or ebp, 1
.Lmmap_next:
    mov eax, dword ptr [r14]
    lea r14, [r14 + rax + 4]
    jmp .Lmmap
.Lmmap_done:
    check_eq r15, 0, "every mmap entry has size 20"
    check_eq rbp, 1, "mmap: usable RAM from 1 MiB, none above 128 MiB"

    print "# boot_loader_name '"
    mov edi, dword ptr [rbx + 64]
    call puts
    print "'\n"
    mov edi, dword ptr [rbx + 64]
    call strlen
    check_ne rax, 0, "boot loader name is not empty"
    ret

# strlen: rdi = string -> rax = length.
strlen:
    xor eax, eax
.Lstrlen:
    cmp byte ptr [rdi + rax], 0
    je .Lstrlen_done
    inc rax
    jmp .Lstrlen
.Lstrlen_done:
    ret
