//! The XAttention CPU reference (`maskattn::xattention`): antidiagonal block scores
//! against an independent brute-force loop, the selection's invariants (forced
//! blocks, threshold, minimality, monotonicity in tau, ties), sparse attention
//! against dense attention, and errors on bad input.

mod common;

use maskattn::xattention::{block_scores, select_blocks, sparse_attention, BlockSelection, Tau, XAttnConfig, BLOCK};
use maskattn::{reference, Error, Mask};
use ndarray::{s, Array4};
use proptest::prelude::*;

/// Relative slack for sums taken in a different order (not a tolerance on the rule).
const EPS: f64 = 1e-12;

/// Deterministic values in [-amp, amp).
fn random_array(shape: (usize, usize, usize, usize), seed: u64, amp: f64) -> Array4<f64> {
    common::random_array(shape, seed) * amp
}

/// Token-level bottom-right causal rule, written out independently of the crate.
fn token_visible(causal: bool, len_q: usize, len_k: usize, q: usize, k: usize) -> bool {
    q < len_q && k < len_k && (!causal || k + len_q <= q + len_k)
}

/// Block (qb, kb) holds a visible token pair: the largest query against the smallest key.
fn block_visible(causal: bool, len_q: usize, len_k: usize, qb: usize, kb: usize) -> bool {
    let q_last = ((qb + 1) * BLOCK).min(len_q) - 1;
    qb * BLOCK < len_q && token_visible(causal, len_q, len_k, q_last, kb * BLOCK)
}

