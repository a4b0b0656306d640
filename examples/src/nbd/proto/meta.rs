//! Metadata contexts: the data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`, and the
//! one context this server has, `base:allocation` (holes and zeroes, from `SEEK_DATA`/`SEEK_HOLE`).

use super::{Cursor, ProtoError, MAX_STRING};

/// The name of the allocation context.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id `SET_META_CONTEXT` gives `base:allocation` (`LIST_META_CONTEXT` replies carry 0, as the
/// protocol asks); `BLOCK_STATUS` chunks carry it.
pub const BASE_ALLOCATION_ID: u32 = 1;
/// `base:allocation` flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

/// The data of a `LIST_META_CONTEXT` or `SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    /// The export the contexts are for (empty: the default export).
    pub name: &'a [u8],
    /// The queries, each `namespace:leaf`; queries over [`MAX_STRING`] bytes are kept (and match
    /// nothing).
    pub queries: Vec<&'a [u8]>,
}

/// Parses meta-context option data: u32 name length, name, u32 query count, then each query as u32
/// length and bytes, and nothing more. A name over [`MAX_STRING`] bytes, a string with a NUL byte, or
/// lengths that disagree with the data are malformed.
pub fn parse_meta_request(data: &[u8]) -> Result<MetaRequest<'_>, ProtoError> {
    let what = "meta context option data";
    let mut c = Cursor::new(data, what, 8)?;
    let name = string(&mut c, what)?;
    if name.len() > MAX_STRING {
        return Err(ProtoError::Malformed("export name over 4096 bytes"));
    }
    let count = c.u32()?;
    // Each query takes at least its 4-byte length: a count the data cannot hold is malformed (and
    // must not size an allocation).
    if u64::from(count) * 4 > c.rest.len() as u64 {
        return Err(ProtoError::Malformed(what));
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queries.push(string(&mut c, what)?);
    }
    if !c.rest.is_empty() {
        return Err(ProtoError::Malformed(what));
    }
    Ok(MetaRequest { name, queries })
}

/// A u32 length and that many bytes, none of them NUL.
fn string<'a>(c: &mut Cursor<'a>, what: &'static str) -> Result<&'a [u8], ProtoError> {
    let len = usize::try_from(c.u32()?).map_err(|_| ProtoError::Malformed(what))?;
    let bytes = c.bytes(len)?;
    if bytes.contains(&0) {
        return Err(ProtoError::Malformed("NUL byte in a string"));
    }
    Ok(bytes)
}

/// Whether `queries` select `base:allocation`. `LIST` (`list`) with no query lists every context, and
/// the namespace alone (`base:`) matches every context of it; `SET` selects only by the full name. Other
/// namespaces and unknown leaves match nothing (the protocol says to ignore them).
pub fn selects_base_allocation(queries: &[&[u8]], list: bool) -> bool {
    if list && queries.is_empty() {
        return true;
    }
    queries
        .iter()
        .any(|&q| q == BASE_ALLOCATION.as_bytes() || (list && q == b"base:"))
}

/// The data of an `NBD_REP_META_CONTEXT`: the context id, then its name.
pub fn meta_context_reply(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}
