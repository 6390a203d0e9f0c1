//! The runtime layers: no-driver handling on any machine; on a GPU, copies; on every
//! backend (the CPU backend always, the GPU when there is one), the tile
//! classification kernel (the kernels' mask header, run as a kernel) against the host
//! build of the same header.
#![cfg(any(feature = "cuda", feature = "cpu"))]

mod common;

#[cfg(feature = "cuda")]
use maskattn::cuda::{driver_available, Gpu};
use maskattn::tiles::{self, TileClass, TileShape};
#[cfg(feature = "cuda")]
use maskattn::Error;
use maskattn::{Kernels, Mask, VideoLayout};

#[cfg(feature = "cuda")]
#[test]
fn a_machine_without_driver_gets_an_error_not_a_panic() {
    if driver_available().is_err() {
        assert!(matches!(Gpu::new(0), Err(Error::NoDriver(_))));
        assert!(matches!(Gpu::new(7), Err(Error::NoDriver(_))));
    } else {
        // With a driver, a device ordinal that cannot exist is an error value.
        assert!(matches!(Gpu::new(1 << 20), Err(Error::NoDevice(_))));
    }
}

#[cfg(feature = "cuda")]
#[test]
fn copies_round_trip() {
    let Some(gpu) = common::gpu() else { return };
    eprintln!("device: {} {:?}", gpu.name().unwrap(), gpu.compute_capability().unwrap());
    let x: Vec<half::bf16> = (0..1000).map(|i| half::bf16::from_f32(i as f32 * 0.25 - 7.0)).collect();
    assert_eq!(gpu.download(&gpu.upload(&x).unwrap()).unwrap(), x);
    let y: Vec<half::f16> = (0..777).map(|i| half::f16::from_f32((i as f32).sin())).collect();
    assert_eq!(gpu.download(&gpu.upload(&y).unwrap()).unwrap(), y);
}

#[test]
fn device_tile_classes_equal_the_host() {
    let layout: VideoLayout = "text:35,frames:8x576,text:40".parse().unwrap();
    let masks = [
        Mask::frame_block_causal(&layout).unwrap(),
        Mask::frame_block(&layout).unwrap(),
        Mask::full_visual(&layout).unwrap(),
        Mask::causal_cross(1024, 16, 729).unwrap(),
        Mask::causal(3000, 5000).unwrap(),
        Mask::sliding_window(4097, 4097, 1000, 4).unwrap(),
        Mask::document(&[100, 1000, 7, 2000], true).unwrap(),
        Mask::from_intervals(
            300,
            (0..1000).map(|i| [i % 7, i % 7 + 50, 100 + i % 13, 100 + i % 13 + i % 150]).collect(),
        )
        .unwrap(),
    ];
    each_backend!(|backend, kernels| {
        for mask in &masks {
            for (bm, bn) in [(128, 64), (128, 128), (64, 64), (16, 96)] {
                let shape = TileShape::new(bm, bn).unwrap();
                let host = tiles::tile_classes(mask, shape);
                let dev = kernels.tile_classes(mask, shape).unwrap();
                assert_eq!(dev, host, "{backend}: {:?} with {bm}x{bn} tiles", mask.kind());
            }
        }
    });
}

/// The device build of the tile arithmetic at `i32::MAX` keys, where the last key
/// tile ends past `i32::MAX` (16.7M key tiles of 128).
#[test]
fn device_tile_classes_at_i32_max_keys() {
    let len = i32::MAX as usize;
    let mask = Mask::from_intervals(len, vec![[0, 5, i32::MAX - 300, i32::MAX], [7, i32::MAX, 0, 0]]).unwrap();
    let shape = TileShape::new(64, 128).unwrap();
    let host = tiles::tile_classes(&mask, shape);
    let n = len.div_ceil(128);
    assert_eq!(
        (host.len(), host[0], host[1], host[n - 3], host[n - 1]),
        (n, TileClass::Partial, TileClass::Partial, TileClass::Partial, TileClass::Partial)
    );
    each_backend!(|backend, kernels| {
        let dev = kernels.tile_classes(&mask, shape).unwrap();
        assert!(dev == host, "{backend}: the device's classes differ from the host's");
    });
}