/// Scores computed straight from the formula, cell visibility by brute force over
/// the token pairs of each downsampled cell.
fn brute_scores(q: &Array4<f64>, k: &Array4<f64>, stride: usize, causal: bool) -> Array4<f64> {
    let (b_n, lq, hq, d) = q.dim();
    let (_, lk, hkv, _) = k.dim();
    let (nqs, nks) = (lq.div_ceil(stride), lk.div_ceil(stride));
    let mut out = Array4::zeros((b_n, hq, lq.div_ceil(BLOCK), lk.div_ceil(BLOCK)));
    let qv = |b: usize, p: usize, h: usize, c: usize| if p < lq { q[[b, p, h, c]] } else { 0.0 };
    let kv = |b: usize, p: usize, h: usize, c: usize| if p < lk { k[[b, p, h, c]] } else { 0.0 };
    for b in 0..b_n {
        for h in 0..hq {
            let hk = h / (hq / hkv);
            for i in 0..nqs {
                let mut logits = Vec::new();
                for j in 0..nks {
                    let visible = (i * stride..i * stride + stride)
                        .any(|qp| (j * stride..j * stride + stride).any(|kp| token_visible(causal, lq, lk, qp, kp)));
                    if !visible {
                        continue;
                    }
                    let mut a = 0.0;
                    for t in 0..stride {
                        for c in 0..d {
                            a += qv(b, i * stride + stride - 1 - t, h, c) * kv(b, j * stride + t, hk, c);
                        }
                    }
                    logits.push((j, a / (stride as f64 * (d as f64).sqrt())));
                }
                let m = logits.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = logits.iter().map(|x| (x.1 - m).exp()).sum();
                for (j, a) in logits {
                    out[[b, h, i * stride / BLOCK, j * stride / BLOCK]] += (a - m).exp() / z;
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct ScoreCase {
    batch: usize,
    heads_kv: usize,
    group: usize,
    dim: usize,
    len_q: usize,
    len_k: usize,
    stride: usize,
    causal: bool,
    seed: u64,
}

impl ScoreCase {
    fn qk(&self) -> (Array4<f64>, Array4<f64>) {
        let hq = self.heads_kv * self.group;
        // Amplitude 3 with a small dim gives peaked, non-uniform softmax rows.
        let q = random_array((self.batch, self.len_q, hq, self.dim), self.seed, 3.0);
        let k = random_array((self.batch, self.len_k, self.heads_kv, self.dim), self.seed ^ 0xABCD, 3.0);
        (q, k)
    }
    fn config(&self, tau: Tau) -> XAttnConfig {
        XAttnConfig { stride: self.stride, tau, causal: self.causal }
    }
}

fn arb_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1..=max, Just(BLOCK), Just(2 * BLOCK), (1..=max / 8).prop_map(|n| n * 8)]
}

fn arb_score_case(max_len: usize) -> impl Strategy<Value = ScoreCase> {
    (1..=2usize, 1..=2usize, 1..=2usize, prop_oneof![Just(4usize), Just(8)], arb_len(max_len), arb_len(max_len))
        .prop_flat_map(|(batch, heads_kv, group, dim, len_q, len_k)| {
            (prop_oneof![Just(8usize), Just(16)], any::<bool>(), any::<u64>()).prop_map(
                move |(stride, causal, seed)| ScoreCase {
                    batch,
                    heads_kv,
                    group,
                    dim,
                    len_q,
                    len_k,
                    stride,
                    causal,
                    seed,
                },
            )
        })
}

/// Scores for the selection properties: real block scores of random inputs, or
/// arbitrary non-negative scores (quantised, so with many ties) over up to 12 x 12
/// blocks. The scores of invisible blocks are random too: they must be ignored.
#[derive(Debug, Clone)]
struct SelCase {
    scores: Array4<f64>,
    len_q: usize,
    len_k: usize,
    causal: bool,
}

fn arb_sel_case() -> impl Strategy<Value = SelCase> {
    let real = arb_score_case(420).prop_map(|c| {
        let (q, k) = c.qk();
        let scores = block_scores(q.view(), k.view(), &c.config(Tau::Scalar(0.5))).unwrap();
        SelCase { scores, len_q: c.len_q, len_k: c.len_k, causal: c.causal }
    });
    let synthetic = (1..=2usize, 1..=3usize, 1..=1536usize, 1..=1536usize, any::<bool>(), any::<u64>(), any::<bool>())
        .prop_map(|(b, h, len_q, len_k, causal, seed, quantised)| {
            let shape = (b, h, len_q.div_ceil(BLOCK), len_k.div_ceil(BLOCK));
            let mut scores = random_array(shape, seed, 1.0).mapv(f64::abs);
            if quantised {
                scores.mapv_inplace(|x| (x * 4.0).floor() * 0.25);
            }
            SelCase { scores, len_q, len_k, causal }
        });
    prop_oneof![real, synthetic]
}

fn arb_tau() -> impl Strategy<Value = f64> {
    prop_oneof![0.01f64..=1.0, Just(1.0), Just(0.5), Just(0.9)]
}

fn per_head_tau(heads: usize, seed: u64) -> Tau {
    let v = random_array((1, 1, 1, heads), seed, 1.0);
    Tau::PerHead(v.iter().map(|x| 0.05 + 0.95 * x.abs()).collect())
}

/// Visible key blocks of a block row (a prefix), from the token rule.
fn visible_prefix(c: &SelCase, qb: usize) -> usize {
    (0..c.len_k.div_ceil(BLOCK)).take_while(|&kb| block_visible(c.causal, c.len_q, c.len_k, qb, kb)).count()
}

fn config(c: &SelCase, tau: Tau) -> XAttnConfig {
    XAttnConfig { stride: 16, tau, causal: c.causal }
}

/// Calls `f(b, h, qb, visible prefix V, scores row)` for every block row with V > 0.
fn for_rows(c: &SelCase, mut f: impl FnMut(usize, usize, usize, usize, Vec<f64>)) {
    let (b_n, h_n, nqb, _) = c.scores.dim();
    for b in 0..b_n {
        for h in 0..h_n {
            for qb in 0..nqb {
                let v = visible_prefix(c, qb);
                f(b, h, qb, v, c.scores.slice(s![b, h, qb, ..]).to_vec());
            }
        }
    }
}

fn forced(c: &SelCase, v: usize) -> Vec<usize> {
    if c.causal && v > 1 {
        vec![0, v - 1]
    } else {
        vec![0]
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (6) The antidiagonal formula, padding and causal alignment, against a direct loop.
    #[test]
    fn scores_match_brute_force(c in arb_score_case(300)) {
        let (q, k) = c.qk();
        let got = block_scores(q.view(), k.view(), &c.config(Tau::Scalar(0.9))).unwrap();
        let want = brute_scores(&q, &k, c.stride, c.causal);
        prop_assert_eq!(got.shape(), want.shape());
        for (g, w) in got.iter().zip(want.iter()) {
            prop_assert!((g - w).abs() <= 1e-10 * w.abs().max(1.0), "{} vs {}", g, w);
        }
    }

    /// (5) Each block row sums to its number of valid downsampled rows; invisible
    /// blocks score exactly 0; the selection's block visibility is the token rule's.
    #[test]
    fn block_rows_sum_to_valid_rows(c in arb_score_case(420)) {
        let (q, k) = c.qk();
        let scores = block_scores(q.view(), k.view(), &c.config(Tau::Scalar(0.9))).unwrap();
        let (lq, lk, st) = (c.len_q, c.len_k, c.stride);
        let sel = BlockSelection::full(c.batch, c.heads_kv * c.group, lq, lk, c.causal).unwrap();
        for qb in 0..lq.div_ceil(BLOCK) {
            let rows = (qb * BLOCK / st..((qb + 1) * BLOCK / st).min(lq.div_ceil(st)))
                .filter(|&i| (i * st..(i * st + st).min(lq)).any(|qp| token_visible(c.causal, lq, lk, qp, 0)))
                .count();
            for kb in 0..lk.div_ceil(BLOCK) {
                let brute = (qb * BLOCK..((qb + 1) * BLOCK).min(lq))
                    .any(|qp| (kb * BLOCK..((kb + 1) * BLOCK).min(lk)).any(|kp| token_visible(c.causal, lq, lk, qp, kp)));
                prop_assert_eq!(sel.is_block_visible(qb, kb), brute);
                if !brute {
                    prop_assert!(scores.slice(s![.., .., qb, kb]).iter().all(|&x| x == 0.0));
                }
            }
            for b in 0..c.batch {
                for h in 0..c.heads_kv * c.group {
                    let sum = scores.slice(s![b, h, qb, ..]).sum();
                    prop_assert!((sum - rows as f64).abs() < 1e-9, "qb {}: {} vs {} rows", qb, sum, rows);
                }
            }
        }
    }

    /// (1) Block 0 and, when causal, the diagonal block are always selected;
    /// invisible blocks never are.
    #[test]
    fn forced_blocks_present(c in arb_sel_case(), tau in arb_tau()) {
        let sel = select_blocks(c.scores.view(), &config(&c, Tau::Scalar(tau)), c.len_q, c.len_k).unwrap();
        for_rows(&c, |b, h, qb, v, _| {
            if v > 0 {
                for f in forced(&c, v) {
                    assert!(sel.is_selected(b, h, qb, f), "forced block {f} of ({b}, {h}, {qb}) missing");
                }
                if c.causal {
                    // The diagonal holds the last visible key of the block's last query.
                    let q_last = ((qb + 1) * BLOCK).min(c.len_q) - 1;
                    assert_eq!(v - 1, (q_last + c.len_k - c.len_q) / BLOCK);
                }
            }
            for kb in v..c.len_k.div_ceil(BLOCK) {
                assert!(!sel.is_selected(b, h, qb, kb), "invisible block ({qb}, {kb}) selected");
            }
        });
        prop_assert!(sel.count() <= sel.visible_blocks());
        prop_assert!(sel.density() > 0.0 && sel.density() <= 1.0);
    }

    /// (2) Kept mass >= tau * row mass, and (3) minimality: without the last block
    /// added (the smallest selected non-forced score, ties: the highest index) the
    /// kept mass falls below it. Per-head tau half of the time.
    #[test]
    fn kept_mass_reaches_tau_minimally(c in arb_sel_case(), tau in arb_tau(), per_head in any::<bool>(), seed in any::<u64>()) {
        let heads = c.scores.dim().1;
        let tau = if per_head { per_head_tau(heads, seed) } else { Tau::Scalar(tau) };
        let sel = select_blocks(c.scores.view(), &config(&c, tau.clone()), c.len_q, c.len_k).unwrap();
        for_rows(&c, |b, h, qb, v, row| {
            if v == 0 {
                return;
            }
            let mass: f64 = row[..v].iter().sum();
            let required = tau.for_head(h) * mass;
            let kept: f64 = (0..v).filter(|&kb| sel.is_selected(b, h, qb, kb)).map(|kb| row[kb]).sum();
            assert!(kept >= required - EPS * mass, "kept {kept} < required {required}");
            let forced = forced(&c, v);
            let added: Vec<usize> = (0..v).filter(|&kb| sel.is_selected(b, h, qb, kb) && !forced.contains(&kb)).collect();
            if let Some(&last) = added.iter().min_by(|&&x, &&y| row[x].partial_cmp(&row[y]).unwrap().then(y.cmp(&x))) {
                assert!(kept - row[last] < required + EPS * mass, "block {last} was not needed: {} >= {required}", kept - row[last]);
            } else {
                // Only forced blocks: fine whatever their mass.
            }
        });
    }

    /// (4) Selection is monotone in tau.
    #[test]
    fn selection_monotone_in_tau(c in arb_sel_case(), t1 in arb_tau(), t2 in arb_tau()) {
        let (lo, hi) = if t1 <= t2 { (t1, t2) } else { (t2, t1) };
        let a = select_blocks(c.scores.view(), &config(&c, Tau::Scalar(lo)), c.len_q, c.len_k).unwrap();
        let b = select_blocks(c.scores.view(), &config(&c, Tau::Scalar(hi)), c.len_q, c.len_k).unwrap();
        for (x, y) in a.as_bytes().iter().zip(b.as_bytes()) {
            prop_assert!(x <= y, "selected at tau {} but not at tau {}", lo, hi);
        }
        prop_assert!(a.count() <= b.count());
    }

    /// (7) Blocks are taken in descending score, ties to the lower index: a selected
    /// non-forced block implies every non-forced block before it in that order.
    #[test]
    fn selection_follows_score_order_ties_low(c in arb_sel_case(), tau in arb_tau()) {
        let sel = select_blocks(c.scores.view(), &config(&c, Tau::Scalar(tau)), c.len_q, c.len_k).unwrap();
        for_rows(&c, |b, h, qb, v, row| {
            let forced = forced(&c, v);
            let free: Vec<usize> = (0..v).filter(|kb| !forced.contains(kb)).collect();
            for &x in &free {
                for &y in &free {
                    let x_first = row[x] > row[y] || (row[x] == row[y] && x < y);
                    if x_first && sel.is_selected(b, h, qb, y) {
                        assert!(sel.is_selected(b, h, qb, x), "({b},{h},{qb}): {y} selected before {x}: {row:?}");
                    }
                }
            }
        });
    }

    /// (8) With every block selected, sparse attention is dense attention under the mask.
    #[test]
    fn full_selection_is_dense_attention(c in arb_score_case(200), window in 1usize..64, which in 0..3usize) {
        let (q, k) = c.qk();
        let v = random_array(k.dim(), c.seed ^ 0x77, 1.0);
        let mask = match (c.causal, which) {
            (true, _) => Mask::causal(c.len_q, c.len_k).unwrap(),
            (false, 0) => Mask::sliding_window(c.len_q, c.len_k, window, 2).unwrap(),
            (false, _) => Mask::full(c.len_q, c.len_k).unwrap(),
        };
        let sel = BlockSelection::full(c.batch, c.heads_kv * c.group, c.len_q, c.len_k, c.causal).unwrap();
        prop_assert!((sel.density() - 1.0).abs() < 1e-15);
        let got = sparse_attention(q.view(), k.view(), v.view(), &mask, &sel, None).unwrap();
        let want = reference::attention(q.view(), k.view(), v.view(), &mask, None).unwrap();
        prop_assert_eq!(&got.out, &want.out);
        prop_assert_eq!(&got.lse, &want.lse);
    }

    /// Sparse attention with a real XAttention selection against a direct loop per batch.
    #[test]
    fn sparse_attention_matches_direct_loop(c in arb_score_case(200), tau in arb_tau()) {
        let (q, k) = c.qk();
        let v = random_array(k.dim(), c.seed ^ 0x99, 1.0);
        let cfg = c.config(Tau::Scalar(tau));
        let sel = select_blocks(block_scores(q.view(), k.view(), &cfg).unwrap().view(), &cfg, c.len_q, c.len_k).unwrap();
        let mask = if c.causal { Mask::causal(c.len_q, c.len_k).unwrap() } else { Mask::full(c.len_q, c.len_k).unwrap() };
        let got = sparse_attention(q.view(), k.view(), v.view(), &mask, &sel, None).unwrap();
        let hq = c.heads_kv * c.group;
        let scale = 1.0 / (c.dim as f64).sqrt();
        for b in 0..c.batch {
            for h in 0..hq {
                for i in 0..c.len_q {
                    let keys: Vec<usize> = (0..c.len_k)
                        .filter(|&j| token_visible(c.causal, c.len_q, c.len_k, i, j) && sel.is_selected(b, h, i / BLOCK, j / BLOCK))
                        .collect();
                    let sc: Vec<f64> = keys.iter().map(|&j| (0..c.dim).map(|x| q[[b, i, h, x]] * k[[b, j, h / c.group, x]]).sum::<f64>() * scale).collect();
                    let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                    if keys.is_empty() {
                        prop_assert_eq!(got.lse[[b, h, i]], f64::NEG_INFINITY);
                    } else {
                        prop_assert!((got.lse[[b, h, i]] - (m + z.ln())).abs() < 1e-9);
                    }
                    for x in 0..c.dim {
                        let o: f64 = keys.iter().zip(&sc).map(|(&j, s)| (s - m).exp() / z * v[[b, j, h / c.group, x]]).sum();
                        prop_assert!((got.out[[b, i, h, x]] - o).abs() < 1e-9);
                    }
                }
            }
        }
    }
}

/// (7) Equal scores go to the lower index.
#[test]
fn ties_go_to_the_lower_index() {
    // One block row over 5 key blocks, non-causal: block 0 forced (0.1), then four 0.225s.
    let mut scores = Array4::zeros((1, 1, 1, 5));
    scores.slice_mut(s![0, 0, 0, ..]).assign(&ndarray::arr1(&[0.1, 0.225, 0.225, 0.225, 0.225]));
    let pick = |tau: f64| {
        let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(tau), causal: false };
        let sel = select_blocks(scores.view(), &cfg, 100, 600).unwrap();
        sel.row(0, 0, 0).to_vec()
    };
    assert_eq!(pick(0.05), [1, 0, 0, 0, 0]);
    assert_eq!(pick(0.3), [1, 1, 0, 0, 0]);
    assert_eq!(pick(0.5), [1, 1, 1, 0, 0]);
    assert_eq!(pick(0.6), [1, 1, 1, 1, 0]);
    assert_eq!(pick(1.0), [1, 1, 1, 1, 1]);
    // Causal, Lq == Lk: query block 3 sees blocks 0..=3; block 3 (diagonal) is forced.
    let mut scores = Array4::zeros((1, 1, 4, 4));
    scores.slice_mut(s![0, 0, 3, ..]).assign(&ndarray::arr1(&[1.0, 2.0, 2.0, 1.0]));
    let cfg = XAttnConfig { stride: 16, tau: Tau::Scalar(0.6), causal: true };
    let sel = select_blocks(scores.view(), &cfg, 512, 512).unwrap();
    assert_eq!(sel.row(0, 0, 3), [1, 1, 0, 1]);
    // Query block 0 sees only block 0; the rest of its row is never selected.
    assert_eq!(sel.row(0, 0, 0), [1, 0, 0, 0]);
}

/// Bottom-right alignment when Lq != Lk, where `ceil(Lk/S) - ceil(Lq/S)` would differ.
#[test]
fn causal_alignment_is_token_exact() {
    // Lq = 129, Lk = 136, S = 8: query 127 sees keys up to 134, so block (0, 1) is
    // visible and is query block 0's diagonal.
    let sel = BlockSelection::full(1, 1, 129, 136, true).unwrap();
    assert!(sel.is_block_visible(0, 1));
    let q = random_array((1, 129, 1, 4), 3, 1.0);
    let k = random_array((1, 136, 1, 4), 4, 1.0);
    let cfg = XAttnConfig { stride: 8, tau: Tau::Scalar(0.01), causal: true };
    let scores = block_scores(q.view(), k.view(), &cfg).unwrap();
    assert!(scores[[0, 0, 0, 1]] > 0.0);
    let sel = select_blocks(scores.view(), &cfg, 129, 136).unwrap();
    assert!(sel.is_selected(0, 0, 0, 0) && sel.is_selected(0, 0, 0, 1));
    // Lq > Lk: the first block row sees nothing and selects nothing.
    let sel = BlockSelection::full(1, 1, 300, 100, true).unwrap();
    assert_eq!(sel.row(0, 0, 0), [0]);
    assert_eq!(sel.row(0, 0, 2), [1]);
}

/// Half-precision inputs are widened exactly; results equal the f64 path.
#[test]
fn element_types_widen_exactly() {
    let q = random_array((2, 150, 4, 8), 11, 2.0).mapv(half::bf16::from_f64);
    let k = random_array((2, 170, 2, 8), 12, 2.0).mapv(half::bf16::from_f64);
    let cfg = XAttnConfig { stride: 16, tau: Tau::PerHead(vec![0.9, 0.5, 1.0, 0.1]), causal: true };
    let a = block_scores(q.view(), k.view(), &cfg).unwrap();
    let b = block_scores(q.mapv(f64::from).view(), k.mapv(f64::from).view(), &cfg).unwrap();
    assert_eq!(a, b);
    let q32 = q.mapv(f32::from);
    let k32 = k.mapv(f32::from);
    assert_eq!(block_scores(q32.view(), k32.view(), &cfg).unwrap(), a);
}

/// (9) Bad configurations and shapes are errors, not panics.
#[test]
fn bad_input_is_an_error() {
    let q = Array4::<f32>::zeros((1, 40, 2, 8));
    let k = Array4::<f32>::zeros((1, 50, 1, 8));
    let cfg = |stride, tau| XAttnConfig { stride, tau, causal: true };
    let is_param = |r: Result<Array4<f64>, Error>| matches!(r, Err(Error::InvalidParameter { .. }));
    for stride in [0, 1, 4, 12, 32, 64, 128] {
        assert!(is_param(block_scores(q.view(), k.view(), &cfg(stride, Tau::Scalar(0.9)))), "stride {stride}");
    }
    for tau in [0.0, -0.5, 1.0000001, 2.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(is_param(block_scores(q.view(), k.view(), &cfg(8, Tau::Scalar(tau)))), "tau {tau}");
        assert!(cfg(8, Tau::PerHead(vec![0.5, tau])).validate().is_err());
    }
    assert!(cfg(8, Tau::PerHead(vec![])).validate().is_err());
    assert!(cfg(8, Tau::PerHead(vec![0.5, 0.5])).validate().is_ok());
    assert!(is_param(block_scores(q.view(), k.view(), &cfg(8, Tau::PerHead(vec![0.5])))));
    assert!(is_param(block_scores(q.view(), k.view(), &cfg(8, Tau::PerHead(vec![0.5; 3])))));
    assert!(cfg(16, Tau::Scalar(1.0)).validate().is_ok());

    let ok = cfg(8, Tau::Scalar(0.9));
    let is_shape = |r: Result<Array4<f64>, Error>| matches!(r, Err(Error::Shape(_)));
    assert!(is_shape(block_scores(q.view(), Array4::<f32>::zeros((1, 50, 1, 4)).view(), &ok)));
    assert!(is_shape(block_scores(q.view(), Array4::<f32>::zeros((2, 50, 1, 8)).view(), &ok)));
    assert!(is_shape(block_scores(q.view(), Array4::<f32>::zeros((1, 50, 3, 8)).view(), &ok)));
    assert!(is_shape(block_scores(Array4::<f32>::zeros((1, 0, 2, 8)).view(), k.view(), &ok)));
    assert!(is_shape(block_scores(q.view(), Array4::<f32>::zeros((1, 0, 1, 8)).view(), &ok)));

    let scores = block_scores(q.view(), k.view(), &ok).unwrap();
    assert!(select_blocks(scores.view(), &ok, 40, 50).is_ok());
    assert!(matches!(select_blocks(scores.view(), &ok, 40, 129), Err(Error::Shape(_))));
    assert!(matches!(select_blocks(scores.view(), &ok, 200, 50), Err(Error::Shape(_))));
    assert!(select_blocks(scores.view(), &ok, 0, 50).is_err());
    assert!(select_blocks(scores.view(), &cfg(8, Tau::PerHead(vec![0.5; 3])), 40, 50).is_err());
    assert!(select_blocks(scores.view(), &cfg(4, Tau::Scalar(0.5)), 40, 50).is_err());
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        let mut s2 = scores.clone();
        s2[[0, 1, 0, 0]] = bad;
        assert!(matches!(select_blocks(s2.view(), &ok, 40, 50), Err(Error::InvalidParameter { .. })));
    }
    let empty = Array4::<f64>::zeros((0, 2, 1, 1));
    assert!(select_blocks(empty.view(), &ok, 40, 50).is_err());

    assert!(BlockSelection::full(0, 1, 10, 10, true).is_err());
    assert!(BlockSelection::full(1, 1, 10, 0, true).is_err());
    assert!(BlockSelection::full(usize::MAX, usize::MAX, 1 << 20, 1 << 20, false).is_err());
    assert!(BlockSelection::from_bytes(1, 1, 256, 256, true, vec![1, 0, 1, 1]).is_ok());
    assert!(BlockSelection::from_bytes(1, 1, 256, 256, true, vec![1, 1, 1, 1]).is_err()); // above the diagonal
    assert!(BlockSelection::from_bytes(1, 1, 256, 256, false, vec![1, 2, 1, 1]).is_err());
    assert!(BlockSelection::from_bytes(1, 1, 256, 256, false, vec![1, 1, 1]).is_err());
    let sel = BlockSelection::full(1, 2, 40, 50, true).unwrap();
    assert!(!sel.is_selected(1, 0, 0, 0) && !sel.is_selected(0, 2, 0, 0) && !sel.is_selected(0, 0, 1, 0));

    let v = k.clone();
    let mask = Mask::causal(40, 50).unwrap();
    assert!(sparse_attention(q.view(), k.view(), v.view(), &mask, &sel, None).is_ok());
    for wrong in [
        BlockSelection::full(2, 2, 40, 50, true).unwrap(),
        BlockSelection::full(1, 1, 40, 50, true).unwrap(),
        BlockSelection::full(1, 2, 41, 50, true).unwrap(),
    ] {
        assert!(matches!(sparse_attention(q.view(), k.view(), v.view(), &mask, &wrong, None), Err(Error::Shape(_))));
    }
    assert!(sparse_attention(q.view(), k.view(), v.view(), &Mask::causal(40, 51).unwrap(), &sel, None).is_err());
    assert!(sparse_attention(q.view(), k.view(), v.view(), &mask, &sel, Some(f64::NAN)).is_err());
}
