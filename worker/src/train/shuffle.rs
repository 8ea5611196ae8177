//! The order in which an epoch visits the training rows.
//!
//! The order comes from a small generator of its own rather than from libtorch's, so it depends
//! only on the seed and the epoch. It is the same on every device, whatever else draws random
//! numbers (weight initialisation, dropout).

/// SplitMix64's increment per step: 2^64 divided by the golden ratio, rounded to an odd number.
const SPLITMIX_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Returns a permutation of `0..num_rows`, the same for the same `seed` and `epoch`.
pub(super) fn permutation(num_rows: usize, seed: u64, epoch: u32) -> Vec<i64> {
    let mut rng = SplitMix64 {
        state: seed ^ u64::from(epoch).wrapping_mul(SPLITMIX_GAMMA),
    };
    let mut order: Vec<i64> = (0..num_rows as i64).collect();
    // Fisher-Yates: swap each position with a uniformly drawn one at or below it.
    for i in (1..num_rows).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A small seeded generator (SplitMix64) for shuffling and augmentation draws.
pub(super) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Starts a generator for `seed` and `epoch`; `stream` separates independent draws.
    pub(super) fn new(seed: u64, epoch: u32, stream: u64) -> Self {
        let state = seed ^ u64::from(epoch).wrapping_mul(SPLITMIX_GAMMA) ^ stream.rotate_left(32);
        SplitMix64 { state }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(SPLITMIX_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Draws from `0..bound` by scaling a 64-bit draw, which is biased by at most
    /// `bound / 2^64`, far too little to matter for shuffling.
    pub(super) fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_contains_each_row_once() {
        let mut order = permutation(100, 7, 1);
        order.sort_unstable();
        assert_eq!(order, (0..100).collect::<Vec<i64>>());
    }

    #[test]
    fn permutation_repeats_for_same_seed() {
        assert_eq!(permutation(50, 7, 3), permutation(50, 7, 3));
    }

    #[test]
    fn permutation_changes_with_epoch() {
        assert_ne!(permutation(50, 7, 1), permutation(50, 7, 2));
    }

    #[test]
    fn permutation_changes_with_seed() {
        assert_ne!(permutation(50, 7, 1), permutation(50, 8, 1));
    }

    #[test]
    fn permutation_handles_tiny_inputs() {
        assert_eq!(permutation(0, 7, 1), Vec::<i64>::new());
        assert_eq!(permutation(1, 7, 1), vec![0]);
    }
}
