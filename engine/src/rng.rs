//! The reproducibility RNG: each row's random draws depend only on the
//! spec's seed, the row's key and the purpose of the draw.
//!
//! Architecture invariant: never on the thread, the batch size or the
//! server, so the same request gives the same bytes anywhere and for any
//! batching (DoExchange streams, dataset shards and offline conversion key
//! rows by their index in the stream / dataset).

/// The per-row random number stream: SplitMix64 seeded from the spec's
/// seed, the row key and the purpose of the draws, so each step's draws are
/// independent of the others and of how rows are batched.
#[derive(Debug, Clone)]
pub(crate) struct RowRng(u64);

/// Purposes of the draws, so adding one step never shifts another's numbers.
pub(crate) const CROP_STREAM: u64 = 1;
pub(crate) const FLIP_STREAM: u64 = 2;

impl RowRng {
    /// The stream for `purpose` of the row keyed `key` under `seed`.
    pub(crate) fn new(seed: u64, key: u64, purpose: u64) -> Self {
        Self(mix(seed ^ mix(key ^ mix(purpose))))
    }

    /// The next 64 random bits (SplitMix64).
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `low..=high` (f64), as torch's `uniform_(low, high)`.
    pub(crate) fn uniform_in(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n` > 0), unbiased (Lemire's method with rejection).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// SplitMix64's output function (a bijective 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_is_uniform_enough() {
        let mut rng = RowRng::new(1, 2, 3);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[rng.below(3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(rng.below(1), 0);
    }
}
