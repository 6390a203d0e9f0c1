#!/usr/bin/env bash
# Mutation test of the kernel suites on the CPU backend: applies each mutant of
# scripts/mutants.txt (a plausible kernel bug: a removed barrier, a wrong cp.async
# wait count, a swizzle mismatch, a fragment order, a row guard, a GQA head, mask
# columns, a missing rescale, the LSE base, unguarded stores, non-atomic dQ, ...)
# one at a time to a PRIVATE COPY of the checkout, builds the CPU-only crate in the
# mutant's check mode(s), runs the mutant's tests and reports whether they fail.
#
#   scripts/mutate.sh                  # every mutant
#   MUTATE_ONLY=fwd-lse-base2,bwd-dq-barrier scripts/mutate.sh
#
# Steps:
#   1. Checks every mutant's find text occurs exactly once in its file (else it stops
#      with "STALE", before building anything: a stale mutant is never "killed").
#   2. Copies the working tree of this checkout (tracked and untracked files, no
#      target/ and .git/) to $MUTATE_DIR/src, file times reset so that cargo rebuilds.
#      Nothing under the checkout itself is written.
#   3. Baseline: for each check mode some mutant uses (plain, racecheck =
#      MASKATTN_CPU_CHECK=racecheck, memcheck = MASKATTN_CPU_CHECK=memcheck with
#      ASAN_OPTIONS=verify_asan_link_order=0:detect_leaks=0), builds
#      `cargo test --no-default-features --features cpu --test <suite>... --no-run`
#      and runs every test the mutants use in that mode, each alone
#      (`<binary> --exact <test>`, MASKATTN_GPU_FUZZ_CASES=20 unless the mutant
#      list says otherwise). Each must pass; a test that fails here is reported as
#      BASELINE FAIL and is not used for the mutants (a mutant that then is not
#      killed is UNTESTED, not SURVIVED).
#   4. Per mutant: applies it, then per mode in order: build (a build failure is
#      NO-BUILD, a failure of the script, not a kill), run the tests in order and stop
#      at the first failure (a test running past 5x its baseline time, at least 120 s,
#      counts as failing: "timeout"); restores the file.
#   Output: one line per baseline test, one line per mutant
#      NAME  KILLED|SURVIVED|NO-BUILD|UNTESTED  MODE SUITE::TEST: first error line  SECONDS
#   and a summary line. Logs of every build and test: $MUTATE_DIR/logs/.
#   Exit status 0 only when the baseline passes and every mutant is KILLED.
#
# One target directory ($MUTATE_DIR/target) serves all three modes: every mutant
# changes csrc/, so every (mutant, mode) pair recompiles the kernels and relinks the
# suites anyway, and one directory builds the dependencies once (the first run of
# the script on a machine spends ~15-30 min on them; later runs reuse them).
#
# Cost, measured on this 2-core machine with warm dependencies: 17.9 min for the 20
# mutants and the three baselines on an idle machine (2026-12-02), a plain or
# racecheck mutant 20-50 s, a memcheck one ~2 min (the kernels under ASan + UBSan).
# The first run on a machine also builds the dependencies into $MUTATE_DIR/target.
#
# Result on 2026-12-02: the whole list (commit 5d57961): 19 of 20 killed,
# bwd-nonatomic-dq survived (a plain read-add-write of dQ by two CTAs loses an
# update only if two host threads interleave within nanoseconds). Racecheck builds
# now report plain stores of two CTAs to one global byte; with it
# (MUTATE_ONLY=bwd-nonatomic-dq) that mutant is killed in racecheck, baselines
# passing: 20 of 20.
#
# Environment: MUTATE_DIR (default /tmp/maskattn-mutate), MUTATE_ONLY (comma-separated
# mutant names), MUTATE_FUZZ_CASES (default 20), MUTATE_LIST (default
# scripts/mutants.txt), NVCC (else scripts/setup-cuda.sh finds the CUDA headers).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export MUTATE_REPO=$repo
export MUTATE_DIR=${MUTATE_DIR:-/tmp/maskattn-mutate}
export MUTATE_LIST=${MUTATE_LIST:-$repo/scripts/mutants.txt}
export MUTATE_FUZZ_CASES=${MUTATE_FUZZ_CASES:-20}
# The CPU backend needs only the CUDA headers next to nvcc; no nvcc compile happens.
NVCC=${NVCC:-$("$repo/scripts/setup-cuda.sh" 2>/dev/null)}
export NVCC
unset MASKATTN_CPU_CHECK MASKATTN_REQUIRE_GPU CARGO_TARGET_DIR

