//! A small seedable random source for the fuzzers.

/// xorshift64*: small, seedable, good enough to pick calls.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// An integer that is often at an edge: 0, ±1, near `near`, the type's extremes.
    pub fn edgy(&mut self, near: i64) -> i64 {
        match self.below(10) {
            0 => 0,
            1 => -1,
            2 => near,
            3 => near - 1,
            4 => near + 1,
            5 => i32::MAX as i64,
            6 => i32::MIN as i64,
            7 => self.below(4) as i64,
            _ => self.below((near.unsigned_abs() * 2).max(2)) as i64,
        }
    }
    pub fn edgy_i32(&mut self, near: i64) -> i32 {
        self.edgy(near).clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
    pub fn edgy_u32(&mut self, near: i64) -> u32 {
        self.edgy(near).clamp(0, u32::MAX as i64) as u32
    }
    pub fn f32(&mut self) -> f32 {
        match self.below(12) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 0.0,
            4 => -1.0,
            5 => 1e30,
            _ => (self.below(2000) as f32 - 500.0) / 100.0,
        }
    }
    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| if self.chance(70) { b' ' + self.below(95) as u8 } else { self.next() as u8 }).collect()
    }
    pub fn text(&mut self, max: u64) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }
}
