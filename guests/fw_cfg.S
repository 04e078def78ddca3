# fw_cfg.S: QEMU's firmware configuration device through its legacy ports (selector 0x510,
# 16-bit writes; data 0x511, byte reads), as C test kernels use it.
# Checks: the signature is "QEMU"; FW_CFG_ID has the traditional-interface bit; FW_CFG_NB_CPUS
# is 1; FW_CFG_RAM_SIZE is 128 MiB (the RAM both svmemu and the QEMU tests give a guest);
# reading past an item's end gives 0; a new selector write rewinds the item.
.include "prelude.inc"

.equ FW_CFG_PORT_SEL, 0x510
.equ FW_CFG_PORT_DATA, 0x511
.equ FW_CFG_SIGNATURE, 0x00
.equ FW_CFG_ID, 0x01
.equ FW_CFG_RAM_SIZE, 0x03
.equ FW_CFG_NB_CPUS, 0x05

# fw_cfg_read ITEM, N: select ITEM, read N (<= 8) bytes little-endian into rax.
# Clobbers rcx, rdx, r8.
.macro fw_cfg_read item, n
    mov dx, FW_CFG_PORT_SEL
    mov ax, \item
    out dx, ax
    mov dx, FW_CFG_PORT_DATA
    xor r8d, r8d
    xor ecx, ecx
.Lfw_cfg_loop\@:
    xor eax, eax
    in al, dx
    shl rax, cl
    or r8, rax
    add ecx, 8
    cmp ecx, 8 * \n
    jb .Lfw_cfg_loop\@
    mov rax, r8
.endm

main:
    fw_cfg_read FW_CFG_SIGNATURE, 4
    check_eq rax, 0x554d4551, "signature reads QEMU"
    fw_cfg_read FW_CFG_SIGNATURE, 8
    check_eq rax, 0x554d4551, "signature is 4 bytes, then zeros"
    fw_cfg_read FW_CFG_ID, 4
    check_mask rax, 1, 1, "FW_CFG_ID reports the traditional interface"
    fw_cfg_read FW_CFG_NB_CPUS, 2
    check_eq rax, 1, "FW_CFG_NB_CPUS is 1"
    fw_cfg_read FW_CFG_RAM_SIZE, 8
    check_eq rax, 0x8000000, "FW_CFG_RAM_SIZE is 128 MiB"
    # Two bytes, then reselect: the stream starts over.
    fw_cfg_read FW_CFG_SIGNATURE, 2
    fw_cfg_read FW_CFG_SIGNATURE, 1
    check_eq rax, 0x51, "a selector write rewinds the item"
    ret
