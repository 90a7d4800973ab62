//! Minimal helpers for version-1 C functions written by hand.
//!
//! The hot functions (encrypt, decrypt, type I/O) are plain `fcinfo` functions rather than
//! `#[pg_extern]`: their SQL signatures use our own base type and domains (declared in
//! sql/), one symbol serves the one- and two-argument overloads (PG_NARGS), and results are
//! written straight into a palloc'd varlena with no intermediate Rust copy.

use pgrx::pg_sys;
use pgrx::varlena::{set_varsize_4b, varatt_is_1b_e, varatt_is_4b_c, varlena_to_byte_slice};

/// Declares `pg_finfo_<name>` and a `#[pg_guard]`ed V1 function `<name>` that calls
/// `handler(fcinfo)`. The handler is a named `unsafe fn(FunctionCallInfo) -> Datum`
/// written as ordinary Rust (so rustfmt and clippy see it), or a short closure.
macro_rules! pg_v1_function {
    ($(#[$doc:meta])* fn $name:ident, $finfo:ident, $handler:expr) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record = pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub unsafe extern "C-unwind" fn $name(fcinfo: pgrx::pg_sys::FunctionCallInfo) -> pgrx::pg_sys::Datum {
            // The body runs guarded by pgrx. An error carrying one of pg_dscsa's own
            // SQLSTATEs (which pgrx cannot report) comes back as a pending value and is
            // reported from this frame, which holds nothing to drop (src/error.rs).
            #[pgrx::pg_guard]
            unsafe extern "C-unwind" fn guarded(fcinfo: pgrx::pg_sys::FunctionCallInfo) -> pgrx::pg_sys::Datum {
                let handler: unsafe fn(pgrx::pg_sys::FunctionCallInfo) -> pgrx::pg_sys::Datum = $handler;
                // SAFETY: PostgreSQL calls V1 functions with a valid fcinfo whose arguments
                // match the SQL declaration, which is what every handler requires.
                $crate::error::with_custom_sqlstates(|| unsafe { handler(fcinfo) })
            }
            let datum = unsafe { guarded(fcinfo) };
            $crate::error::report_pending_custom();
            datum
        }
    };
}
pub(crate) use pg_v1_function;

/// Number of arguments of this call (PG_NARGS).
///
/// # Safety
/// `fcinfo` must be the call's valid FunctionCallInfo.
pub unsafe fn nargs(fcinfo: pg_sys::FunctionCallInfo) -> usize {
    (*fcinfo).nargs as usize
}

/// Detoasted bytes of varlena argument `n` (text, bytea, dscsa.encrypted).
///
/// # Safety
/// Argument `n` must exist, be non-NULL and be a varlena.
pub unsafe fn arg_bytes<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> &'a [u8] {
    datum_bytes(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n))
}

/// Detoasted bytes of a non-NULL varlena datum.
///
/// # Safety
/// `datum` must be a valid varlena datum.
pub unsafe fn datum_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    let mut varlena = datum.cast_mut_ptr::<pg_sys::varlena>();
    // Like PG_DETOAST_DATUM_PACKED: only compressed or out-of-line values need a call
    // into PostgreSQL; plain and short-header values are read in place.
    if varatt_is_1b_e(varlena) || varatt_is_4b_c(varlena) {
        varlena = pg_sys::pg_detoast_datum_packed(varlena);
    }
    varlena_to_byte_slice(varlena)
}

/// A text argument as UTF-8, or 22023 (only a database in another encoding can pass
/// other bytes; pg_dscsa's names and identifiers are ASCII).
///
/// # Safety
/// Argument `n` must exist, be non-NULL and be text.
pub unsafe fn arg_str<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> &'a str {
    arg_utf8(fcinfo, n).unwrap_or_else(|_| {
        crate::error::raise(dscsa_core::Error::InvalidArgument(
            "argument is not valid UTF-8".into(),
        ))
    })
}

/// A text argument as UTF-8, read in place; for callers whose invalid-UTF-8 case is an
/// error of their own (a malformed envelope, an unrecognised identifier) or no match.
///
/// # Safety
/// As `arg_str`.
pub unsafe fn arg_utf8<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    n: usize,
) -> Result<&'a str, std::str::Utf8Error> {
    utf8(arg_bytes(fcinfo, n))
}

/// `std::str::from_utf8` with an ASCII fast path. Key names, field kinds and GS1 data
/// are ASCII, and on such short strings the word-at-a-time ASCII test costs a fraction
/// of the general validator (about 100 instructions less per call under callgrind; a
/// transparent lookup reads three text arguments).
#[inline]
pub fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

/// A non-NULL `integer` argument.
///
/// # Safety
/// Argument `n` must exist, be non-NULL and be an int4.
pub unsafe fn arg_i32(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> i32 {
    pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n).value() as i32
}

/// Whether argument `n` is NULL.
///
/// # Safety
/// `fcinfo` must be the call's valid FunctionCallInfo with at least `n + 1` arguments.
pub unsafe fn arg_is_null(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> bool {
    pgrx::fcinfo::pg_arg_is_null(fcinfo, n)
}

/// Optional trailing varlena argument (empty when absent).
///
/// # Safety
/// As `arg_bytes`, for an argument that exists when `nargs > n`.
pub unsafe fn optional_arg_bytes<'a>(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> &'a [u8] {
    if nargs(fcinfo) > n {
        arg_bytes(fcinfo, n)
    } else {
        &[]
    }
}

/// Sets the call's result to NULL.
///
/// # Safety
/// `fcinfo` must be the call's valid FunctionCallInfo.
pub unsafe fn return_null(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    pgrx::fcinfo::pg_return_null(fcinfo)
}

/// A new varlena of `len` data bytes in the current memory context, and its data area.
pub fn new_varlena<'a>(len: usize) -> (*mut pg_sys::varlena, &'a mut [u8]) {
    let total = len + pg_sys::VARHDRSZ;
    // SAFETY: palloc either returns `total` writable bytes or raises an ERROR; the data
    // area starts right after the 4-byte header.
    unsafe {
        let ptr = pg_sys::palloc(total).cast::<pg_sys::varlena>();
        set_varsize_4b(ptr, total as i32);
        let data = std::slice::from_raw_parts_mut(ptr.cast::<u8>().add(pg_sys::VARHDRSZ), len);
        (ptr, data)
    }
}

/// A varlena holding a copy of `bytes`.
pub fn varlena_from(bytes: &[u8]) -> pg_sys::Datum {
    let (ptr, data) = new_varlena(bytes.len());
    data.copy_from_slice(bytes);
    pg_sys::Datum::from(ptr)
}
