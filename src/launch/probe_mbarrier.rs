//! The mbarrier's phase rules, conformance-tested: csrc/hopper_probe_mbarrier.cu runs
//! scripts of `init`, `arrive`, `arrive.expect_tx`, `expect_tx`, `complete_tx` and
//! `test_wait.parity` on one barrier, and every answer of a test is predicted here by
//! hand from the PTX ISA ("Parallel Synchronization and Communication Instructions:
//! mbarrier", sections "Phase Completion of the mbarrier object" and "Tracking
//! asynchronous operations by the mbarrier object"): a phase completes when its pending
//! arrival count and its tx-count both reach zero; the next phase then starts with the
//! expected arrival count and a zero tx-count; `test_wait.parity` with parity P is true
//! once the phase of parity P has completed, i.e. while the current phase's parity is
//! not P. On the CPU backend always, on an sm_90 GPU when there is one.

use super::{kernel_args, Backend, KernelLaunch};
use crate::error::Result;

kernel_args! {
    /// `maskattn_probe_hopper_mbarrier`: see csrc/hopper_probe_mbarrier.cu.
    ProbeMbarrierArgs {
        ops: u64,
        n_ops: i32,
        out: u64,
    }
}

/// One operation of a script, by the one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Init(u32),
    Arrive,
    ArriveExpectTx(u32),
    ExpectTx(u32),
    CompleteTx(u32),
    /// test_wait.parity with this parity, and the answer the ISA gives.
    Test(u32, bool),
}

fn encode(script: &[Op]) -> Vec<i32> {
    script
        .iter()
        .flat_map(|op| match *op {
            Op::Init(n) => [0, n as i32],
            Op::Arrive => [1, 0],
            Op::ArriveExpectTx(b) => [2, b as i32],
            Op::ExpectTx(b) => [3, b as i32],
            Op::CompleteTx(b) => [4, b as i32],
            Op::Test(p, _) => [5, p as i32],
        })
        .collect()
}

/// Runs a script on `b`; the answers of its tests in order.
fn probe<B: Backend>(b: &B, script: &[Op]) -> Result<Vec<bool>> {
    let ops = b.upload(encode(script).as_slice())?;
    let tests = script.iter().filter(|op| matches!(op, Op::Test(..))).count();
    let mut out = b.zeros::<u32>(tests.max(1))?;
    {
        let (ops_addr, _ops) = b.addr(&ops);
        let (out_addr, _out) = b.addr_mut(&mut out);
        let launch = KernelLaunch {
            kernel: "maskattn_probe_hopper_mbarrier".into(),
            grid: (1, 1, 1),
            block: (1, 1, 1),
            smem_bytes: 8,
            params: ProbeMbarrierArgs { ops: ops_addr, n_ops: script.len() as i32, out: out_addr },
        };
        // SAFETY: ops holds two words per operation, out one per test, and the
        // accesses are held until after the launch.
        unsafe { b.launch(&launch) }?;
    }
    Ok(b.download(&out)?.into_iter().take(tests).map(|w| w != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Op::*;

    /// The scripts, each answer worked out by hand from the ISA's rules (the comment
    /// after a test gives the barrier's state: phase, pending arrivals, tx-count).
    fn script() -> Vec<Op> {
        vec![
            // Arrivals alone.
            Init(2),
            Test(0, false), // phase 0: 2 pending
            Arrive,
            Test(0, false), // 1 pending
            Arrive,
            Test(0, true), // phase 0 complete, phase 1: 2 pending
            Test(1, false),
            // Transactions hold a phase whose arrivals are all in.
            ArriveExpectTx(64),
            Arrive,
            Test(1, false), // 0 pending, tx 64
            CompleteTx(32),
            Test(1, false), // tx 32
            CompleteTx(32),
            Test(1, true), // phase 1 complete; phase 2
            Test(0, false),
            // Bytes may complete before they are expected: tx goes negative.
            CompleteTx(16),
            ArriveExpectTx(16),
            Test(0, false), // 1 pending, tx 0
            Arrive,
            Test(0, true), // phase 2 complete; phase 3
            // expect_tx without an arrival.
            ExpectTx(48),
            Arrive,
            Arrive,
            Test(1, false), // 0 pending, tx 48
            CompleteTx(48),
            Test(1, true), // phase 3 complete; phase 4, parity 0 again
            Test(0, false),
            // A new init starts over at phase 0.
            Init(1),
            Test(0, false),
            Test(1, true), // "the phase of parity 1" read as complete: the current is 0
            Arrive,
            Test(0, true),
            Test(1, false),
        ]
    }

    fn expected(script: &[Op]) -> Vec<bool> {
        script.iter().filter_map(|op| if let Test(_, want) = *op { Some(want) } else { None }).collect()
    }

    /// A second, mechanical reading of the same rules: the table and it must agree,
    /// and a reading that forgets the tx-count must not (the table can fail).
    fn model(script: &[Op], count_tx: bool) -> Vec<bool> {
        let (mut expected_count, mut pending, mut tx, mut phase) = (0u32, 0u32, 0i64, 0u32);
        let mut answers = Vec::new();
        let complete = |pending: &mut u32, tx: i64, phase: &mut u32, expected_count: u32| {
            if *pending == 0 && (tx == 0 || !count_tx) {
                *phase += 1;
                *pending = expected_count;
                return true;
            }
            false
        };
        for op in script {
            match *op {
                Init(n) => (expected_count, pending, tx, phase) = (n, n, 0, 0),
                Arrive | ArriveExpectTx(_) => {
                    if let ArriveExpectTx(b) = *op {
                        tx += i64::from(b);
                    }
                    pending -= 1;
                    if complete(&mut pending, tx, &mut phase, expected_count) {
                        tx = 0;
                    }
                }
                ExpectTx(b) => tx += i64::from(b),
                CompleteTx(b) => {
                    tx -= i64::from(b);
                    if complete(&mut pending, tx, &mut phase, expected_count) {
                        tx = 0;
                    }
                }
                Test(p, _) => answers.push(phase % 2 != p),
            }
        }
        answers
    }

    #[test]
    fn hopper_mbarrier_table_is_the_isa_rules_and_can_fail() {
        let s = script();
        assert_eq!(model(&s, true), expected(&s));
        assert_ne!(model(&s, false), expected(&s), "a reading without tx-counts must disagree with the table");
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_backend_hopper_mbarrier_phases_match_the_isa() {
        let s = script();
        for (schedule, cpu) in crate::launch::cpu_backends_per_schedule() {
            assert_eq!(probe(&cpu, &s).unwrap(), expected(&s), "CPU backend ({schedule:?})");
        }
    }

    /// The same script on an sm_90 GPU: the hardware against the same table.
    #[cfg(feature = "cuda")]
    #[test]
    fn gpu_hopper_mbarrier_phases_match_the_isa() {
        let Some(gpu) = crate::launch::test_gpu("mbarrier conformance test", true) else { return };
        let s = script();
        assert_eq!(probe(&gpu, &s).unwrap(), expected(&s), "GPU");
    }
}
