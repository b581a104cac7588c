//! numpy's legacy global random generator (`np.random.seed` / `np.random.shuffle`), bit for bit.
//!
//! The LDAM-DRW CIFAR-LT builder (RIDE and SADE `data_loader/imbalance_cifar.py`, docs/ride.md §6) calls
//! `np.random.seed(0)` once and then `np.random.shuffle` on each class's index array. Drawing the
//! same images needs the same MT19937 stream and the same shuffle. Reference vectors:
//! `fixtures/numpy/legacy_shuffle.json` (numpy 2.4.6).

const N: usize = 624;
const M: usize = 397;

/// The Mersenne Twister MT19937 as numpy's legacy `RandomState` seeds and draws it.
#[derive(Clone)]
pub struct Mt19937 {
    key: [u32; N],
    pos: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed: Matsumoto–Nishimura `init_genrand`
    /// (numpy `mt19937_seed`).
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; N];
        let mut s = seed;
        for (pos, k) in key.iter_mut().enumerate() {
            *k = s;
            s = 1_812_433_253u32
                .wrapping_mul(s ^ (s >> 30))
                .wrapping_add(pos as u32 + 1);
        }
        Mt19937 { key, pos: N }
    }

    fn generate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.key[i] & UPPER) | (self.key[(i + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.key[i] = self.key[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// The next tempered 32-bit output (`next_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == N {
            self.generate();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `np.random.random_sample()`: a 53-bit double in `[0, 1)` from two outputs.
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// numpy's legacy `random_interval(max)`: uniform in `0..=max` by masked rejection
    /// (the smallest all-ones mask covering `max`, redraw while the value exceeds `max`).
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= u32::MAX as u64 {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                // numpy's legacy next_uint64: high word first.
                let hi = self.next_u32() as u64;
                let lo = self.next_u32() as u64;
                let v = ((hi << 32) | lo) & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `np.random.shuffle(x)` on a 1-d array: reverse Fisher–Yates, `j = random_interval(i)` for
    /// `i = n−1 … 1`, swapping `x[i]` and `x[j]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_mt19937_init_genrand_5489() {
        // Matsumoto & Nishimura's reference: init_genrand(5489) first output.
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
    }

    #[test]
    fn interval_stays_in_range() {
        let mut rng = Mt19937::new(7);
        for max in [1u64, 2, 3, 5, 1000, (1 << 33) + 3] {
            for _ in 0..200 {
                assert!(rng.random_interval(max) <= max);
            }
        }
        assert_eq!(rng.random_interval(0), 0);
    }
}
