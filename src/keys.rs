//! The session's data keys: unwrapped through the KMS hook, held in this backend's Rust
//! memory only, and zeroized on unload, at transaction end (transaction-scoped keys), at
//! backend exit, and on any failed load. Keys are never copied to shared memory, so
//! parallel workers never see them (the functions that need them are PARALLEL RESTRICTED).

use std::cell::RefCell;

use dscsa_core::blind::BlindIndexKey;
use dscsa_core::cipher::DataKey;
use dscsa_core::envelope::NONCE_LEN;
use dscsa_core::nonce::NonceSource;
use dscsa_core::{Error, Result};
use pgrx::pg_sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Session,
    Transaction,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "session" => Ok(Scope::Session),
            "transaction" => Ok(Scope::Transaction),
            _ => Err(Error::InvalidArgument(
                "scope must be 'session' or 'transaction'".into(),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Session => "session",
            Scope::Transaction => "transaction",
        }
    }
}

/// What a key version is for (the keyring's `purpose`). Each kind zeroizes its key
/// material on drop.
pub enum KeyMaterial {
    /// Encrypts and decrypts envelopes.
    Data(DataKey),
    /// Computes blind indexes; never encrypts.
    BlindIndex(BlindIndexKey),
    /// Another application's AES-GCM key, only ever used to open its values for import.
    Import(DataKey),
}

/// One unwrapped key version.
pub struct SessionKey {
    pub key_id: u32,
    pub name: String,
    pub version: i32,
    pub active: bool,
    pub scope: Scope,
    pub key: KeyMaterial,
}

thread_local! {
    static KEYS: RefCell<Vec<SessionKey>> = const { RefCell::new(Vec::new()) };
    static NONCES: RefCell<NonceSource> = const { RefCell::new(NonceSource::new()) };
}

fn pid() -> u32 {
    // SAFETY: MyProcPid is set at backend start and never changes afterwards.
    unsafe { pg_sys::MyProcPid as u32 }
}

pub fn next_nonce() -> Result<[u8; NONCE_LEN]> {
    NONCES.with(|n| n.borrow_mut().next_nonce(pid()))
}

/// Runs `f` with the data key for `key_id`. An envelope naming a key id of another
/// purpose cannot have been made by dscsa_encrypt: it fails authentication.
pub fn with_key_id<T>(key_id: u32, f: impl FnOnce(&DataKey) -> T) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let k = keys
            .iter()
            .find(|k| k.key_id == key_id)
            .ok_or(Error::KeyVersionNotLoaded(key_id))?;
        match &k.key {
            KeyMaterial::Data(key) => Ok(f(key)),
            _ => Err(Error::AuthenticationFailed),
        }
    })
}

fn wrong_purpose(name: &[u8], purpose: &str) -> Error {
    Error::InvalidArgument(format!(
        "key \"{}\" is not a {purpose} key",
        String::from_utf8_lossy(name)
    ))
}

/// Runs `f` with the active version of the data key named `name`, passing its key id.
pub fn with_active_key<T>(name: &[u8], f: impl FnOnce(u32, &DataKey) -> T) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let k = keys
            .iter()
            .find(|k| k.active && k.name.as_bytes() == name)
            .ok_or_else(|| Error::NoActiveKeyLoaded(String::from_utf8_lossy(name).into_owned()))?;
        match &k.key {
            KeyMaterial::Data(key) => Ok(f(k.key_id, key)),
            _ => Err(wrong_purpose(name, "data")),
        }
    })
}

/// Runs `f` with the active version of blind-index key `name`.
pub fn with_active_blind_key<T>(
    name: &[u8],
    f: impl FnOnce(u32, &BlindIndexKey) -> T,
) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let k = keys
            .iter()
            .find(|k| k.active && k.name.as_bytes() == name)
            .ok_or_else(|| Error::NoActiveKeyLoaded(String::from_utf8_lossy(name).into_owned()))?;
        match &k.key {
            KeyMaterial::BlindIndex(key) => Ok(f(k.key_id, key)),
            _ => Err(wrong_purpose(name, "blind-index")),
        }
    })
}

/// Calls `f` for every loaded version of blind-index key `name` (active first).
pub fn for_each_blind_key(name: &[u8], mut f: impl FnMut(u32, &BlindIndexKey)) -> Result<()> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let mut versions: Vec<&SessionKey> =
            keys.iter().filter(|k| k.name.as_bytes() == name).collect();
        if versions.is_empty() {
            return Err(Error::NoActiveKeyLoaded(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        versions.sort_by_key(|k| (!k.active, -k.version));
        for k in versions {
            match &k.key {
                KeyMaterial::BlindIndex(key) => f(k.key_id, key),
                _ => return Err(wrong_purpose(name, "blind-index")),
            }
        }
        Ok(())
    })
}

