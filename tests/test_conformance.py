"""The kvm-unit-tests conformance runner (tests/conformance/): its reading of unittests.cfg, of a
kernel's output and exit status, and of the expectations, on synthetic input; then (marker
`conformance`) the real suite on svmemu against tests/conformance/expectations.toml."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance import cfg, engines, expectations, report, runner, svmtests
from tests.conformance import outcome as oc

REPO = Path(__file__).resolve().parents[1]

CFG = """
# a comment
[apic]
file = apic.flat
smp = 2
qemu_params = -cpu qemu64,+x2apic -m 2g
arch = x86_64
timeout = 30
groups = apic x

[cmpxchg8b]
file = cmpxchg8b.flat
arch = i386

[svm]
file = svm.flat
test_args = "-pause_filter_test -foo"
qemu_params = -cpu max,+svm -m 4g

[svm_foo]
file = svm.flat
test_args = "foo"
qemu_params = -cpu max,+svm,-rdtscp

[pmu]
file = pmu.flat
accel = kvm

[ept]
file = vmx.flat
qemu_params = -cpu max,+vmx

[hv]
file = hv.flat
qemu_params = -cpu host,hv_passthrough

[reduced]
file = access_test.flat
check = /sys/module/kvm_intel/parameters/allow_smaller_maxphyaddr=Y

[kvmclock]
file = kvmclock_test.flat
test_args = "10000000 `date +%s`"

[lam]
file = lam.flat
qemu_params = -enable-kvm -cpu max

[iommu]
file = intel-iommu.flat
qemu_params = -M q35 -device intel-iommu,intremap=on

[ivy]
file = a.flat
qemu_params = -cpu IvyBridge,phys-bits=36
"""


def entries() -> dict[str, cfg.Entry]:
    return {e.name: e for e in cfg.parse_cfg(CFG)}


def test_cfg_fields_and_defaults():
    es = entries()
    assert list(es)[:3] == ["apic", "cmpxchg8b", "svm"]
    apic = es["apic"]
    assert (apic.file, apic.smp, apic.arch, apic.timeout) == ("apic.flat", 2, "x86_64", 30.0)
    assert apic.groups == ("apic", "x")
    assert (apic.cpu, apic.memory) == ("qemu64,+x2apic", "2g")
    svm = es["svm"]
    assert svm.append == "-pause_filter_test -foo"        # quotes removed
    assert svm.timeout == cfg.DEFAULT_TIMEOUT_S and svm.smp == 1
    assert es["cmpxchg8b"].cpu is None and es["cmpxchg8b"].memory is None
    args = es["kvmclock"].append.split()
    assert args[0] == "10000000" and args[1].isdigit()    # the date is substituted


@pytest.mark.parametrize("name, words", [
    ("cmpxchg8b", "arch = i386"), ("pmu", "accel = kvm"), ("ept", "VMX"),
    ("hv", "-cpu host"), ("reduced", "check ="), ("lam", "-enable-kvm"),
    ("iommu", "Intel IOMMU"), ("ivy", "Intel CPU model")])
def test_cfg_exclusions_say_why(name, words):
    why = cfg.exclusion(entries()[name])
    assert why is not None and words in why


def test_cfg_amd_entries_apply():
    es = entries()
    assert cfg.exclusion(es["apic"]) is None
    assert cfg.exclusion(es["svm"]) is None
    assert cfg.exclusion(es["kvmclock"]) is None


def test_a_test_with_an_entry_of_its_own_runs_alone_with_its_options():
    es = list(entries().values())
    assert runner.own_entry(es, "svm.flat", "foo").cpu == "max,+svm,-rdtscp"
    assert runner.own_entry(es, "svm.flat", "pause_filter_test") is None
    assert runner.own_entry(es, "svm_npt.flat", "foo") is None


SOURCE = """
static void x(void) { }
struct svm_test other[] = { { "not this one" }, { NULL } };
struct svm_test svm_tests[] = {
	{ "null", default_supported, default_prepare },
	{ "vmrun intercept check", default_supported },
	/* { "commented out", default_supported }, */
	// { "also commented", x },
	TEST(svm_pae_test),
	NPT_V1_TEST(npt_nx, npt_nx_prepare, null_test, npt_nx_check),
	NPT_V2_TEST(svm_npt_rsvd_bits_test),
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL }
};
struct svm_test after[] = { { "nor this" } };
"""


def test_svm_test_table_names():
    assert svmtests.tests_in_table(SOURCE, "svm_tests") == [
        "null", "vmrun_intercept_check", "svm_pae_test", "npt_nx", "svm_npt_rsvd_bits_test"]
    with pytest.raises(ValueError):
        svmtests.tests_in_table(SOURCE, "missing")


OUTPUT = """enabling apic
SVM test: x
PASS: one
FAIL: two | bad
SKIP: three (not supported)
XFAIL: four
XPASS: five
  PASS: indented is not a result
