//! The reference backward: its gradients against finite differences of the
//! reference forward, fully masked rows, and shape errors. (The kernels' backward
//! against this reference: tests/kernels_backward.rs.)

use maskattn::reference::{self, AttentionOutput, Gradients};
use maskattn::tiles::TileShape;
use maskattn::{Error, Mask};
use ndarray::{Array3, Array4};
use proptest::collection::vec;
use proptest::prelude::*;

/// A test problem: shapes, mask, scale and a seed for the tensor values.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads_q: usize,
    heads_kv: usize,
    head_dim: usize,
    mask: Mask,
    scale: Option<f64>,
    seed: u64,
}

/// Q, K, V, dO with entries uniform in [-1, 1) (splitmix64, so a case is reproducible
/// from its seed).
struct Tensors {
    q: Array4<f64>,
    k: Array4<f64>,
    v: Array4<f64>,
    d_out: Array4<f64>,
}

impl Case {
    fn tensors(&self) -> Tensors {
        let mut state = self.seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let (b, d) = (self.batch, self.head_dim);
        let (lq, lk) = (self.mask.len_q(), self.mask.len_k());
        let mut fill = |shape: (usize, usize, usize, usize)| Array4::from_shape_simple_fn(shape, &mut next);
        Tensors {
            q: fill((b, lq, self.heads_q, d)),
            k: fill((b, lk, self.heads_kv, d)),
            v: fill((b, lk, self.heads_kv, d)),
            d_out: fill((b, lq, self.heads_q, d)),
        }
    }
}

/// A random canonical-or-not row over `lk` keys: empty with probability 1/4, else two
/// sorted (possibly empty, possibly touching) intervals.
fn random_row(lk: usize) -> impl Strategy<Value = [i32; 4]> {
    prop_oneof![
        1 => Just([0; 4]),
        3 => proptest::array::uniform4(0..=lk as i32).prop_map(|mut a| {
            a.sort_unstable();
            a
        }),
    ]
}

fn random_intervals(max_q: usize, max_k: usize) -> impl Strategy<Value = Mask> {
    (1..=max_q, 1..=max_k).prop_flat_map(|(lq, lk)| {
        vec(random_row(lk), lq).prop_map(move |rows| Mask::from_intervals(lk, rows).expect("sorted rows are valid"))
    })
}

