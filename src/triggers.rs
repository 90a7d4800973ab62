//! Row triggers that keep derived columns of a protected table in step with the data:
//!
//! - `dscsa.protect_sync_trigger()` runs while a column is protected online: every row
//!   written with a plaintext value gets its encrypted twin (and blind index) computed
//!   in the same statement, so the backfill never races the application.
//! - `dscsa.blind_index_trigger()` runs on a protected column: every written ciphertext
//!   gets its blind index, so lookups, joins and UNIQUE work through it.
//!
//! Both are written in Rust rather than generated PL/pgSQL so that one function serves
//! every table (the column names come from trigger arguments) at the cost of a few
//! microseconds per row. They run with the writing user's rights and do only what that
//! user could do through the SQL functions (docs/SECURITY.md, "Triggers"):
//!
//! - encrypting a plaintext needs EXECUTE on the field's `dscsa_encrypt_*` function and
//!   the encrypt privilege on the data key;
//! - a blind index needs EXECUTE on `dscsa.blind_index` and the blind_index privilege;
//! - computing the blind index of a written ciphertext means decrypting it: that needs
//!   EXECUTE on the field's `dscsa_decrypt` and the decrypt privilege on its key, unless
//!   the current role sealed that very envelope in this transaction (it knew the
//!   plaintext; src/keys.rs, `OpenFor::BlindIndex`). Otherwise a role that cannot decrypt
//!   could copy a ciphertext in and read its HMAC out, an oracle for guessing values.
//!
//! Anything else is refused with 42501. Missing keys are loaded through the KMS hook on
//! first use, with the scope the session chose for its own loads (src/keyring.rs).

use std::ffi::{CStr, CString};

use dscsa_core::envelope::{Envelope, FieldKind};
use dscsa_core::Error;
use pgrx::pg_sys;
use zeroize::Zeroizing;

use crate::audit::Op;
use crate::authz::{require_execute, Routine};
use crate::blind::active_blind_index;
use crate::crypto::{open_transient, seal_varlena};
use crate::error::{raise, OrRaise};
use crate::fmgr::{datum_bytes, pg_v1_function, varlena_from};
use crate::keyring::ensure_loaded;
use crate::keys::OpenFor;

struct Trigger<'a> {
    data: &'a pg_sys::TriggerData,
    args: Vec<String>,
    tupdesc: pg_sys::TupleDesc,
}

fn misuse(msg: &str) -> ! {
    raise(Error::TriggerProtocol(msg.to_string()))
}