SUMMARY: 5 tests, 2 unexpected failures, 1 skipped
"""


def test_output_counts_and_summary():
    o = oc.parse_output(OUTPUT)
    assert (o.passes, o.fails, o.skips) == (2, 2, 1)
    assert o.summary == "5 tests, 2 unexpected failures, 1 skipped"
    assert o.fail_lines == ["two | bad", "five"]


@pytest.mark.parametrize("status, verdict, detail", [
    (1, oc.PASS, ""), (3, oc.FAIL, ""), (77, oc.SKIP, ""),
    (129, oc.CRASH, "kernel exit code 64 (abort)"), (5, oc.CRASH, "kernel exit code 2"),
    (6, oc.UNSUPPORTED, "svmemu: unsupported: APIC ICR delivery mode 5"),
    (8, oc.TIMEOUT, "time limit"),
    (70, oc.INTERNAL, "svmemu: internal error: NestedFault"),
    (2, oc.INTERNAL, "svmemu refused the run: svmemu: error: RAM size"),
    (4, oc.CRASH, "shutdown (triple fault)"),
    (0, oc.CRASH, "halted without writing isa-debug-exit"),
    (-9, oc.CRASH, "svmemu status -9"),
])
def test_svmemu_endings(status, verdict, detail):
    stderr = {6: "svmemu: unsupported: APIC ICR delivery mode 5\n",
              70: "noise\nsvmemu: internal error: NestedFault\n",
              2: "svmemu: error: RAM size\n"}.get(status, "")
    o = oc.classify_svmemu(status, OUTPUT, stderr, timed_out=False)
    assert o.verdict == verdict
    assert o.detail == detail
    assert o.passes == 2                 # the result lines count whatever the ending


def test_svmemu_killed_by_the_runner_is_a_timeout():
    assert oc.classify_svmemu(-9, "", "", timed_out=True).verdict == oc.TIMEOUT


@pytest.mark.parametrize("status, stderr, out, verdict", [
    (1, "", OUTPUT, oc.PASS), (3, "", OUTPUT, oc.FAIL), (77, "", "", oc.SKIP),
    (1, "qemu-system-x86_64: -cpu foo: unknown CPU\n", "", oc.INTERNAL),
    (0, "", "", oc.CRASH),
    (1, "qemu-system-x86_64: warning: TCG doesn't support requested feature\n", "", oc.PASS),
])
def test_qemu_endings(status, stderr, out, verdict):
    assert oc.classify_qemu(status, out, stderr, timed_out=False).verdict == verdict


def test_qemu_time_limit():
    assert oc.classify_qemu(-9, "PASS: a\n", "", timed_out=True).verdict == oc.TIMEOUT


def test_outcome_json_round_trip():
    o = oc.classify_svmemu(3, OUTPUT, "", False)
    o.seconds = 1.5
    assert oc.Outcome.from_json(o.to_json()) == o


EXPECT = """
["svm.flat:null"]
verdict = "pass"

["svm.flat:nmi"]
verdict = "fail"
fails = 2
reason = "self-NMI late"

