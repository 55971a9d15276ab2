"""Reading, patching and writing raw 8-byte BPF instructions.

struct bpf_insn { __u8 code; __u8 dst_reg:4, src_reg:4; __s16 off; __s32 imm; }
(little-endian: dst_reg is the low nibble of the second byte).
"""

from __future__ import annotations

import struct

INSN_SIZE = 8

INSN = struct.Struct("<BBhi")

# Opcode classes (code & 0x07) and the two opcodes relocations target.
CLASS_LD = 0x00
CLASS_LDX = 0x01
CLASS_ST = 0x02
CLASS_STX = 0x03
CLASS_ALU = 0x04
CLASS_JMP = 0x05
CLASS_JMP32 = 0x06
CLASS_ALU64 = 0x07

LD_IMM64 = 0x18       # BPF_LD | BPF_IMM | BPF_DW: 16 bytes, imm split over two slots
CALL = 0x85           # BPF_JMP | BPF_CALL
EXIT = 0x95           # BPF_JMP | BPF_EXIT
ALU_MOV_K = 0xB4      # BPF_ALU | BPF_MOV | BPF_K
ALU64_MOV_K = 0xB7    # BPF_ALU64 | BPF_MOV | BPF_K


def read(insns: bytes | bytearray, index: int) -> tuple[int, int, int, int, int]:
    """(code, dst_reg, src_reg, off, imm) of instruction ``index``."""
    code, regs, off, imm = INSN.unpack_from(insns, index * INSN_SIZE)
    return code, regs & 0xF, regs >> 4, off, imm


def set_imm(insns: bytearray, index: int, imm: int) -> None:
    struct.pack_into("<i", insns, index * INSN_SIZE + 4, imm)


def set_off(insns: bytearray, index: int, off: int) -> None:
    struct.pack_into("<h", insns, index * INSN_SIZE + 2, off)


def set_src_reg(insns: bytearray, index: int, src: int) -> None:
    pos = index * INSN_SIZE + 1
    insns[pos] = (insns[pos] & 0x0F) | (src << 4)


def set_imm64(insns: bytearray, index: int, value: int) -> None:
    """Store a 64-bit constant in an ld_imm64 pair (low word first)."""
    value &= 0xFFFFFFFFFFFFFFFF
    struct.pack_into("<I", insns, index * INSN_SIZE + 4, value & 0xFFFFFFFF)
    struct.pack_into("<I", insns, (index + 1) * INSN_SIZE + 4, value >> 32)


def encode(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One instruction (struct bpf_insn) from its fields."""
    return INSN.pack(code, (src << 4) | dst, off, imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    """dst = imm (64-bit move of a constant)."""
    return encode(ALU64_MOV_K, dst, 0, 0, imm)


def exit_insn() -> bytes:
    """Return r0."""
    return encode(EXIT)
