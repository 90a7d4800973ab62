//! Role-level checks that pg_dscsa makes itself, where PostgreSQL does not: a row trigger
//! or an implicit key load does what a SQL function would do, so it checks that the
//! current role may EXECUTE that function (the outer fence of docs/SECURITY.md) before
//! doing it. Per-key privileges are checked where keys are used (src/keys.rs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use dscsa_core::envelope::FieldKind;
use dscsa_core::{Error, Result};
use pgrx::pg_sys;

use crate::owner;

/// A pg_dscsa routine whose EXECUTE privilege guards an operation.
#[derive(Debug, Clone, Copy)]
pub enum Routine {
    LoadKey,
    BlindIndex,
    Encrypt(FieldKind),
    Decrypt(FieldKind),
}

impl Routine {
    fn signature(self) -> &'static str {
        use FieldKind::*;
        match self {
            Routine::LoadKey => "dscsa.load_key(pg_catalog.text,pg_catalog.text)",
            Routine::BlindIndex => {
                "dscsa.blind_index(pg_catalog.text,pg_catalog.text,pg_catalog.text)"
            }
            Routine::Encrypt(Generic) => "dscsa.dscsa_encrypt(pg_catalog.text,pg_catalog.text)",
            Routine::Encrypt(Gtin) => "dscsa.dscsa_encrypt_gtin(pg_catalog.text,pg_catalog.text)",
            Routine::Encrypt(Serial) => {
                "dscsa.dscsa_encrypt_serial(pg_catalog.text,pg_catalog.text)"
            }
            Routine::Encrypt(Lot) => "dscsa.dscsa_encrypt_lot(pg_catalog.text,pg_catalog.text)",
            Routine::Encrypt(Expiry) => {
                "dscsa.dscsa_encrypt_expiry(pg_catalog.text,pg_catalog.text)"
            }
            Routine::Decrypt(Generic) => "dscsa.dscsa_decrypt(dscsa.encrypted,pg_catalog.text)",
            Routine::Decrypt(Gtin) => "dscsa.dscsa_decrypt(dscsa.gtin_encrypted,pg_catalog.text)",
            Routine::Decrypt(Serial) => {
                "dscsa.dscsa_decrypt(dscsa.serial_encrypted,pg_catalog.text)"
            }
            Routine::Decrypt(Lot) => "dscsa.dscsa_decrypt(dscsa.lot_encrypted,pg_catalog.text)",
            Routine::Decrypt(Expiry) => {
                "dscsa.dscsa_decrypt(dscsa.expiry_encrypted,pg_catalog.text)"
            }
        }
    }

    /// The function as named in a "permission denied" message.
    fn display(self) -> String {
        self.signature().replace("pg_catalog.", "")
    }
}

thread_local! {
    /// Function OIDs by signature; cleared when the extension may have been re-created.
    static OIDS: RefCell<HashMap<&'static str, pg_sys::Oid>> = RefCell::new(HashMap::new());
}

pub fn forget_routines() {
    OIDS.with(|o| o.borrow_mut().clear());
}

fn routine_oid(r: Routine) -> Result<pg_sys::Oid> {
    let sig = r.signature();
    if let Some(oid) = OIDS.with(|o| o.borrow().get(sig).copied()) {
        return Ok(oid);
    }
    let text = CString::new(sig).map_err(|_| Error::Internal("bad signature".into()))?;
    // Every name in the signature is schema-qualified and the path is pinned, so nothing
    // from the caller's search_path can stand in for it.
    let oid = owner::with_pinned_search_path(|| {
        // SAFETY: regprocedurein parses a C string and raises on an unknown function.
        unsafe {
            pgrx::direct_function_call::<pg_sys::Oid>(
                pg_sys::regprocedurein,
                &[pgrx::IntoDatum::into_datum(text.as_c_str())],
            )
        }
    })
    .ok_or_else(|| Error::Internal(format!("function {sig} not found")))?;
    OIDS.with(|o| o.borrow_mut().insert(sig, oid));
    Ok(oid)
}

fn may_execute(function: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: an ACL lookup through the syscache.
    unsafe {
        #[cfg(feature = "pg15")]
        let result =
            pg_sys::pg_proc_aclcheck(function, role, pg_sys::ACL_EXECUTE as pg_sys::AclMode);
        #[cfg(not(feature = "pg15"))]
        let result = pg_sys::object_aclcheck(
            pg_sys::ProcedureRelationId,
            function,
            role,
            pg_sys::ACL_EXECUTE as pg_sys::AclMode,
        );
        result == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Raises 42501 unless the current role may EXECUTE `r`.
pub fn require_execute(r: Routine) -> Result<()> {
    if may_execute(routine_oid(r)?, owner::current_user()) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "the current role may not execute {}",
            r.display()
        )))
    }
}

/// Whether `role` owns relation `relid` (or is a member of its owner, or a superuser).
pub fn owns_relation(relid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup.
    unsafe {
        #[cfg(feature = "pg15")]
        let owns = pg_sys::pg_class_ownercheck(relid, role);
        #[cfg(not(feature = "pg15"))]
        let owns = pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, role);
        owns
    }
}