["svm.flat:latency_run_exit"]
verdict = "timeout"
reason = "speed: see bench"
"""


def test_expectations_parse():
    e = expectations.parse(EXPECT)
    assert e["svm.flat:nmi"] == expectations.Expected("fail", "self-NMI late", 2)
    assert e["svm.flat:null"].verdict == "pass"


@pytest.mark.parametrize("text, words", [
    ('["a"]\nverdict = "fail"\n', "needs a reason"),
    ('["a"]\nverdict = "great"\n', "not one of"),
    ('["a"]\nverdict = "pass"\nfails = 1\n', "fails = N"),
    ('["a"]\nverdict = "pass"\nwhy = "x"\n', "unknown keys"),
])
def test_expectations_refuse_bad_tables(text, words):
    with pytest.raises(expectations.ExpectationError, match=words):
        expectations.parse(text)


def out(verdict: str, fails: int = 0, detail: str = "") -> oc.Outcome:
    return oc.Outcome(verdict, fails=fails, detail=detail)


@pytest.mark.parametrize("test_id, got, kind", [
    ("svm.flat:null", out(oc.PASS), expectations.SAME),
    ("svm.flat:null", out(oc.FAIL, 1), expectations.WORSE),
    ("svm.flat:nmi", out(oc.FAIL, 2), expectations.SAME),
    ("svm.flat:nmi", out(oc.FAIL, 3), expectations.WORSE),
    ("svm.flat:nmi", out(oc.FAIL, 1), expectations.BETTER),
    ("svm.flat:nmi", out(oc.PASS), expectations.BETTER),
    ("svm.flat:nmi", out(oc.TIMEOUT), expectations.WORSE),
    ("svm.flat:latency_run_exit", out(oc.PASS), expectations.BETTER),
    ("svm.flat:latency_run_exit", out(oc.INTERNAL), expectations.WORSE),
    ("unknown", out(oc.PASS), expectations.SAME),
    ("unknown", out(oc.SKIP), expectations.WORSE),
])
def test_expectation_compare(test_id, got, kind):
    e = expectations.parse(EXPECT)
    assert expectations.compare(e.get(test_id), got)[0] == kind


def test_expectations_render_keeps_reasons():
    old = expectations.parse(EXPECT)
    results = {"svm.flat:nmi": out(oc.FAIL, 1), "svm.flat:new": out(oc.SKIP),
               "svm.flat:null": out(oc.PASS)}
    again = expectations.parse(expectations.render(results, old))
    assert again["svm.flat:nmi"] == expectations.Expected("fail", "self-NMI late", 1)
    assert again["svm.flat:new"].reason == "TODO: explain"
    assert again["svm.flat:null"] == expectations.Expected("pass")


def test_check_exit_status(capsys):
    e = expectations.parse(EXPECT)
    runs = [engines.Run(i, Path("k.flat"), "", None, None, 1.0, "svm")
            for i in ("svm.flat:null", "svm.flat:nmi")]
    assert runner.check(runs, {"svm.flat:null": out(oc.PASS), "svm.flat:nmi": out(oc.PASS)},
                        e) == 0
    assert "update expectations" in capsys.readouterr().out
    assert runner.check(runs, {"svm.flat:null": out(oc.UNSUPPORTED, detail="x"),
                               "svm.flat:nmi": out(oc.FAIL, 2)}, e) == 1
    text = capsys.readouterr().out
    assert "svm.flat:null: expected pass, got unsupported (x)" in text
    assert "svm.flat:nmi" not in text


def test_check_retries_a_load_timeout_alone_with_a_longer_limit(monkeypatch, capsys):
    e = expectations.parse(EXPECT)
    runs = [engines.Run(i, Path("k.flat"), "", None, None, 1.0, "svm")
            for i in ("svm.flat:null", "svm.flat:nmi", "svm.flat:new", "svm.flat:latency_run_exit")]
    seen = []

    def fake(run, cmd):
        seen.append((run.id, run.timeout))
        if run.id == "svm.flat:new":
            return out(oc.TIMEOUT, detail="time limit")
        return out(oc.PASS)
    monkeypatch.setattr(engines, "run_svmemu", fake)
    first = {"svm.flat:null": out(oc.TIMEOUT, detail="time limit"),
             "svm.flat:nmi": out(oc.TIMEOUT, detail="time limit"),
             "svm.flat:new": out(oc.TIMEOUT, detail="time limit"),
             "svm.flat:latency_run_exit": out(oc.TIMEOUT, detail="time limit")}
    again = runner.retry_load_timeouts(runs, first, e, ["svmemu"], 2.0)
    # nmi is expected to fail, so its timeout is worse and retried; latency_run_exit's is not.
    assert sorted(seen) == [("svm.flat:new", 2.0), ("svm.flat:nmi", 2.0), ("svm.flat:null", 2.0)]
    assert again["svm.flat:null"].verdict == oc.PASS
    assert "alone with 2 s: pass" in again["svm.flat:null"].detail
    assert runner.check(runs, {**first, **again}, e) == 1
    text = capsys.readouterr().out
    assert "svm.flat:new: expected pass, got timeout" in text
    assert "svm.flat:null" not in text.split("worse than expected")[1]
    seen.clear()
    assert runner.retry_load_timeouts(runs, first, e, ["svmemu"], 1.0) == {}
    assert seen == []


def test_memory_and_command_lines():
    assert engines.memory_mib(None) == 128
    assert engines.memory_mib("4g") == 4096 and engines.memory_mib("2048") == 2048
    assert engines.memory_mib("512M") == 512
    with pytest.raises(ValueError):
        engines.memory_mib("lots")
    run = engines.Run("svm.flat:vmrun", Path("/k/svm.flat"), "vmrun", "max,+svm", "4g", 30.0,
                      "svm")
    cmd = engines.svmemu_command(run, ["svmemu"])
    assert cmd[:3] == ["svmemu", "run", "/k/svm.flat"]
    assert cmd[cmd.index("-m") + 1] == f"{engines.SVMEMU_MAX_MEMORY_MIB}M"
    assert cmd[cmd.index("--append") + 1] == "vmrun" and "--timeout" in cmd
    q = engines.qemu_command(run)
    assert q[q.index("-cpu") + 1] == "max,+svm" and q[q.index("-m") + 1] == "4096"
    assert q[q.index("-append") + 1] == "vmrun" and q[q.index("-smp") + 1] == "1"
    assert "-smp" not in cmd                        # one CPU: svmemu's default
    two = engines.Run("smptest", Path("/k/smptest.flat"), "", None, None, 30.0, "smptest",
                      smp=2)
    cmd = engines.svmemu_command(two, ["svmemu"])
    assert cmd[cmd.index("-smp") + 1] == "2"
    q = engines.qemu_command(two)
    assert q[q.index("-smp") + 1] == "2"
    bare = engines.Run("setjmp", Path("/k/setjmp.flat"), "", None, None, 30.0, "setjmp")
    q = engines.qemu_command(bare)
    assert q[q.index("-cpu") + 1] == "qemu64" and "-append" not in q
    devices = [q[i + 1] for i, a in enumerate(q) if a == "-device"]
    assert devices == ["pc-testdev", "isa-debug-exit,iobase=0xf4,iosize=4"]   # as x86/run
    assert "--append" not in engines.svmemu_command(bare, ["svmemu"])


FAKE_SVMEMU = r"""
import sys
cpu = sys.argv[sys.argv.index("--cpu") + 1].split(",")
if cpu[0] not in ("EPYC", "max"):
    sys.exit(print(f"svmemu: error: unknown CPU model '{cpu[0]}' (models: EPYC, max)",
                   file=sys.stderr) or 2)