/// Tries `f` with every loaded version of import key `name`, newest first, until one
/// succeeds; returns the last error otherwise.
pub fn try_import_keys<T>(name: &[u8], mut f: impl FnMut(&DataKey) -> Result<T>) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let mut versions: Vec<&SessionKey> =
            keys.iter().filter(|k| k.name.as_bytes() == name).collect();
        versions.sort_by_key(|k| -k.version);
        let mut last = Error::NoActiveKeyLoaded(String::from_utf8_lossy(name).into_owned());
        for k in versions {
            match &k.key {
                KeyMaterial::Import(key) => match f(key) {
                    Ok(v) => return Ok(v),
                    Err(e) => last = e,
                },
                _ => return Err(wrong_purpose(name, "import")),
            }
        }
        Err(last)
    })
}

/// The scope to reload `name` with: session if any loaded version is session-scoped,
/// transaction if all are, None if the name is not loaded at all.
pub fn loaded_scope(name: &[u8]) -> Option<Scope> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let mut scopes = keys
            .iter()
            .filter(|k| k.name.as_bytes() == name)
            .map(|k| k.scope);
        let first = scopes.next()?;
        Some(
            if first == Scope::Session || scopes.any(|s| s == Scope::Session) {
                Scope::Session
            } else {
                Scope::Transaction
            },
        )
    })
}

/// Whether `key_id` is loaded and is what this session takes as the active version.
pub fn is_loaded_active(key_id: u32) -> bool {
    KEYS.with(|keys| keys.borrow().iter().any(|k| k.key_id == key_id && k.active))
}

pub fn is_loaded(key_id: u32) -> bool {
    KEYS.with(|keys| keys.borrow().iter().any(|k| k.key_id == key_id))
}

/// Refreshes metadata of an already loaded version (status may have changed by a rotation
/// in another session) and widens its scope to `scope` if that is broader.
pub fn refresh(key_id: u32, active: bool, scope: Scope) {
    KEYS.with(|keys| {
        for k in keys.borrow_mut().iter_mut().filter(|k| k.key_id == key_id) {
            k.active = active;
            if scope == Scope::Session {
                k.scope = Scope::Session;
            }
        }
    })
}

/// Adds freshly unwrapped versions all at once (a load either adds all or none), and
/// demotes any other loaded version of the same name that the keyring no longer marks active.
pub fn insert_all(name: &str, new_keys: Vec<SessionKey>, active_key_id: Option<u32>) {
    ensure_exit_callback();
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        for k in keys.iter_mut().filter(|k| k.name == name) {
            k.active = Some(k.key_id) == active_key_id;
        }
        keys.extend(new_keys);
    })
}

/// Drops (and so zeroizes) the keys matching `pred`; returns how many.
pub fn remove_where(pred: impl Fn(&SessionKey) -> bool) -> usize {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        let before = keys.len();
        keys.retain(|k| !pred(k));
        before - keys.len()
    })
}

pub fn snapshot() -> Vec<(String, i32, u32, bool, Scope)> {
    KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .map(|k| (k.name.clone(), k.version, k.key_id, k.active, k.scope))
            .collect()
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        remove_where(|k| k.scope == Scope::Transaction);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_backend_exit(_code: i32, _arg: pg_sys::Datum) {
    remove_where(|_| true);
}

thread_local! {
    /// The process that registered the exit callback. With shared_preload_libraries,
    /// `_PG_init` runs in the postmaster, and PostgreSQL resets on_proc_exit callbacks in
    /// every forked child; so the callback is registered by the backend itself, the first
    /// time it holds a key.
    static EXIT_CALLBACK_PID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn ensure_exit_callback() {
    let me = pid();
    if EXIT_CALLBACK_PID.with(|p| p.replace(me)) != me {
        // SAFETY: registers a callback whose function pointer lives as long as the library.
        unsafe { pg_sys::on_proc_exit(Some(on_backend_exit), pg_sys::Datum::from(0)) };
    }
}

pub fn init() {
    // SAFETY: registers a callback whose function pointer lives as long as the library
    // (PostgreSQL never unloads it). The transaction callback list survives fork().
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
    }
}