impl<'a> Trigger<'a> {
    /// # Safety
    /// `fcinfo` must be the call's valid FunctionCallInfo.
    unsafe fn from_fcinfo(fcinfo: pg_sys::FunctionCallInfo, nargs: usize) -> Self {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_TriggerData {
            misuse("must be called as a trigger");
        }
        let data = &*(ctx as *const pg_sys::TriggerData);
        let event = data.tg_event;
        if event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
            || event & pg_sys::TRIGGER_EVENT_ROW == 0
        {
            misuse("must be a BEFORE ... FOR EACH ROW trigger");
        }
        let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
        if op != pg_sys::TRIGGER_EVENT_INSERT && op != pg_sys::TRIGGER_EVENT_UPDATE {
            misuse("fires on INSERT and UPDATE only");
        }
        let trigger = &*data.tg_trigger;
        let n = trigger.tgnargs as usize;
        if n != nargs {
            misuse(&format!("expects {nargs} arguments, got {n}"));
        }
        let args = (0..n)
            .map(|i| {
                CStr::from_ptr(*trigger.tgargs.add(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        Trigger {
            data,
            args,
            tupdesc: (*data.tg_relation).rd_att,
        }
    }

    fn is_update(&self) -> bool {
        self.data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_UPDATE
    }

    fn new_tuple(&self) -> pg_sys::HeapTuple {
        if self.is_update() {
            self.data.tg_newtuple
        } else {
            self.data.tg_trigtuple
        }
    }

    fn old_tuple(&self) -> Option<pg_sys::HeapTuple> {
        self.is_update().then_some(self.data.tg_trigtuple)
    }

    /// Attribute number of column `name` (1-based); an error if it does not exist.
    fn attnum(&self, name: &str) -> i32 {
        let c = CString::new(name).unwrap_or_else(|_| misuse("bad column name"));
        // SAFETY: SPI_fnumber only reads the tuple descriptor.
        let n = unsafe { pg_sys::SPI_fnumber(self.tupdesc, c.as_ptr()) };
        if n <= 0 {
            misuse(&format!("column \"{name}\" does not exist"));
        }
        n
    }

    fn type_of(&self, attnum: i32) -> pg_sys::Oid {
        // SAFETY: attnum was returned by SPI_fnumber for this descriptor.
        unsafe {
            (*self.tupdesc)
                .attrs
                .as_slice((*self.tupdesc).natts as usize)[attnum as usize - 1]
                .atttypid
        }
    }

    fn get(&self, tuple: pg_sys::HeapTuple, attnum: i32) -> Option<pg_sys::Datum> {
        let mut isnull = false;
        // SAFETY: tuple and descriptor belong to the trigger's relation.
        let d = unsafe { pg_sys::SPI_getbinval(tuple, self.tupdesc, attnum, &mut isnull) };
        (!isnull).then_some(d)
    }

    /// The varlena bytes of a column (None for NULL).
    fn bytes(&self, tuple: pg_sys::HeapTuple, attnum: i32) -> Option<&'a [u8]> {
        // SAFETY: the column is a varlena type (checked by the SQL that creates triggers).
        self.get(tuple, attnum).map(|d| unsafe { datum_bytes(d) })
    }

    fn changed(&self, attnum: i32) -> bool {
        match self.old_tuple() {
            None => true,
            Some(old) => self.bytes(old, attnum) != self.bytes(self.new_tuple(), attnum),
        }
    }

    /// Returns the new row with `values` (attnum, value or NULL) replaced.
    fn replace(&self, values: &[(i32, Option<pg_sys::Datum>)]) -> pg_sys::Datum {
        let cols: Vec<i32> = values.iter().map(|(a, _)| *a).collect();
        let mut datums: Vec<pg_sys::Datum> = values
            .iter()
            .map(|(_, v)| v.unwrap_or(pg_sys::Datum::from(0)))
            .collect();
        let mut nulls: Vec<bool> = values.iter().map(|(_, v)| v.is_none()).collect();
        // SAFETY: arrays have `cols.len()` entries; the result is palloc'd in the
        // trigger's memory context and returned to the executor.
        let tuple = unsafe {
            pg_sys::heap_modify_tuple_by_cols(
                self.new_tuple(),
                self.tupdesc,
                cols.len() as i32,
                cols.as_ptr() as *mut i32,
                datums.as_mut_ptr(),
                nulls.as_mut_ptr(),
            )
        };
        pg_sys::Datum::from(tuple)
    }

    fn unchanged(&self) -> pg_sys::Datum {
        pg_sys::Datum::from(self.new_tuple())
    }
}

fn field_kind(name: &str) -> FieldKind {
    FieldKind::from_name(name).unwrap_or_else(|| misuse("unknown field kind"))
}

/// The plaintext of a text, varchar, char or date column as bytes. Dates become ISO
/// `YYYY-MM-DD` whatever DateStyle is; char(n) loses its padding, as a cast to text does.
fn plaintext_of(trigger: &Trigger<'_>, attnum: i32) -> Option<Zeroizing<Vec<u8>>> {
    let datum = trigger.get(trigger.new_tuple(), attnum)?;
    let ty = trigger.type_of(attnum);
    if ty == pg_sys::DATEOID {
        let days = datum.value() as i32;
        if days == i32::MIN || days == i32::MAX {
            raise(Error::InvalidArgument(
                "infinite dates cannot be protected".into(),
            ));
        }
        let (mut y, mut m, mut d) = (0, 0, 0);
        // SAFETY: j2date only writes its three out-parameters.
        unsafe {
            pg_sys::j2date(
                days + pg_sys::POSTGRES_EPOCH_JDATE as i32,
                &mut y,
                &mut m,
                &mut d,
            )
        };
        return Some(Zeroizing::new(format!("{y:04}-{m:02}-{d:02}").into_bytes()));
    }
    // SAFETY: text, varchar and bpchar are varlenas.
    let bytes = unsafe { datum_bytes(datum) };
    if ty == pg_sys::BPCHAROID {
        let end = bytes.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
        return Some(Zeroizing::new(bytes[..end].to_vec()));
    }
    Some(Zeroizing::new(bytes.to_vec()))
}

/// The blind index of `plaintext` under the active version of `bidx_key`.
fn blind_index_bytes(bidx_key: &str, kind: FieldKind, plaintext: &[u8]) -> Vec<u8> {
    require_execute(Routine::BlindIndex).or_raise();
    ensure_loaded(bidx_key);
    let text = crate::fmgr::utf8(plaintext).unwrap_or_else(|_| raise(Error::InvalidTextEncoding));
    active_blind_index(bidx_key, kind, text)
}

fn blind_index_datum(bidx_key: &str, kind: FieldKind, plaintext: &[u8]) -> pg_sys::Datum {
    varlena_from(&blind_index_bytes(bidx_key, kind, plaintext))
}

// Arguments: plain column, twin column, field kind, context, data key, blind-index
// column ('' for none), blind-index key ('' for none).
unsafe fn protect_sync_trigger_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let t = Trigger::from_fcinfo(fcinfo, 7);
    let [plain, twin, kind, context, data_key, bidx_col, bidx_key] = &t.args[..] else {
        misuse("bad arguments")
    };
    let (plain_at, twin_at) = (t.attnum(plain), t.attnum(twin));
    let bidx_at = (!bidx_col.is_empty()).then(|| t.attnum(bidx_col));
    let twin_missing =
        t.get(t.new_tuple(), twin_at).is_none() && t.get(t.new_tuple(), plain_at).is_some();
    let bidx_touched = bidx_at.is_some_and(|a| t.changed(a));
    // An UPDATE that leaves the plaintext, twin and index alone has nothing to redo; one
    // that sets the twin or index directly is overruled (they derive from the plaintext,
    // and are always recomputed: keeping a supplied twin that "matches" would tell the
    // writer whether a ciphertext it cannot decrypt holds a guessed plaintext).
    if t.is_update()
        && !t.changed(plain_at)
        && !t.changed(twin_at)
        && !bidx_touched
        && !twin_missing
    {
        return t.unchanged();
    }
    let kind = field_kind(kind);
    let mut values = Vec::with_capacity(2);
    match plaintext_of(&t, plain_at) {
        None => {
            values.push((twin_at, None));
            if let Some(a) = bidx_at {
                values.push((a, None));
            }
        }
        Some(p) => {
            require_execute(Routine::Encrypt(kind)).or_raise();
            ensure_loaded(data_key);
            let envelope = seal_varlena(
                Op::Encrypt,
                data_key.as_bytes(),
                kind,
                context.as_bytes(),
                &p,
            )
            .or_raise();
            values.push((twin_at, Some(envelope)));
            if let Some(a) = bidx_at {
                values.push((a, Some(blind_index_datum(bidx_key, kind, &p))));
            }
        }
    }
    t.replace(&values)
}

pg_v1_function!(fn protect_sync_trigger, pg_finfo_protect_sync_trigger, protect_sync_trigger_impl);

// Arguments: encrypted column, blind-index column, blind-index key, context, data key.
unsafe fn blind_index_trigger_impl(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let t = Trigger::from_fcinfo(fcinfo, 5);
    let [enc, bidx_col, bidx_key, context, data_key] = &t.args[..] else {
        misuse("bad arguments")
    };
    let (enc_at, bidx_at) = (t.attnum(enc), t.attnum(bidx_col));
    let envelope = t.bytes(t.new_tuple(), enc_at);
    let index_missing = envelope.is_some() && t.get(t.new_tuple(), bidx_at).is_none();
    if t.is_update() && !t.changed(enc_at) && !t.changed(bidx_at) && !index_missing {
        return t.unchanged();
    }
    let Some(envelope) = envelope else {
        return t.replace(&[(bidx_at, None)]);
    };
    let parsed = Envelope::parse(envelope).or_raise();
    require_execute(Routine::BlindIndex).or_raise();
    // Decrypting to hash: the decrypt right, unless this role sealed the envelope itself.
    if !crate::keys::sealed_by_current_role(parsed.nonce) {
        require_execute(Routine::Decrypt(parsed.kind)).or_raise();
    }
    ensure_loaded(data_key);
    let plaintext = open_transient(
        envelope,
        context.as_bytes(),
        OpenFor::BlindIndex {
            nonce: parsed.nonce,
        },
    )
    .unwrap_or_else(|e| {
        crate::crypto::record_tampering(Op::BlindIndex, envelope, context.as_bytes(), &e);
        raise(e)
    });
    let index = blind_index_datum(bidx_key, parsed.kind, &plaintext);
    t.replace(&[(bidx_at, Some(index))])
}

pg_v1_function!(fn blind_index_trigger, pg_finfo_blind_index_trigger, blind_index_trigger_impl);
