//! What the relay checks in a server's answers before ggml's client reads them.
//!
//! ggml's client believes its server: a buffer smaller than it asked for, a base address of
//! 0, one that is not aligned or that runs past the end of the address space, an alignment
//! that is not a power of two, four billion devices: each ends this process in an assert of
//! ggml's allocator or backend code (found by `tests/fuzz.rs`'s lying server). A server is a
//! network peer, so every value is checked against what the request asked and what the
//! connection was told before; an answer that fails fails the link (`link`), and ggml gets a
//! stand-in instead.

use std::collections::HashMap;

use super::wire::*;

/// The most bytes a server may say a buffer or tensor takes (256 TiB): far past any device,
/// far below where address arithmetic wraps.
const MAX_BYTES: u64 = 1 << 48;
/// The highest address a buffer may reach.
const MAX_ADDRESS: u64 = 1 << 63;
/// The largest alignment a server may ask for.
const MAX_ALIGNMENT: u64 = 1 << 30;
/// The most devices one server may offer.
const MAX_DEVICES: u32 = 64;

/// What one connection was told so far.
#[derive(Debug, Default)]
pub(crate) struct AnswerCheck {
    alignment: Option<u64>,
    /// Buffer handles and their sizes.
    sizes: HashMap<u64, u64>,
}

impl AnswerCheck {
    /// `Err` says what is wrong with `reply` as the answer to `cmd` with `request`.
    pub(crate) fn check(&mut self, cmd: u8, request: &[u8], reply: &[u8]) -> Result<(), String> {
        let at = |i: usize| u64_at(reply, i);
        match cmd {
            CMD_ALLOC_BUFFER if reply.len() == 16 && request.len() >= 12 => {
                let (handle, size, asked) = (at(0), at(8), u64_at(request, 4));
                if handle != 0 {
                    if size < asked || size > MAX_BYTES {
                        return Err(format!("a buffer of {size} bytes for a request of {asked}"));
                    }
                    self.sizes.insert(handle, size);
                }
            }
            CMD_GET_ALIGNMENT if reply.len() == 8 => {
                let a = at(0);
                if !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(format!("an alignment of {a}"));
                }
                self.alignment = Some(a);
            }
            CMD_GET_MAX_SIZE if reply.len() == 8 && at(0) == 0 => return Err("a largest buffer of 0 bytes".into()),
            CMD_BUFFER_GET_BASE if reply.len() == 8 && request.len() >= 8 => {
                let base = at(0);
                let size = self.sizes.get(&u64_at(request, 0)).copied().unwrap_or(MAX_BYTES);
                let aligned = self.alignment.is_none_or(|a| base % a == 0);
                if base == 0 || !aligned || base > MAX_ADDRESS - size {
                    return Err(format!("a buffer at {base:#x}"));
                }
            }
            CMD_GET_ALLOC_SIZE if reply.len() == 8 && at(0) > MAX_BYTES => {
                return Err(format!("a tensor of {} bytes", at(0)));
            }
            CMD_DEVICE_COUNT if reply.len() == 4 => {
                let n = u32_at(reply, 0);
                if n == 0 || n > MAX_DEVICES {
                    return Err(format!("{n} devices"));
                }
            }
            CMD_SET_TENSOR_HASH | CMD_COPY_TENSOR if reply.first().is_some_and(|&r| r > 1) => {
                return Err(format!("a result of {}", reply[0]));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(size: u64) -> Vec<u8> {
        [&0u32.to_le_bytes()[..], &size.to_le_bytes()].concat()
    }

    fn pair(a: u64, b: u64) -> Vec<u8> {
        [a.to_le_bytes(), b.to_le_bytes()].concat()
    }

    #[test]
    fn answers_that_ggml_would_assert_on_are_refused() {
        let mut c = AnswerCheck::default();
        assert!(c.check(CMD_GET_ALIGNMENT, &[0; 4], &0u64.to_le_bytes()).is_err());
        assert!(c.check(CMD_GET_ALIGNMENT, &[0; 4], &48u64.to_le_bytes()).is_err());
        assert!(c.check(CMD_GET_ALIGNMENT, &[0; 4], &32u64.to_le_bytes()).is_ok());
        assert!(c.check(CMD_ALLOC_BUFFER, &alloc(4096), &pair(7, 4095)).is_err(), "smaller than asked");
        assert!(c.check(CMD_ALLOC_BUFFER, &alloc(4096), &pair(0, 0)).is_ok(), "no buffer is an answer");
        assert!(c.check(CMD_ALLOC_BUFFER, &alloc(4096), &pair(7, 4096)).is_ok());
        let base = |b: u64| b.to_le_bytes();
        assert!(c.check(CMD_BUFFER_GET_BASE, &7u64.to_le_bytes(), &base(0)).is_err());
        assert!(c.check(CMD_BUFFER_GET_BASE, &7u64.to_le_bytes(), &base(0x1010)).is_err(), "not aligned");
        assert!(c.check(CMD_BUFFER_GET_BASE, &7u64.to_le_bytes(), &base(1 << 63)).is_err(), "runs past the top");
        assert!(c.check(CMD_BUFFER_GET_BASE, &7u64.to_le_bytes(), &base(0x1000)).is_ok());
        assert!(c.check(CMD_DEVICE_COUNT, &[], &u32::MAX.to_le_bytes()).is_err());
        assert!(c.check(CMD_DEVICE_COUNT, &[], &0u32.to_le_bytes()).is_err());
        assert!(c.check(CMD_DEVICE_COUNT, &[], &1u32.to_le_bytes()).is_ok());
        assert!(c.check(CMD_GET_ALLOC_SIZE, &[], &u64::MAX.to_le_bytes()).is_err());
        assert!(c.check(CMD_GET_MAX_SIZE, &[0; 4], &0u64.to_le_bytes()).is_err());
    }
}
