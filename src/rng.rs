//! The one seeded generator of l2d's own randomness (weights of `l2d init`,
//! task items, data shuffles, batch order, bootstrap resamples): fully
//! specified, so output bytes depend on the seed alone, not on a crate's or
//! libtorch's version, the device or the thread count.

/// SplitMix64: one `u64` of state, full period.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator whose first output mixes `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream per `label`, so adding a tensor does not shift the others.
    pub(crate) fn for_label(seed: u64, label: &str) -> Self {
        let mut mixer = Self(seed ^ fnv1a(label.as_bytes()));
        Self(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` by multiply-shift (bias below 2^-32 for any realistic `n`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `lo..=hi` by modulo (bias about (hi - lo + 1) / 2^64).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// One element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }

    /// Two standard normal samples (Box-Muller).
    pub(crate) fn normal_pair(&mut self) -> (f64, f64) {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - self.next_f64()).ln()).sqrt();
        let theta = std::f64::consts::TAU * self.next_f64();
        (r * theta.cos(), r * theta.sin())
    }

    /// `n` standard normals: the pairs of [`SplitMix64::normal_pair`] in order
    /// (an odd `n` leaves the last pair's second value unused).
    pub(crate) fn normals(&mut self, n: usize) -> impl Iterator<Item = f64> + '_ {
        std::iter::from_fn(move || {
            let (a, b) = self.normal_pair();
            Some([a, b])
        })
        .flatten()
        .take(n)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}