exec python3 -u - "$@" <<'PY'
import os, re, subprocess, sys, time, json, shutil

REPO = os.environ["MUTATE_REPO"]
WORK = os.environ["MUTATE_DIR"]
LIST = os.environ["MUTATE_LIST"]
FUZZ = int(os.environ["MUTATE_FUZZ_CASES"])
ONLY = [x for x in os.environ.get("MUTATE_ONLY", "").split(",") if x]
SRC = os.path.join(WORK, "src")
TARGET = os.path.join(WORK, "target")
LOGS = os.path.join(WORK, "logs")
ASAN = "verify_asan_link_order=0:detect_leaks=0"
MODES = ("plain", "racecheck", "memcheck")
T0 = time.time()


def die(msg, code=2):
    print(f"mutate: {msg}", flush=True)
    sys.exit(code)


# ---------------------------------------------------------------- mutant list
def parse(path):
    groups, mutants, cur, block = {}, [], None, None
    for n, raw in enumerate(open(path).read().split("\n"), 1):
        line = raw.rstrip("\r")
        if block is not None:
            if line in ("--- replace", "--- end"):
                cur[block] = "\n".join(cur[block])
                if line == "--- end":
                    if "replace" not in cur:
                        die(f"{path}:{n}: mutant {cur['name']}: --- end before --- replace")
                    block = None
                else:
                    block, cur["replace"] = "replace", []
            else:
                cur[block].append(line)
            continue
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("@group "):
            name, _, tests = s[len("@group "):].partition("=")
            groups[name.strip()] = tests.split()
        elif s.startswith("@@ "):
            cur = {"name": s[3:].strip(), "line": n}
            mutants.append(cur)
        elif cur is not None and s == "--- find":
            block, cur["find"] = "find", []
        elif cur is not None and ":" in s and s.split(":", 1)[0] in ("file", "modes", "tests"):
            k, v = s.split(":", 1)
            cur[k] = v.strip()
        else:
            die(f"{path}:{n}: cannot parse: {line!r}")
    if block is not None:
        die(f"{path}: mutant {cur['name']}: unterminated --- {block} block")
    out = []
    for m in mutants:
        for k in ("file", "modes", "tests", "find", "replace"):
            if k not in m:
                die(f"{path}:{m['line']}: mutant {m['name']}: no {k}")
        modes = m["modes"].split()
        for mode in modes:
            if mode not in MODES:
                die(f"mutant {m['name']}: unknown mode {mode}")
        tests = []
        for t in m["tests"].split():
            for x in groups.get(t, [t]):
                if ":" not in x:
                    die(f"mutant {m['name']}: {x} is neither a group nor SUITE:TEST")
                suite, test = x.split(":", 1)
                fuzz = FUZZ
                if "@" in test:
                    test, f = test.rsplit("@", 1)
                    fuzz = int(f)
                tests.append((suite, test, fuzz))
        out.append(dict(name=m["name"], file=m["file"], modes=modes, tests=tests,
                        find=m["find"], replace=m["replace"]))
    names = [m["name"] for m in out]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        die(f"duplicate mutant names: {sorted(dup)}")
    return out


def occurrences(text, sub):
    n, i = 0, text.find(sub)
    while i >= 0:
        n, i = n + 1, text.find(sub, i + 1)
    return n


mutants = parse(LIST)
if ONLY:
    unknown = set(ONLY) - {m["name"] for m in mutants}
    if unknown:
        die(f"MUTATE_ONLY names no mutant: {sorted(unknown)}")
    mutants = [m for m in mutants if m["name"] in ONLY]
if not mutants:
    die("no mutants")

