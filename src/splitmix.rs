//! The crate's one small deterministic generator (splitmix64), for inputs that must
//! be the same on every machine and every run: structured benchmark inputs and the
//! primitive conformance vectors. Not for anything random in a statistical sense
//! beyond that.

pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [-sqrt(3), sqrt(3)): mean 0, variance 1.
    #[cfg(feature = "cuda")]
    pub(crate) fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * 3f64.sqrt()
    }
}
