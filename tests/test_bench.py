"""The benchmarks still work (bench/): every workload image, at a tiny size, boots and passes its
own checks on svmemu, raw Unicorn (where it runs there) and QEMU, through the very code
bench/run.py times; a broken run is reported, not timed; the world-switch profile still wraps
the functions the round trip really calls. No timing is asserted."""
from __future__ import annotations

import pytest

from bench import profile_switch, runners, workloads
from bench.run import Cost, main, measure
from tests.conftest import QEMU

TINY = 3


@pytest.mark.parametrize("w", workloads.WORKLOADS, ids=lambda w: w.key)
def test_workload_completes_on_svmemu(w):
    for model in w.pat_models:
        cost = measure(lambda img, m=model: runners.svmemu(img, m), w, TINY, 1)
        assert cost.error is None, (model, cost.error)
        assert cost.per_iter is not None and len(cost.n) == len(cost.one) == 1


def test_l1_loop_completes_on_raw_unicorn():
    w = workloads.by_key("l1")
    r = runners.raw_unicorn(workloads.build(w, TINY))
    assert workloads.completed(r.status, r.output, w.checks) is None, r.output
    assert "ok 1 - loop sum" in r.output


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not on PATH")
@pytest.mark.parametrize("w", workloads.WORKLOADS, ids=lambda w: w.key)
def test_workload_completes_on_qemu(w):
    r = runners.qemu(workloads.build(w, TINY), timeout=30)
    assert workloads.completed(r.status, r.output, w.checks) is None, r.output


def test_a_guest_whose_check_fails_is_reported_not_timed():
    w = workloads.by_key("l1")
    wrong = workloads.build_source(w.source, ITERS=TINY, SUM=12345, X3=3 * TINY)
    r = runners.svmemu(wrong)
    problem = workloads.completed(r.status, r.output, w.checks)
    assert problem is not None and "not ok 1 - loop sum" in r.output
    cost = measure(lambda img: runners.Run(0.5, 3, "not ok 1 - x\n# pass 1 fail 1\n"), w, TINY, 1)
    assert cost.per_iter is None and "# pass 2 fail 0" in cost.error


def test_memtouch_guest_writes_every_page():
    ram = 16 << 20
    r = runners.svmemu(workloads.build_memtouch(ram), ram=ram)
    assert workloads.completed(r.status, r.output, 1) is None, r.output


def test_profile_wraps_the_world_switch_entry_points():
    iters = 40
    plain, steps, wrapped = profile_switch.breakdown(iters)
    calls = {s.name: s.calls for s in steps}
    # The entry points every version of the switch has; inner steps follow the code (a step
    # whose function is gone is left out of the profile rather than breaking it).
    for name in ("vmrun: L1's VMRUN reaches L0", "vmexit (#VMEXIT to L1)",
                 "next_rip (decode for NRIP)", "read_vmcb12", "check_instruction"):
        assert calls[name] == iters, (name, calls[name])
    assert calls["on_exit: L2's exit reaches L0 (router)"] >= 2 * iters
    assert all(s.seconds >= 0 for s in steps) and plain > 0


def test_run_writes_a_results_file(tmp_path):
    out = tmp_path / "RESULTS.md"
    assert main(["--quick", "--only", "l1", "--no-qemu", "--results", str(out)]) == 0
    text = out.read_text()
    w = workloads.by_key("l1")
    assert f"| {w.title} | {w.quick:,} iterations |" in text
    assert "BROKEN" not in text and "Broken runs" not in text


def test_cost_formatting_never_fails_on_missing_numbers():
    from bench.run import fmt_cost, ratio
    assert fmt_cost(Cost(error="x")) == "BROKEN" and fmt_cost(None) == "n/a"
    assert ratio(Cost(per_iter=2.0), Cost(per_iter=None)) == "-"
    assert ratio(Cost(per_iter=2.0), Cost(per_iter=1.0)) == "2.00"


def test_the_linux_bench_sees_milestones(tmp_path):
    """bench/linux.py's timing of serial milestones, on a tiny bzImage whose 32-bit entry prints
    a banner line to COM1 and resets the machine (svmemu only: QEMU would run the image's
    real-mode setup code, which this one does not have)."""
    from bench import linux as bench_linux
    from tests.test_linux_loader import bzimage
    text = b"Linux version tiny\r\nreboot: Power down\r\n\0"
    code = (b"\x66\xBA\xF8\x03" + b"\xBB" + (0x100000 + 24).to_bytes(4, "little")
            + b"\x8A\x03\x84\xC0\x74\x04\xEE\x43\xEB\xF6" + b"\xB0\xFE\xE6\x64\xF4" + text)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(bzimage(code))
    seen = bench_linux.run_once("svmemu", None, kernel)
    assert "banner" in seen and "power off" in seen and seen["cpu"] > 0
    assert seen["banner"] <= seen["power off"]