# ------------------------------------------------------------ private copy
shutil.rmtree(SRC, ignore_errors=True)
shutil.rmtree(LOGS, ignore_errors=True)
os.makedirs(SRC)
os.makedirs(LOGS)
# The working tree as it is now (tracked and untracked files, no target/, no .git/),
# with fresh file times (tar -m): cargo then rebuilds whatever the last run left.
subprocess.run(f"tar -C {REPO!r} --exclude=./target --exclude=./.git -cf - . | tar -C {SRC!r} -xmf -",
               shell=True, check=True)

# Every find text exactly once, before anything is built.
stale = []
for m in mutants:
    path = os.path.join(SRC, m["file"])
    if not os.path.isfile(path):
        stale.append(f"{m['name']}: {m['file']} does not exist")
        continue
    n = occurrences(open(path).read(), m["find"])
    if n != 1:
        stale.append(f"{m['name']}: its find text occurs {n} times in {m['file']} (must be exactly once)")
    if m["find"] == m["replace"]:
        stale.append(f"{m['name']}: replacement equals the find text")
if stale:
    for s in stale:
        print(f"STALE {s}")
    die(f"{len(stale)} stale mutant(s): fix scripts/mutants.txt; nothing was run")


# ------------------------------------------------------------ build and run
def env_for(mode):
    e = dict(os.environ)
    for k in ("MASKATTN_CPU_CHECK", "MASKATTN_REQUIRE_GPU"):
        e.pop(k, None)
    e["CARGO_TARGET_DIR"] = TARGET
    e["ASAN_OPTIONS"] = ASAN
    e["RUST_BACKTRACE"] = "0"
    if mode != "plain":
        e["MASKATTN_CPU_CHECK"] = mode
    return e


