//! The `dscsa.encrypted` base type: input, output, receive, send, and read-only
//! inspection of the envelope header. Values are only ever envelopes: the input and
//! receive functions reject anything else, so plaintext cannot be stored by mistake.
//! The input error never echoes the rejected text (it may be plaintext).

use std::ffi::{c_char, CStr};

use dscsa_core::envelope::Envelope;
use dscsa_core::{armor, Error};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::OrRaise;
use crate::fmgr::{arg_bytes, arg_utf8, pg_v1_function, varlena_from};

// SAFETY (every function below): PostgreSQL calls type I/O functions with a valid fcinfo
// and a non-NULL argument of the declared type (they are STRICT).

unsafe fn dscsa_encrypted_in_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let text =
        CStr::from_ptr(pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<c_char>());
    let text = text
        .to_str()
        .map_err(|_| Error::MalformedEnvelope("text is not valid UTF-8"))
        .or_raise();
    let bytes = armor::decode(text).or_raise();
    varlena_from(&bytes)
}

pg_v1_function!(fn dscsa_encrypted_in, pg_finfo_dscsa_encrypted_in, dscsa_encrypted_in_impl);

unsafe fn dscsa_encrypted_out_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let text = armor::encode(arg_bytes(fcinfo, 0));
    let out = pg_sys::palloc(text.len() + 1).cast::<u8>();
    std::ptr::copy_nonoverlapping(text.as_ptr(), out, text.len());
    *out.add(text.len()) = 0;
    pg_sys::Datum::from(out)
}

pg_v1_function!(fn dscsa_encrypted_out, pg_finfo_dscsa_encrypted_out, dscsa_encrypted_out_impl);

unsafe fn dscsa_armor_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    varlena_from(armor::encode(arg_bytes(fcinfo, 0)).as_bytes())
}

pg_v1_function!(fn dscsa_armor, pg_finfo_dscsa_armor, dscsa_armor_impl);

unsafe fn dscsa_dearmor_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let text = arg_utf8(fcinfo, 0)
        .map_err(|_| Error::MalformedEnvelope("text is not valid UTF-8"))
        .or_raise();
    varlena_from(&armor::decode(text).or_raise())
}

pg_v1_function!(fn dscsa_dearmor, pg_finfo_dscsa_dearmor, dscsa_dearmor_impl);

unsafe fn dscsa_encrypted_recv_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let buf = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 0).cast_mut_ptr::<pg_sys::StringInfoData>();
    let start = (*buf).cursor as usize;
    let end = (*buf).len as usize;
    let bytes = std::slice::from_raw_parts((*buf).data.cast::<u8>().add(start), end - start);
    Envelope::parse(bytes).or_raise();
    (*buf).cursor = (*buf).len;
    varlena_from(bytes)
}

pg_v1_function!(fn dscsa_encrypted_recv, pg_finfo_dscsa_encrypted_recv, dscsa_encrypted_recv_impl);

unsafe fn dscsa_encrypted_send_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    varlena_from(arg_bytes(fcinfo, 0))
}

pg_v1_function!(fn dscsa_encrypted_send, pg_finfo_dscsa_encrypted_send, dscsa_encrypted_send_impl);

// bytea -> dscsa.encrypted, accepted only if the bytes are a well-formed envelope.
unsafe fn dscsa_encrypted_from_bytea_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let bytes = arg_bytes(fcinfo, 0);
    Envelope::parse(bytes).or_raise();
    varlena_from(bytes)
}

pg_v1_function!(fn dscsa_encrypted_from_bytea, pg_finfo_dscsa_encrypted_from_bytea, dscsa_encrypted_from_bytea_impl);

fn parse(envelope: &[u8]) -> Envelope<'_> {
    Envelope::parse(envelope).or_raise()
}

#[pg_extern(sql = false)]
fn envelope_kind(envelope: &[u8]) -> &'static str {
    parse(envelope).kind.name()
}

#[pg_extern(sql = false)]
fn envelope_key_id(envelope: &[u8]) -> i64 {
    i64::from(parse(envelope).key_id)
}

#[pg_extern(sql = false)]
fn envelope_nonce(envelope: &[u8]) -> Vec<u8> {
    parse(envelope).nonce.to_vec()
}

#[pg_extern(sql = false)]
fn envelope_version(envelope: &[u8]) -> i16 {
    i16::from(parse(envelope).header[0])
}