for f in cpu[1:]:
    if "=" in f:
        sys.exit(print(f"svmemu: error: bad CPU feature '{f}': write +name", file=sys.stderr) or 2)
    if f.lstrip("+-") == "x2apic":
        sys.exit(print("svmemu: error: CPU feature 'x2apic' is not implemented by svmemu",
                       file=sys.stderr) or 2)
"""


def test_qemu_cache_key_names_the_source_not_the_build_path(tmp_path):
    """Kernels built from one source in two places differ in bytes (the build path is in their
    assertion strings): the QEMU cache must still find the result."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "kvm-unit-tests-0000.tar.gz").write_bytes(b"source")
    source = runner.source_id(tmp_path / "shared")
    keys = []
    for where in ("a", "bb"):
        k = tmp_path / where / "x86" / "svm.flat"
        k.parent.mkdir(parents=True)
        k.write_bytes(b"kernel built in " + str(k.parent).encode())
        run = engines.Run("svm.flat:vmrun", k, "vmrun", "max,+svm", "4g", 30.0, "svm", "vmrun", 2)
        keys.append((runner.qemu_key(run, source), runner.qemu_key(run)))
    assert keys[0][0] == keys[1][0] == (f"svm.flat:vmrun|{source}/svm.flat|vmrun|max,+svm|4g|smp2"
                                        "|pc-testdev;isa-debug-exit,iobase=0xf4,iosize=4")
    assert keys[0][1] != keys[1][1]               # without the source: the kernel's digest
    assert runner.source_id(tmp_path) is None     # no tarball there


