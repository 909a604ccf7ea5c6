"""Which CPUs make ONNX Runtime's INT8 kernels saturate with full 8-bit weights."""

from __future__ import annotations

from serving.cpu import cpu_flags, int8_saturates

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def test_x86_without_vnni_saturates_and_says_which_instruction_set():
    saturates, why = int8_saturates(AVX2, "x86_64")
    assert saturates and "AVX2" in why and "without VNNI" in why
    saturates, why = int8_saturates(AVX2 | {"avx512f", "avx512bw"}, "x86_64")
    assert saturates and "AVX-512" in why


def test_vnni_or_another_architecture_does_not():
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        saturates, why = int8_saturates(AVX2 | {vnni}, "x86_64")
        assert not saturates and vnni in why
    assert int8_saturates(frozenset({"asimd", "asimddp"}), "aarch64")[0] is False
    assert int8_saturates(None, "arm64")[0] is False


def test_an_x86_cpu_whose_flags_cannot_be_read_is_taken_to_saturate(tmp_path, monkeypatch):
    import serving.cpu

    assert cpu_flags(tmp_path / "missing") is None
    monkeypatch.setattr(serving.cpu, "cpu_flags", lambda: None)
    saturates, why = int8_saturates(None, "AMD64")
    assert saturates and "could not be read" in why


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512_vnni\n\n"
        "processor\t: 1\nflags\t\t: fpu sse avx2 avx512_vnni\n"
    )
    assert cpu_flags(info) == frozenset({"fpu", "sse", "avx2", "avx512_vnni"})
    info.write_text("processor\t: 0\nmodel name\t: unknown\n")
    assert cpu_flags(info) is None