fn case(
    mask: impl Strategy<Value = Mask>,
    max_batch: usize,
    heads: &'static [(usize, usize)],
    max_d: usize,
) -> impl Strategy<Value = Case> {
    (
        mask,
        1..=max_batch,
        proptest::sample::select(heads),
        1..=max_d,
        prop_oneof![Just(None), (0.1f64..1.5).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(|(mask, batch, (heads_q, heads_kv), head_dim, scale, seed)| Case {
            batch,
            heads_q,
            heads_kv,
            head_dim,
            mask,
            scale,
            seed,
        })
}

/// `sum(O * dO)`: the loss whose gradient `attention_backward` computes for `d_out`.
fn loss(q: &Array4<f64>, k: &Array4<f64>, v: &Array4<f64>, d_out: &Array4<f64>, c: &Case) -> f64 {
    let fwd = reference::attention(q.view(), k.view(), v.view(), &c.mask, c.scale).unwrap();
    (&fwd.out * d_out).sum()
}

/// Central differences of `loss` in every entry of one of Q, K, V (`which`).
fn numeric_grad(t: &Tensors, c: &Case, which: usize, h: f64) -> Array4<f64> {
    let base = [&t.q, &t.k, &t.v][which];
    let mut grad = Array4::zeros(base.raw_dim());
    for (idx, g) in grad.indexed_iter_mut() {
        let at = |delta: f64| {
            let mut x = [t.q.clone(), t.k.clone(), t.v.clone()];
            x[which][idx] += delta;
            loss(&x[0], &x[1], &x[2], &t.d_out, c)
        };
        *g = (at(h) - at(-h)) / (2.0 * h);
    }
    grad
}

fn forward_and_backward(c: &Case, t: &Tensors) -> (AttentionOutput, Gradients) {
    let fwd = reference::attention(t.q.view(), t.k.view(), t.v.view(), &c.mask, c.scale).unwrap();
    let g = reference::attention_backward(t.q.view(), t.k.view(), t.v.view(), &fwd, t.d_out.view(), &c.mask, c.scale)
        .unwrap();
    (fwd, g)
}

fn all_finite(g: &Gradients) -> bool {
    [&g.dq, &g.dk, &g.dv].iter().all(|a| a.iter().all(|x| x.is_finite()))
}

/// Tiny masks for finite differences, many with rows that see no key.
fn tiny_mask() -> impl Strategy<Value = Mask> {
    prop_oneof![
        2 => random_intervals(8, 8),
        1 => (1..=8usize, 1..=8usize).prop_map(|(q, k)| Mask::causal(q, k).unwrap()),
        1 => (1..=8usize, 1..=8usize, 1..=4usize, 0..=2usize)
            .prop_map(|(q, k, w, s)| Mask::sliding_window(q, k, w, s).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) The closed form is the gradient of the forward: against central
    /// differences of `sum(O * dO)` with step h = 1e-5 in f64. Error of the
    /// difference quotient: truncation h^2/6 |L'''| ~ 2e-11 |L'''| plus rounding
    /// eps |L| / h ~ 2e-11 |L|; with entries in [-1, 1), D <= 4, scale <= 1.5 and
    /// L <= 8 both |L| and |L'''| stay below ~100, so the error is ~1e-9 at worst
    /// (1e-8 to be safe). The tolerance 1e-6 (1 + |g|) leaves two orders of
    /// magnitude above that while a wrong term (the D_i correction, a missing scale,
    /// a GQA head mix-up) is off by 1e-2 or more.
    #[test]
    fn reference_matches_finite_differences(
        c in case(tiny_mask(), 2, &[(1, 1), (2, 1), (4, 2)], 4)
    ) {
        let t = c.tensors();
        let (_, g) = forward_and_backward(&c, &t);
        for (which, (name, analytic)) in [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv)].into_iter().enumerate() {
            let numeric = numeric_grad(&t, &c, which, 1e-5);
            for ((idx, &a), &n) in analytic.indexed_iter().zip(numeric.iter()) {
                prop_assert!((a - n).abs() <= 1e-6 * (1.0 + a.abs()),
                    "{name}{idx:?}: analytic {a} vs finite difference {n}");
            }
        }
    }

    /// (b) Rows that see no key: no NaN anywhere, their dq is exactly 0, and keys that
    /// no row sees get exactly 0 dk and dv.
    #[test]
    fn masked_rows_give_zero_not_nan(
        c in case(prop_oneof![
            (1..=40usize, 1..=40usize).prop_map(|(a, b)| Mask::causal(a.max(b), a.min(b)).unwrap()),
            (1..=40usize, 1..=40usize, any::<u64>()).prop_map(|(lq, lk, bits)| {
                // Rows whose bit is set see nothing; the others see a middle range.
                let rows = (0..lq).map(|i| if bits >> (i % 64) & 1 == 1 { [0; 4] } else {
                    [(i % lk) as i32 / 2, (i % lk) as i32 + 1, 0, 0]
                }).collect();
                Mask::from_intervals(lk, rows).unwrap()
            }),
            (1..=40usize, 1..=40usize).prop_map(|(lq, lk)| Mask::from_intervals(lk, vec![[0; 4]; lq]).unwrap()),
        ], 2, &[(1, 1), (2, 1)], 8),
    ) {
        let t = c.tensors();
        let (fwd, g) = forward_and_backward(&c, &t);
        let (lq, lk) = (c.mask.len_q(), c.mask.len_k());
        prop_assert!(all_finite(&g));
        for i in (0..lq).filter(|&i| c.mask.row_visible(i) == 0) {
            for b in 0..c.batch {
                for h in 0..c.heads_q {
                    prop_assert_eq!(fwd.lse[[b, h, i]], f64::NEG_INFINITY);
                    prop_assert!(g.dq.slice(ndarray::s![b, i, h, ..]).iter().all(|&x| x == 0.0));
                }
            }
        }
        for j in (0..lk).filter(|&j| (0..lq).all(|i| !c.mask.is_visible(i, j))) {
            prop_assert!(g.dk.slice(ndarray::s![.., j, .., ..]).iter().all(|&x| x == 0.0));
            prop_assert!(g.dv.slice(ndarray::s![.., j, .., ..]).iter().all(|&x| x == 0.0));
        }
    }

    /// (c) Any one wrong dimension is an `Error::Shape`, never a panic.
    #[test]
    fn shape_errors(
        c in case(random_intervals(12, 12), 2, &[(1, 1), (2, 1)], 4),
        target in 0..7usize,
        axis in 0..4usize,
    ) {
        let t = c.tensors();
        let (mut fwd, _) = forward_and_backward(&c, &t);
        let (mut q, mut k, mut v, mut d_out) = (t.q, t.k, t.v, t.d_out);
        let mut mask = c.mask.clone();
        let grow4 = |a: &Array4<f64>| {
            let mut dims = <[usize; 4]>::try_from(a.shape()).unwrap();
            dims[axis] += 1;
            Array4::<f64>::zeros(dims)
        };
        match target {
            0 => q = grow4(&q),
            1 => k = grow4(&k),
            2 => v = grow4(&v),
            3 => fwd.out = grow4(&fwd.out),
            4 => d_out = grow4(&d_out),
            5 => {
                let mut dims = <[usize; 3]>::try_from(fwd.lse.shape()).unwrap();
                dims[axis % 3] += 1;
                fwd.lse = Array3::zeros(dims);
            }
            _ => {
                // A mask one row or one key longer than the tensors.
                let (lq, lk) = (mask.len_q(), mask.len_k());
                mask = if axis % 2 == 0 { Mask::causal(lq + 1, lk) } else { Mask::causal(lq, lk + 1) }.unwrap();
            }
        }
        let r = reference::attention_backward(q.view(), k.view(), v.view(), &fwd, d_out.view(), &mask, c.scale);
        prop_assert!(matches!(r, Err(Error::Shape(_))), "reference: {:?}", r.map(|_| ()));
    }
}

/// Parameters other than shapes: a zero tile size and a non-finite scale.
#[test]
fn parameter_errors() {
    let mask = Mask::causal(5, 5).unwrap();
    let x = Array4::<f64>::from_shape_fn((1, 5, 1, 2), |(_, i, _, d)| (i + d) as f64 * 0.1);
    let fwd = reference::attention(x.view(), x.view(), x.view(), &mask, None).unwrap();
    for (m, n) in [(0, 16), (16, 0), (1 << 31, 16)] {
        assert!(matches!(TileShape::new(m, n), Err(Error::InvalidParameter { .. })), "{m}x{n}");
    }
    let r = reference::attention_backward(x.view(), x.view(), x.view(), &fwd, x.view(), &mask, Some(f64::NAN));
    assert!(matches!(r, Err(Error::InvalidParameter { what: "scale", .. })));
}
