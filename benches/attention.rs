//! Criterion benches of the forward kernel on the canonical cases, each against dense
//! attention (our kernel with the plain causal or full mask on the same shape).
//! Throughput is effective FLOPs (4 * B * Hq * D * visible pairs of the case's mask),
//! so criterion's "elem/s" reads as effective FLOP/s for both lines of a group.
//! Without a GPU it says so and measures nothing.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use maskattn::cases;
use maskattn::cuda::{CaseBuffers, Gpu};

fn forward(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("benches/attention: no GPU, skipping ({e})");
            return;
        }
    };
    for name in cases::FORWARD_CASES {
        let case = cases::case(name, 32, 128).expect("canonical case");
        let mut bufs = CaseBuffers::<bf16>::new(&gpu, &case).expect("device buffers");
        let mut group = c.benchmark_group(*name);
        group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(case.flops(&case.mask) as u64));
        for (label, mask) in [("maskattn", &case.mask), ("dense_same_shape", &case.dense)] {
            let device_mask = gpu.upload_mask(mask, case.head_dim).expect("mask upload");
            group.bench_function(label, |b| {
                b.iter_custom(|iters| {
                    let ms = gpu.forward_elapsed_ms(&mut bufs, &device_mask, iters as usize).expect("launch");
                    Duration::from_secs_f64(ms / 1e3)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
