//! One sequence's KV state in a file, to load back later or elsewhere: what a [`Session`]
//! saves ([`Session::save`]) and what `serve` keeps of a slot.
//!
//! The file (little-endian): the magic `RLKVSEQ1`; a JSON header (length `u32`, then the text)
//! naming the model's [fingerprint](crate::Model::fingerprint), llama.cpp's version, the token
//! count and the state's size; the tokens (`i32` each); llama.cpp's own sequence state
//! (`llama_state_seq_get_data`); and a 64-bit checksum of everything before it. Loading checks
//! all of it before llama.cpp reads a byte, and what llama.cpp made of it afterwards (the
//! positions it holds), so a file of another model or llama.cpp, a truncated or changed file is
//! an [`Error::StateFile`] and the sequence is left empty.
//!
//! [`Session`]: crate::Session
//! [`Session::save`]: crate::Session::save

use std::io::{Read, Write};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::batch::SeqId;
use crate::checksum::Checksum;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::vocab::Token;

const MAGIC: &[u8; 8] = b"RLKVSEQ1";
/// The longest header a file may announce.
const MAX_HEADER: usize = 64 * 1024;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    model: String,
    llama_cpp: String,
    n_tokens: usize,
    state_bytes: u64,
}

fn llama_cpp_version() -> String {
    let b = crate::build_info::build_info();
    format!("llama-cpp-sys-2 {} ({})", b.llama_cpp_sys_version, b.llama_cpp_version)
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::StateFile { path: path.to_path_buf(), reason: reason.into() }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Writes what sequence `seq` holds (`tokens`, in order) to `path`, through a temporary file
/// renamed into place, so an interrupted save leaves any earlier file whole. Returns the
/// bytes written.
pub(crate) fn save(ctx: &Context<'_>, seq: SeqId, tokens: &[Token], path: &Path) -> Result<u64> {
    ctx.check_seq(seq)?;
    let held = ctx.seq_pos_max(seq)?.map_or(0, |p| p as usize + 1);
    if held != tokens.len() {
        return Err(Error::InvalidState(format!(
            "sequence {seq} holds {held} positions, but the record names {} tokens",
            tokens.len()
        )));
    }
    // SAFETY: live context, checked sequence id.
    let size = unsafe { sys::llama_state_seq_get_size(ctx.raw(), seq) };
    let mut state = vec![0u8; size];
    // SAFETY: `state` has `size` writable bytes.
    let written = unsafe { sys::llama_state_seq_get_data(ctx.raw(), state.as_mut_ptr(), size, seq) };
    if size == 0 || written != size {
        return Err(Error::Llama {
            call: "llama_state_seq_get_data",
            reason: format!("wrote {written} of {size} bytes"),
        });
    }
    let header = Header {
        model: ctx.model().fingerprint().to_string(),
        llama_cpp: llama_cpp_version(),
        n_tokens: tokens.len(),
        state_bytes: size as u64,
    };
    let header = serde_json::to_vec(&header).map_err(|e| Error::Internal(format!("state file header: {e}")))?;
    let mut sum = Checksum::default();
    let mut parts: Vec<Vec<u8>> = vec![MAGIC.to_vec(), (header.len() as u32).to_le_bytes().to_vec(), header];
    parts.push(tokens.iter().flat_map(|t| t.to_le_bytes()).collect());
    let tmp = path.with_extension(format!(
        "{}tmp{}",
        path.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
        for p in parts.iter().map(Vec::as_slice).chain([state.as_slice()]) {
            sum.update(p);
            f.write_all(p).map_err(io(&tmp))?;
        }
        f.write_all(&sum.clone().finish().to_le_bytes()).map_err(io(&tmp))?;
        let f = f.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    let total = parts.iter().map(|p| p.len() as u64).sum::<u64>() + size as u64 + 8;
    Ok(total)
}

/// Reads a file written by [`save`] into sequence `seq` (emptied first) and returns the tokens
/// it now holds. Every check comes before llama.cpp reads the state; on any error the
/// sequence is left empty.
pub(crate) fn load(ctx: &mut Context<'_>, seq: SeqId, path: &Path) -> Result<Vec<Token>> {
    ctx.check_seq(seq)?;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut sum = Checksum::default();
    let mut read = |n: usize, what: &str| -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        Read::by_ref(&mut f).take(n as u64).read_to_end(&mut buf).map_err(io(path))?;
        if buf.len() != n {
            return Err(bad(path, format!("the file ends inside its {what} (truncated?)")));
        }
        sum.update(&buf);
        Ok(buf)
    };
    if read(8, "magic").ok().as_deref() != Some(MAGIC.as_slice()) {
        return Err(bad(path, "not a rocm-llama KV state file"));
    }
    let header_len = u32::from_le_bytes(read(4, "header")?.try_into().unwrap_or_default()) as usize;
    if header_len > MAX_HEADER {
        return Err(bad(path, format!("a header of {header_len} bytes")));
    }
    let header: Header = serde_json::from_slice(&read(header_len, "header")?)
        .map_err(|e| bad(path, format!("an unreadable header: {e}")))?;
    if header.model != ctx.model().fingerprint() {
        return Err(bad(
            path,
            format!("saved for another model ({}), not this one ({})", header.model, ctx.model().fingerprint()),
        ));
    }
    if header.llama_cpp != llama_cpp_version() {
        return Err(bad(
            path,
            format!("saved by another llama.cpp ({}), not this one ({})", header.llama_cpp, llama_cpp_version()),
        ));
    }
    let n_ctx = ctx.n_ctx_seq() as usize;
    if header.n_tokens > n_ctx {
        return Err(bad(path, format!("{} tokens do not fit a sequence of {n_ctx}", header.n_tokens)));
    }
    // A sequence's state is its cells (K and V of each layer) and a little bookkeeping per
    // cell: never more than the whole KV buffer and 1 KiB a cell.
    let most = ctx.memory_usage().kv_bytes() + 1024 * n_ctx as u64 + (1 << 20);
    let expected = 8 + 4 + header_len as u64 + 4 * header.n_tokens as u64 + header.state_bytes + 8;
    if header.state_bytes == 0 || header.state_bytes > most {
        return Err(bad(path, format!("a state of {} bytes for this context", header.state_bytes)));
    }
    if len != expected {
        return Err(bad(path, format!("{len} bytes where the header announces {expected} (truncated or appended to)")));
    }
    let tokens: Vec<Token> = read(4 * header.n_tokens, "tokens")?
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let state = read(header.state_bytes as usize, "state")?;
    let mut stored = [0u8; 8];
    f.read_exact(&mut stored).map_err(|_| bad(path, "the file ends before its checksum"))?;
    if u64::from_le_bytes(stored) != sum.finish() {
        return Err(bad(path, "the checksum does not match: the file changed after it was written"));
    }
    let vocab = ctx.model().vocab();
    for &t in &tokens {
        vocab.check(t).map_err(|e| bad(path, e.to_string()))?;
    }
    ctx.seq_remove(Some(seq), ..)?;
    // SAFETY: `state` holds `state.len()` readable bytes; checked sequence id. llama.cpp
    // catches its own exceptions here and returns 0.
    let n = unsafe { sys::llama_state_seq_set_data(ctx.raw(), state.as_ptr(), state.len(), seq) };
    let fail = |ctx: &mut Context<'_>, reason: String| {
        let _ = ctx.seq_remove(Some(seq), ..);
        Err(bad(path, reason))
    };
    if n != state.len() {
        return fail(ctx, format!("llama.cpp could not restore the state (read {n} of {} bytes)", state.len()));
    }
    let max = ctx.seq_pos_max(seq)?;
    let intact = crate::memory::prefix_intact(ctx, seq, tokens.len())?;
    if max.map_or(0, |p| p as usize + 1) != tokens.len() || !intact {
        return fail(ctx, format!("the state holds positions up to {max:?}, not the {} tokens it names", tokens.len()));
    }
    Ok(tokens)
}
