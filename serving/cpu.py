"""What this CPU means for ONNX Runtime's INT8 kernels.

On x86-64 without VNNI (AVX2 alone, or AVX-512 without its VNNI extension) ONNX Runtime
multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds pairs of 8-bit
products into a saturating int16: 255 x 127 x 2 = 64,770 does not fit in 32,767, so a large
activation against a large weight clips and the logits move (int8 activations are shifted to
uint8 first, so they clip the same way). Weights kept to a 7-bit range (onnxruntime's
`reduce_range`) keep every pair in range (255 x 63 x 2 = 32,130). VNNI (AVX512_VNNI,
AVX_VNNI) accumulates in int32 and has no such limit; neither do other architectures' kernels.

Nothing here imports torch or onnxruntime.
"""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flags that give x86 an int8 dot product accumulating in int32.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The instruction-set flags of this CPU (Linux), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def int8_saturates(
    flags: frozenset[str] | None = None, machine: str | None = None
) -> tuple[bool, str]:
    """Whether ONNX Runtime's INT8 convolutions and matrix products can saturate on this CPU
    with full 8-bit weights, and why. Defaults read this machine; an x86 CPU whose flags
    cannot be read is taken to saturate (the safe answer for choosing weights)."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False, f"{machine or 'this'} CPU, whose int8 kernels accumulate without saturating"
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return True, "x86 CPU whose instruction sets could not be read (VNNI not confirmed)"
    has = sorted(VNNI_FLAGS & flags)
    if has:
        return False, f"x86 CPU with VNNI ({', '.join(has)})"
    best = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/AVX"
    return True, (
        f"x86 CPU without VNNI ({best}), whose int8 kernels add uint8 x int8 pairs in saturating "
        "int16"
    )