def test_svmemu_cpu_drops_what_svmemu_refuses(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE_SVMEMU)
    cmd = [sys.executable, str(fake)]
    k = tmp_path / "k.flat"
    assert engines.svmemu_cpu("max,+svm", cmd, k) == ("max,+svm", [])
    assert engines.svmemu_cpu("Opteron_G1,+x2apic,vendor=AuthenticAMD,+svm", cmd, k) == (
        "EPYC,+svm", ["Opteron_G1", "+x2apic", "vendor=AuthenticAMD"])
    assert engines.svmemu_cpu(None, cmd, k) == (None, [])
    run = engines.Run("x", k, "", "max", None, 1.0, "x")
    assert engines.svmemu_command(run, ["svmemu"], "EPYC,+svm")[-2:] == ["--cpu", "EPYC,+svm"]


def test_execute_kills_at_the_time_limit():
    raw = engines.execute([sys.executable, "-c", "import time; print('x', flush=True); "
                           "time.sleep(30)"], timeout=1.0)
    assert raw.timed_out and raw.stdout.strip() == "x"


def test_report_marks_differences_and_quotes_notes():
    runs = [engines.Run(i, Path("k"), i.split(":")[1], None, None, 1.0, "svm")
            for i in ("svm.flat:a", "svm.flat:b", "svm.flat:c")]
    svm = {"svm.flat:a": out(oc.PASS), "svm.flat:b": out(oc.PASS),
           "svm.flat:c": out(oc.UNSUPPORTED, detail="svmemu: unsupported: LBR")}
    qemu = {"svm.flat:a": out(oc.PASS), "svm.flat:b": out(oc.FAIL, 3), "svm.flat:c": out(oc.PASS)}
    notes = {"svm.flat:b": report.Note("svmemu", "APM vol. 2, 15.5.1: ASID 0 is illegal.")}
    text = report.render([("svm.flat tests alone", runs)], svm, qemu, [("vmx", "Intel VMX")],
                         notes, ["header"])
    assert "| `svm.flat:a` |" in text and "| `svm.flat:b` ≠ |" in text
    assert "Right: **svmemu**. APM vol. 2, 15.5.1: ASID 0 is illegal." in text
    assert "`svm.flat:c`: svmemu **unsupported** 0/0/0: unsupported: LBR" in text
    assert "*Not yet analysed.*" in text
    assert "| `vmx` | Intel VMX |" in text
    assert "2 pass, 1 unsupported" in text and "2 pass, 1 fail" in text


def test_the_recorded_expectations_and_notes_parse():
    e = expectations.load()
    assert e, "tests/conformance/expectations.toml is empty"
    assert all(x.reason != "TODO: explain" for x in e.values())
    notes = report.load_notes()
    assert all(n.right in ("svmemu", "qemu", "both", "neither") and n.why
               for n in notes.values())


# ---- the real suite ----------------------------------------------------------------------------
SHARED = Path(os.environ.get("SVMEMU_CONFORMANCE_SHARED", runner.SHARED_DEFAULT))
# What CI runs: every applicable unittests.cfg entry and each svm.flat test alone (svm_npt.flat's
# tests run in its entry). Short time limits keep it to a few minutes on 2 cores: a run expected
# to time out (the latency tests' million round trips, until the engine is faster: see bench/)
# only has to end no worse within a few seconds.
CI_SETS = "entries,svm"
CI_TIMEOUT_S = 30
CI_EXPECTED_TIMEOUT_S = 8


@pytest.mark.conformance
def test_kvm_unit_tests_no_worse_than_expected():
    if not (SHARED / runner.BUILD_SCRIPT).exists():
        pytest.skip(f"no kvm-unit-tests build script in {SHARED}")
    missing = [t for t in ("gcc", "make") if not shutil.which(t)]
    if missing:
        pytest.skip(f"building kvm-unit-tests needs {', '.join(missing)}")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.conformance.runner", "--check", "--shared", str(SHARED),
         "--sets", CI_SETS, "--timeout", str(CI_TIMEOUT_S),
         "--expected-timeout-limit", str(CI_EXPECTED_TIMEOUT_S), "--jobs", "2", "-q"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
