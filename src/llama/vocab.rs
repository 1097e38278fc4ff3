//! The tokenizer: [`Vocab`] and the streaming [`Detokenizer`].

use std::ffi::c_char;
use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};

/// A token id.
pub type Token = i32;

/// Texts of at most this many bytes are tokenized on the caller's own thread; longer ones on a
/// thread whose stack is sized for them (see [`Vocab::tokenize`]). Even the smallest common
/// thread stack (tokio's and Rust's 2 MiB) holds this many bytes' worth of regex recursion
/// many times over.
pub const INLINE_TOKENIZE_BYTES: usize = 1024;

/// Stack for llama.cpp's `std::regex` pre-tokenizers per byte of text. Measured 2026-12-03 on
/// x86-64 with libstdc++ (GCC 12) over llama.cpp's test vocabularies and runs of 100,000 bytes
/// of one class (`tests/tokenizer.rs`): 256 bytes per byte overflowed, 384 sufficed; this
/// leaves room above that.
const REGEX_STACK_PER_BYTE: usize = 512;

/// Stack for everything else on the tokenizer thread.
const TOKENIZE_STACK_BASE: usize = 1 << 20;

/// A model's vocabulary. Wraps `llama_vocab`, which the model owns; the borrow keeps the
/// model alive.
#[derive(Clone, Copy)]
pub struct Vocab<'m> {
    ptr: NonNull<sys::llama_vocab>,
    // Borrowed from the `llama_model` that owns it (`Model::vocab`).
    _model: PhantomData<&'m sys::llama_model>,
}

// SAFETY: a `llama_vocab` is read-only after the model loads; llama.cpp tokenizes from many
// threads against one model (its server does so).
unsafe impl Send for Vocab<'_> {}
// SAFETY: see `Send`.
unsafe impl Sync for Vocab<'_> {}

impl<'m> Vocab<'m> {
    pub(crate) fn new(ptr: NonNull<sys::llama_vocab>) -> Self {
        Vocab { ptr, _model: PhantomData }
    }

    pub(crate) fn raw(&self) -> *const sys::llama_vocab {
        self.ptr.as_ptr()
    }

    /// Number of tokens. Wraps `llama_vocab_n_tokens`.
    pub fn n_tokens(&self) -> i32 {
        // SAFETY: the vocab pointer is valid while the model lives.
        unsafe { sys::llama_vocab_n_tokens(self.raw()) }
    }

    /// `Ok` when `token` is a valid id, else [`Error::InvalidToken`].
    pub fn check(&self, token: Token) -> Result<()> {
        let n_vocab = self.n_tokens();
        if (0..n_vocab).contains(&token) {
            Ok(())
        } else {
            Err(Error::InvalidToken { token, n_vocab })
        }
    }

    /// Beginning-of-sequence token, if the model has one. Wraps `llama_vocab_bos`.
    pub fn bos(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        Some(unsafe { sys::llama_vocab_bos(self.raw()) }).filter(|&t| t >= 0)
    }

    /// End-of-sequence token, if the model has one. Wraps `llama_vocab_eos`.
    pub fn eos(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        Some(unsafe { sys::llama_vocab_eos(self.raw()) }).filter(|&t| t >= 0)
    }

    /// Separator token (BERT's `[SEP]`), if the model has one. Wraps `llama_vocab_sep`.
    pub fn sep(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        Some(unsafe { sys::llama_vocab_sep(self.raw()) }).filter(|&t| t >= 0)
    }

