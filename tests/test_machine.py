"""What the machine module detects and the defaults it chooses, from given CPU descriptions."""

from __future__ import annotations

from coupalign_core.machine import (
    choose_amp,
    choose_num_threads,
    describe_machine,
    machine_fingerprint,
    machine_info,
    parse_cgroup_cpu_max,
    parse_cpu_info,
)

# The first processor block of three CPUs' /proc/cpuinfo (flags shortened to the ones that matter).
SKYLAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16
"""
ZEN5 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse avx avx2 fma avx512f avx_vnni avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_cpu_flags_are_read_from_the_first_processor():
    sky = parse_cpu_info(SKYLAKE)
    assert sky.model.startswith("Intel(R) Xeon(R) Platinum 8175M")
    assert "avx512f" in sky.flags and "avx512_bf16" not in sky.flags  # the second block is not read
    assert not sky.has_bf16 and not sky.has_int8_dot
    zen = parse_cpu_info(ZEN5)
    assert zen.has_bf16 and zen.has_int8_dot
    assert zen.flags_of_interest == ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni")
    spr = parse_cpu_info(SAPPHIRE_RAPIDS)
    assert spr.bf16_flags == ("avx512_bf16", "amx_bf16")
    arm = parse_cpu_info(GRAVITON3, architecture="aarch64")
    assert arm.model == "CPU part 0xd40" and arm.has_bf16 and arm.has_int8_dot


def test_amp_auto_uses_bf16_only_with_bf16_units():
    amp, why = choose_amp("cpu", parse_cpu_info(SKYLAKE))
    assert amp == "none" and "no BF16 units" in why and "8175M" in why
    amp, why = choose_amp("cpu", parse_cpu_info(ZEN5))
    assert (amp, why) == ("bf16", "the CPU (AMD EPYC) has BF16 units (avx512_bf16)")
    assert choose_amp("cuda", cuda_bf16_supported=True)[0] == "bf16"
    assert choose_amp("cuda", cuda_bf16_supported=False) == ("none", "the GPU has no bf16 support")


def test_threads_auto_counts_only_free_cores():
    assert choose_num_threads(usable=2, load_1min=0.1, logical_cpus=2)[0] == 2
    threads, why = choose_num_threads(usable=2, load_1min=4.65, logical_cpus=2)
    assert threads == 1 and "1-min load 4.65" in why and "2 usable cores of 2" in why
    assert choose_num_threads(usable=2, load_1min=0.9, logical_cpus=2)[0] == 1
    # the load is the whole machine's: 4 busy CPUs of 64 leave this process's 8 free
    assert choose_num_threads(usable=8, load_1min=4.0, logical_cpus=64)[0] == 8
    assert choose_num_threads(usable=16, load_1min=0.0, logical_cpus=16, processes=4)[0] == 4


def test_cgroup_quota():
    assert parse_cgroup_cpu_max("200000 100000\n") == 2.0
    assert parse_cgroup_cpu_max("max 100000\n") is None
    assert parse_cgroup_cpu_max("garbage") is None


def test_machine_record_names_cpu_flags_cores_and_load():
    info = machine_info()
    for key in ("cpu", "cpu_flags", "cpu_bf16", "usable_cpus", "logical_cpus", "load_average_1min", "libraries"):
        assert key in info
    assert "torch" in info["libraries"]
    line = describe_machine(info)
    assert info["cpu"] in line and "cores usable" in line
    same = dict(info, load_average_1min=99.0)
    assert machine_fingerprint(same) == machine_fingerprint(info)  # the load is not part of it
    assert machine_fingerprint(dict(info, usable_cpus=info["usable_cpus"] + 1)) != machine_fingerprint(info)


def test_trainer_runtime_resolves_auto_from_the_given_cpu_and_load():
    from coupalign_core.training.trainer import resolve_runtime

    skylake = resolve_runtime("auto", "auto", "cpu", cpu=parse_cpu_info(SKYLAKE), load_1min=0.0, processes=1)
    assert skylake["amp"] == "none" and "no BF16 units" in skylake["amp_reason"]
    assert skylake["num_threads"] >= 1
    zen_busy = resolve_runtime("auto", "auto", "cpu", cpu=parse_cpu_info(ZEN5), load_1min=1e6, processes=1)
    assert (zen_busy["amp"], zen_busy["num_threads"]) == ("bf16", 1)  # a busy machine: never 0 threads
    fixed = resolve_runtime("none", 3, "cpu", cpu=parse_cpu_info(ZEN5))
    assert (fixed["amp"], fixed["num_threads"], fixed["amp_reason"]) == ("none", 3, "as configured")
    gpu = resolve_runtime("bf16", "auto", "cuda")
    assert gpu["num_threads"] is None and "GPU" in gpu["num_threads_reason"]