def build(mode, suites, tag):
    """Builds the suites in `mode`; returns ({suite: executable} or None, seconds, log)."""
    cmd = ["cargo", "test", "--no-default-features", "--features", "cpu", "--no-run",
           "--message-format=json-diagnostic-rendered-ansi"]
    for s in sorted(suites):
        cmd += ["--lib"] if s == "lib" else ["--test", s]
    log = os.path.join(LOGS, f"{tag}.build-{mode}.log")
    t = time.time()
    p = subprocess.run(cmd, cwd=SRC, env=env_for(mode), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exes = {}
    with open(log, "w") as f:
        f.write(" ".join(cmd) + f"\n(MASKATTN_CPU_CHECK={mode})\n" + p.stderr)
        for line in p.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
                lib = "lib" in msg["target"]["kind"]
                exes["lib" if lib else msg["target"]["name"]] = msg["executable"]
            elif msg.get("reason") == "compiler-message":
                f.write(msg["message"].get("rendered") or "")
    ok = p.returncode == 0 and all(s in exes for s in suites)
    return (exes if ok else None), time.time() - t, log


ERR = re.compile(r"ERROR: AddressSanitizer|runtime error:|race on shared|not landed|"
                 r"panicked at|^kernel |^error: ")


def first_error(out):
    lines = out.splitlines()
    for i, l in enumerate(lines):
        if ERR.search(l):
            if "panicked at" in l and i + 1 < len(lines):
                l = lines[i + 1]
            l = re.sub(r"\s+", " ", l.strip())
            # Panics of the fixed tests start with the whole case's Debug: keep its ends.
            return l if len(l) <= 240 else l[:70] + " [...] " + l[-160:]
    return "(no error line; see log)"


def run_test(mode, exe, suite, test, fuzz, timeout, tag):
    """('pass' | 'fail' | 'timeout' | 'notest', seconds, reason)."""
    e = env_for(mode)
    e["MASKATTN_GPU_FUZZ_CASES"] = str(fuzz)
    log = os.path.join(LOGS, f"{tag}.{mode}.{suite}.{test.replace(':', '_')}.log")
    t = time.time()
    try:
        p = subprocess.run([exe, "--exact", test, "--test-threads=1"], cwd=SRC, env=e,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", timeout=timeout)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as x:
        out = x.stdout.decode(errors="replace") if isinstance(x.stdout, bytes) else (x.stdout or "")
        rc = None
    dt = time.time() - t
    open(log, "w").write(out)
    if rc is None:
        return "timeout", dt, f"timeout after {timeout:.0f} s"
    if rc == 0:
        if re.search(r"test result: ok\. 1 passed", out):
            return "pass", dt, ""
        return "notest", dt, "no such test (0 run)"
    if rc < 0:
        return "fail", dt, f"killed by signal {-rc} (a crash: no test reported it)"
    return "fail", dt, first_error(out)


def suites_of(tests):
    return {s for s, _, _ in tests}


# ---------------------------------------------------------------- baseline
needed = {mode: [] for mode in MODES}
for m in mutants:
    for mode in m["modes"]:
        for t in m["tests"]:
            if t not in needed[mode]:
                needed[mode].append(t)

print(f"mutate: {len(mutants)} mutants, private copy {SRC}, target {TARGET}, "
      f"MASKATTN_GPU_FUZZ_CASES={FUZZ}", flush=True)
base_time, base_fail, broken = {}, set(), False
for mode in MODES:
    if not needed[mode]:
        continue
    exes, bt, blog = build(mode, suites_of(needed[mode]), "baseline")
    if exes is None:
        print(f"baseline {mode:<9} BUILD FAILED ({bt:.0f}s): see {blog}")
        die(f"the unmutated copy does not build in mode {mode}", 1)
    print(f"baseline {mode:<9} build {bt:.0f}s", flush=True)
    for suite, test, fuzz in needed[mode]:
        st, dt, why = run_test(mode, exes[suite], suite, test, fuzz, 1800, "baseline")
        if st == "notest":
            die(f"{suite}:{test} names no test (the suite has changed?): fix scripts/mutants.txt")
        base_time[(mode, suite, test)] = dt
        if st != "pass":
            base_fail.add((mode, suite, test))
            broken = True
        print(f"baseline {mode:<9} {'PASS' if st == 'pass' else 'BASELINE FAIL'} "
              f"{suite}::{test} (fuzz {fuzz}) {dt:.1f}s{'  ' + why if why else ''}", flush=True)

# ---------------------------------------------------------------- mutants
results = []
for m in mutants:
    path = os.path.join(SRC, m["file"])
    original = open(path).read()
    t_mut = time.time()
    verdict, detail, skipped = "SURVIVED", "", []
    try:
        with open(path, "w") as f:
            f.write(original.replace(m["find"], m["replace"], 1))
        for mode in m["modes"]:
            tests = [t for t in m["tests"] if (mode, t[0], t[1]) not in base_fail]
            skipped += [f"{mode} {s}::{t}" for s, t, _ in m["tests"] if (mode, s, t) in base_fail]
            if not tests:
                continue
            exes, bt, blog = build(mode, suites_of(tests), m["name"])
            if exes is None:
                verdict, detail = "NO-BUILD", f"{mode}: see {blog}"
                break
            for suite, test, fuzz in tests:
                limit = max(120.0, 5 * base_time[(mode, suite, test)])
                st, dt, why = run_test(mode, exes[suite], suite, test, fuzz, limit, m["name"])
                if st == "notest":
                    die(f"{suite}:{test} names no test")
                if st != "pass":
                    verdict, detail = "KILLED", f"{mode} {suite}::{test}: {why}"
                    break
            if verdict == "KILLED":
                break
    finally:
        with open(path, "w") as f:
            f.write(original)
    if verdict == "SURVIVED":
        ran = [f"{mode}:{len([t for t in m['tests'] if (mode, t[0], t[1]) not in base_fail])}"
               for mode in m["modes"]]
        detail = f"every test passed ({', '.join(ran)} tests per mode)"
        if skipped:
            verdict = "UNTESTED"
            detail += f"; not run (failing at baseline): {'; '.join(skipped)}"
    dt = time.time() - t_mut
    results.append((m["name"], verdict))
    print(f"{m['name']:<28} {verdict:<9} {detail}  {dt:.0f}s", flush=True)

count = {v: sum(1 for _, x in results if x == v) for v in ("KILLED", "SURVIVED", "NO-BUILD", "UNTESTED")}
total = time.time() - T0
print(f"summary: {len(results)} mutants: {count['KILLED']} killed, {count['SURVIVED']} survived, "
      f"{count['NO-BUILD']} did not build, {count['UNTESTED']} untested; baseline "
      f"{'FAILED (' + str(len(base_fail)) + ' tests)' if broken else 'passed'}; "
      f"{total / 60:.1f} min", flush=True)
sys.exit(0 if not broken and count["KILLED"] == len(results) else 1)
PY