    /// Whether `token` ends generation (EOS, EOT, ...). Wraps `llama_vocab_is_eog`.
    /// Invalid ids are simply not end-of-generation.
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: the id is checked to be in range first.
        self.check(token).is_ok() && unsafe { sys::llama_vocab_is_eog(self.raw(), token) }
    }

    /// Whether the model wants a BOS token at the start of a prompt. Wraps `llama_vocab_get_add_bos`.
    pub fn add_bos(&self) -> bool {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_get_add_bos(self.raw()) }
    }

    /// Splits `text` into tokens. Wraps `llama_tokenize`.
    ///
    /// `add_special` adds BOS/EOS as the model asks; `parse_special` turns control-token text
    /// such as `<start_of_turn>` into the control token rather than plain text.
    ///
    /// Several pre-tokenizers (deepseek, falcon, gpt-neox, aquila and others) split text with
    /// `std::regex`, which recurses once per character of a match: a long run of one
    /// character class needs stack in proportion to its length, and overflowing the stack
    /// kills the process. So a text longer than [`INLINE_TOKENIZE_BYTES`] is tokenized on a
    /// thread of its own whose stack is sized for the text (reserved, and touched only as
    /// deep as the longest run goes).
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<Token>> {
        if text.len() <= INLINE_TOKENIZE_BYTES {
            return self.tokenize_here(text, add_special, parse_special);
        }
        let stack = TOKENIZE_STACK_BASE.saturating_add(text.len().saturating_mul(REGEX_STACK_PER_BYTE));
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("rocm-llama-tokenize".into())
                .stack_size(stack)
                .spawn_scoped(scope, || self.tokenize_here(text, add_special, parse_special))
                .map_err(|source| Error::Thread { what: "tokenizer", source })?;
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`tokenize`](Vocab::tokenize) on the calling thread's stack.
    fn tokenize_here(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<Token>> {
        let len = i32::try_from(text.len())
            .map_err(|_| Error::Tokenize(format!("text of {} bytes is too long", text.len())))?;
        // A token covers at least one byte, plus room for BOS/EOS.
        let mut out: Vec<Token> = vec![0; text.len() + 2];
        for _ in 0..2 {
            let cap = i32::try_from(out.len()).unwrap_or(i32::MAX);
            // SAFETY: `text` is valid for `len` bytes (no NUL needed: the length is passed);
            // `out` has room for `cap` tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.raw(),
                    text.as_ptr() as *const c_char,
                    len,
                    out.as_mut_ptr(),
                    cap,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                return Err(Error::Tokenize("token count overflows i32".into()));
            }
            out.resize((-n) as usize, 0);
        }
        Err(Error::Tokenize("llama_tokenize kept asking for a larger buffer".into()))
    }

    /// The bytes of one token (may be part of a UTF-8 character). Wraps `llama_token_to_piece`.
    ///
    /// `special` renders control tokens as their text; otherwise they render as nothing.
    pub fn token_to_bytes(&self, token: Token, special: bool) -> Result<Vec<u8>> {
        self.check(token)?;
        let mut buf = vec![0u8; 32];
        for _ in 0..2 {
            // SAFETY: the token id is valid; `buf` has room for `buf.len()` bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.raw(),
                    token,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize((-n) as usize, 0);
        }
        Err(Error::Tokenize(format!("token {token} has no text")))
    }

    /// Turns tokens back into text. Wraps `llama_detokenize`.
    ///
    /// `remove_special` drops a leading BOS / trailing EOS; `unparse_special` renders control
    /// tokens as their text. Bytes that are not UTF-8 become U+FFFD.
    pub fn detokenize(&self, tokens: &[Token], remove_special: bool, unparse_special: bool) -> Result<String> {
        for &t in tokens {
            self.check(t)?;
        }
        let n_tokens = i32::try_from(tokens.len()).map_err(|_| Error::Tokenize("too many tokens".into()))?;
        let mut buf = vec![0u8; tokens.len() * 8 + 16];
        for _ in 0..2 {
            let cap = i32::try_from(buf.len()).map_err(|_| Error::Tokenize("text too long".into()))?;
            // SAFETY: every id was checked; `buf` has room for `cap` bytes.
            let n = unsafe {
                sys::llama_detokenize(
                    self.raw(),
                    tokens.as_ptr(),
                    n_tokens,
                    buf.as_mut_ptr() as *mut c_char,
                    cap,
                    remove_special,
                    unparse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
            if n == i32::MIN {
                return Err(Error::Tokenize("text length overflows i32".into()));
            }
            buf.resize((-n) as usize, 0);
        }
        Err(Error::Tokenize("llama_detokenize kept asking for a larger buffer".into()))
    }

    /// A streaming detokenizer for generated tokens.
    pub fn detokenizer(&self, special: bool) -> Detokenizer<'m> {
        Detokenizer { vocab: *self, special, pending: Vec::new() }
    }
}

/// Turns a stream of tokens into text without ever emitting broken UTF-8: bytes of a
/// character that spans several tokens are held until the character is complete.
///
/// The concatenation of everything [`push`](Detokenizer::push) and
/// [`finish`](Detokenizer::finish) return equals the token pieces joined and decoded at once.
pub struct Detokenizer<'m> {
    vocab: Vocab<'m>,
    special: bool,
    pending: Vec<u8>,
}

impl Detokenizer<'_> {
    /// Adds a token; returns the text that is now complete (often the token's own text,
    /// sometimes empty, sometimes several tokens' worth).
    pub fn push(&mut self, token: Token) -> Result<String> {
        let piece = self.vocab.token_to_bytes(token, self.special)?;
        Ok(self.push_bytes(&piece))
    }

    /// Adds raw bytes; returns the complete UTF-8 prefix.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        take_utf8(&mut self.pending)
    }

    /// Returns whatever is left, with incomplete characters as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Removes and returns the longest prefix of `buf` that is valid UTF-8, decoding invalid
/// sequences in the middle as U+FFFD and keeping only an incomplete final character.
fn take_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                buf.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // SAFETY-free: `valid_up_to` bytes were just validated.
                out.push_str(std::str::from_utf8(&buf[start..start + valid]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None => {
                        // An incomplete character at the end: keep it for the next push.
                        buf.drain(..start + valid);
                        return out;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_held_until_complete() {
        let text = "añ😀b";
        let bytes = text.as_bytes();
        let mut buf = Vec::new();
        let mut out = String::new();
        for b in bytes {
            buf.push(*b);
            out.push_str(&take_utf8(&mut buf));
            // Never emits a replacement character for a split character.
            assert!(!out.contains('\u{FFFD}'));
        }
        assert_eq!(out, text);
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut buf = vec![b'a', 0xFF, b'b', 0xF0, 0x9F];
        assert_eq!(take_utf8(&mut buf), "a\u{FFFD}b");
        assert_eq!(buf, vec![0xF0, 0x9F]);
        buf.extend_from_slice(&[0x98, 0x80]);
        assert_eq!(take_utf8(&mut buf), "😀");
    }
}
