//! The session's data keys: unwrapped through the KMS hook, held in this backend's Rust
//! memory only, and zeroized on unload, at transaction end (transaction-scoped keys), on
//! DISCARD ALL and RESET ALL (src/hooks.rs), at backend exit, and on any failed load.
//! Keys are never copied to shared memory, so parallel workers never see them (the
//! functions that need them are PARALLEL RESTRICTED).
//!
//! A key belongs to the role that loaded it: every use checks that the current role is
//! that role or a member of it, and that the loader holds the key privilege the use needs
//! (dscsa.grant_key). After SET ROLE to an outsider the key is unusable until an
//! authorized role loads it again.

use std::cell::RefCell;

use dscsa_core::access::{KeyPrivilege, Privileges};
use dscsa_core::blind::BlindIndexKey;
use dscsa_core::cipher::DataKey;
use dscsa_core::envelope::NONCE_LEN;
use dscsa_core::locked::Locked;
use dscsa_core::nonce::NonceSource;
use dscsa_core::provenance::{self, SealLog};
use dscsa_core::{Error, Result};
use pgrx::pg_sys;

use crate::error::OrRaise;
use crate::owner;

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
/// material on drop, and lives on pages locked in RAM and left out of core dumps
/// (dscsa_core::locked) where the operating system allows it.
pub enum KeyMaterial {
    /// Encrypts and decrypts envelopes.
    Data(Locked<DataKey>),
    /// Computes blind indexes; never encrypts.
    BlindIndex(Locked<BlindIndexKey>),
    /// Another application's AES-GCM key, only ever used to open its values for import.
    Import(Locked<DataKey>),
}

/// One unwrapped key version.
pub struct SessionKey {
    /// When the KMS last confirmed it plus the hard TTL (dscsa.key_cache_max_ttl): past
    /// this, it is unwrapped again before use (src/keycache.rs). None: no limit.
    pub expires_at_us: Option<i64>,
    pub key_id: u32,
    pub name: String,
    pub version: i32,
    pub active: bool,
    pub scope: Scope,
    /// Loaded by a dscsa.load_key() call (not implicitly by a trigger or an import).
    pub explicit: bool,
    /// The role that loaded it: only it and its members may use it.
    pub loaded_by: u32,
    /// What the loader may do with it (its dscsa.key_grants, or all for a superuser).
    pub privileges: Privileges,
    pub key: KeyMaterial,
}

impl SessionKey {
    /// Checks that the current role may use this key for `need`: it is the loader or a
    /// member of it (keys belong to the role that loaded them, not to the backend), and
    /// the loader holds the privilege on the key.
    fn check(&self, need: KeyPrivilege) -> Result<()> {
        self.check_role()?;
        if !self.privileges.has(need) && owner::current_user().to_u32() != self.loaded_by {
            // A member using its parent role's load gets the parent's privileges; its
            // own may be wider, but only a load of its own would carry them.
            return Err(Error::KeyLoadedByOtherRole(self.name.clone()));
        }
        self.privileges.require(need, &self.name)
    }

    fn check_role(&self) -> Result<()> {
        if let Some(expires) = self.expires_at_us {
            let now = statement_start_us();
            if now >= expires {
                return Err(Error::KeyExpired {
                    name: self.name.clone(),
                    version: self.version,
                    expired_s: (now - expires) / 1_000_000,
                    reason: last_refresh_failure()
                        .unwrap_or_else(|| "the KMS could not be reached".into()),
                });
            }
        }
        let me = owner::current_user();
        if owner::has_privs_of(me, pg_sys::Oid::from(self.loaded_by)) {
            Ok(())
        } else {
            Err(Error::KeyLoadedByOtherRole(self.name.clone()))
        }
    }
}

/// How an envelope is to be opened.
#[derive(Clone, Copy)]
pub enum OpenFor<'a> {
    /// To reveal or authenticate the value: needs the decrypt privilege.
    Decrypt,
    /// To compute its blind index inside a trigger: the decrypt privilege, or the
    /// envelope (this nonce) was sealed by the current role in this transaction, so the
    /// role knew the plaintext anyway (core/src/provenance.rs).
    BlindIndex { nonce: &'a [u8; NONCE_LEN] },
}

thread_local! {
    static KEYS: RefCell<Vec<SessionKey>> = const { RefCell::new(Vec::new()) };
    static NONCES: RefCell<NonceSource> = const { RefCell::new(NonceSource::new()) };
    static SEALED: RefCell<Option<SealLog>> = const { RefCell::new(None) };
}

fn pid() -> u32 {
    // SAFETY: MyProcPid is set at backend start and never changes afterwards.
    unsafe { pg_sys::MyProcPid as u32 }
}

pub fn next_nonce() -> Result<[u8; NONCE_LEN]> {
    NONCES.with(|n| n.borrow_mut().next_nonce(pid()))
}

/// Notes that the current role sealed an envelope with `nonce` (see `OpenFor::BlindIndex`).
pub fn record_seal(nonce: &[u8; NONCE_LEN]) {
    let me = owner::current_user().to_u32();
    SEALED.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| SealLog::new(provenance::DEFAULT_CAPACITY))
            .record(nonce, me)
    });
}

pub fn sealed_by_current_role(nonce: &[u8; NONCE_LEN]) -> bool {
    let me = owner::current_user().to_u32();
    SEALED.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|log| log.sealed_by(nonce, me))
    })
}

/// Runs `f` with the data key for `key_id`, after checking that the current role may
/// open values with it `how`. An envelope naming a key id of another purpose cannot have
/// been made by dscsa_encrypt: it fails authentication.
pub fn with_key_id<T>(key_id: u32, how: OpenFor<'_>, f: impl FnOnce(&DataKey) -> T) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let k = keys
            .iter()
            .find(|k| k.key_id == key_id)
            .ok_or(Error::KeyVersionNotLoaded(key_id))?;
        match how {
            OpenFor::Decrypt => k.check(KeyPrivilege::Decrypt)?,
            OpenFor::BlindIndex { nonce } => {
                k.check_role()?;
                if !sealed_by_current_role(nonce) {
                    k.privileges.require(KeyPrivilege::Decrypt, &k.name)?;
                }
            }
        }
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
            KeyMaterial::Data(key) => {
                k.check(KeyPrivilege::Encrypt)?;
                Ok(f(k.key_id, key))
            }
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
            KeyMaterial::BlindIndex(key) => {
                k.check(KeyPrivilege::BlindIndex)?;
                Ok(f(k.key_id, key))
            }
            _ => Err(wrong_purpose(name, "blind-index")),
        }
    })
}

/// Calls `f` for every loaded version of blind-index key `name` (active first).
pub fn for_each_blind_key(name: &[u8], mut f: impl FnMut(u32, &BlindIndexKey)) -> Result<()> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let mut each = |k: &SessionKey| match &k.key {
            KeyMaterial::BlindIndex(key) => {
                k.check(KeyPrivilege::BlindIndex)?;
                f(k.key_id, key);
                Ok(())
            }
            _ => Err(wrong_purpose(name, "blind-index")),
        };
        let mut matching = keys.iter().filter(|k| k.name.as_bytes() == name);
        let Some(first) = matching.next() else {
            return Err(Error::NoActiveKeyLoaded(
                String::from_utf8_lossy(name).into_owned(),
            ));
        };
        let Some(second) = matching.next() else {
            // One version loaded, the usual case: nothing to order (a lookup runs this at
            // every execution).
            return each(first);
        };
        let mut versions: Vec<&SessionKey> = vec![first, second];
        versions.extend(matching);
        versions.sort_by_key(|k| (!k.active, -k.version));
        versions.into_iter().try_for_each(each)
    })
}

/// Tries `f` with every loaded version of import key `name`, newest first, until one
/// succeeds; returns the last error otherwise. Opening another application's values is
/// decrypting: it needs the decrypt privilege on the import key.
pub fn try_import_keys<T>(name: &[u8], mut f: impl FnMut(&DataKey) -> Result<T>) -> Result<T> {
    KEYS.with(|keys| {
        let keys = keys.borrow();
        let mut versions: Vec<&SessionKey> =
            keys.iter().filter(|k| k.name.as_bytes() == name).collect();
        versions.sort_by_key(|k| -k.version);
        let mut last = Error::NoActiveKeyLoaded(String::from_utf8_lossy(name).into_owned());
        for k in versions {
            match &k.key {
                KeyMaterial::Import(key) => {
                    k.check(KeyPrivilege::Decrypt)?;
                    match f(key) {
                        Ok(v) => return Ok(v),
                        Err(e) => last = e,
                    }
                }
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

/// The scope of a key a trigger or an import loads on its own: never more than what the
/// session chose for the keys it loaded explicitly. Session only while some explicitly
/// loaded key is session-scoped; otherwise (nothing loaded explicitly, or only for the
/// transaction, as behind a transaction pooler) the key goes at transaction end.
pub fn implicit_scope() -> Scope {
    KEYS.with(|keys| {
        if keys
            .borrow()
            .iter()
            .any(|k| k.explicit && k.scope == Scope::Session)
        {
            Scope::Session
        } else {
            Scope::Transaction
        }
    })
}

/// Whether `key_id` is loaded and is what this session takes as the active version.
pub fn is_loaded_active(key_id: u32) -> bool {
    KEYS.with(|keys| keys.borrow().iter().any(|k| k.key_id == key_id && k.active))
}

pub fn is_loaded(key_id: u32) -> bool {
    KEYS.with(|keys| keys.borrow().iter().any(|k| k.key_id == key_id))
}

/// Whether any version of `name` was loaded explicitly (its reloads stay explicit).
pub fn loaded_explicitly(name: &str) -> bool {
    KEYS.with(|keys| keys.borrow().iter().any(|k| k.name == name && k.explicit))
}

/// Whether some version of `name` is loaded for a role whose privileges the current role has.
pub fn is_name_loaded_for_current_role(name: &str) -> bool {
    KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .any(|k| k.name == name && k.check_role().is_ok())
    })
}

/// Refreshes an already loaded version: its status (a rotation in another session may
/// have changed it) and, when another role loads it, its loader, privileges and scope
/// (the new load takes it over, as if it had not been loaded). A reload by the same
/// role keeps its scope unless an explicit session-scoped load widens it.
pub fn refresh(key_id: u32, active: bool, load: &LoadedBy) {
    KEYS.with(|keys| {
        for k in keys.borrow_mut().iter_mut().filter(|k| k.key_id == key_id) {
            k.active = active;
            k.privileges = load.privileges;
            if k.loaded_by != load.role {
                k.loaded_by = load.role;
                k.scope = load.scope;
                k.explicit = load.explicit;
            } else if load.explicit {
                k.explicit = true;
                if load.scope == Scope::Session {
                    k.scope = Scope::Session;
                }
            }
        }
    })
}

/// Who loads a key, with what rights, and how.
pub struct LoadedBy {
    pub role: u32,
    pub privileges: Privileges,
    pub scope: Scope,
    pub explicit: bool,
}

/// Adds freshly unwrapped versions all at once (a load either adds all or none), and
/// demotes any other loaded version of the same name that the keyring no longer marks active.
pub fn insert_all(name: &str, new_keys: Vec<SessionKey>, active_key_id: Option<u32>) {
    ensure_exit_callback();
    // Plans of transparent lookups spell one candidate slot per loaded blind-index
    // version (src/lookup): a new version means this backend's cached plans are redone.
    if new_keys
        .iter()
        .any(|k| matches!(k.key, KeyMaterial::BlindIndex(_)))
    {
        // SAFETY: marks this backend's cached plans invalid; callable in a transaction.
        unsafe { pg_sys::ResetPlanCache() };
    }
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        for k in keys.iter_mut().filter(|k| k.name == name) {
            k.active = Some(k.key_id) == active_key_id;
        }
        keys.extend(new_keys);
    })
}

/// The roles that loaded versions of `name`.
pub fn loaders_of(name: &str) -> Vec<u32> {
    KEYS.with(|keys| {
        let mut roles: Vec<u32> = keys
            .borrow()
            .iter()
            .filter(|k| k.name == name)
            .map(|k| k.loaded_by)
            .collect();
        roles.sort_unstable();
        roles.dedup();
        roles
    })
}

/// Replaces the privileges of the loaded versions of `name` with what their loaders
/// hold now (after a revocation), and drops the versions whose loader holds nothing any
/// more. Returns how many were dropped.
pub fn restrict(name: &str, allowed: &[(u32, Privileges)]) -> usize {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        for k in keys.iter_mut().filter(|k| k.name == name) {
            k.privileges = allowed
                .iter()
                .find(|(role, _)| *role == k.loaded_by)
                .map_or(Privileges::NONE, |(_, p)| *p);
        }
        let before = keys.len();
        keys.retain(|k| !(k.name == name && k.privileges.is_empty()));
        before - keys.len()
    })
}

/// Marks no loaded version of `name` active (its active version was retired).
pub fn deactivate(name: &str) {
    KEYS.with(|keys| {
        for k in keys.borrow_mut().iter_mut().filter(|k| k.name == name) {
            k.active = false;
        }
    })
}

/// Names of the keys loaded (each once).
pub fn loaded_names() -> Vec<String> {
    KEYS.with(|keys| {
        let mut names: Vec<String> = keys.borrow().iter().map(|k| k.name.clone()).collect();
        names.sort();
        names.dedup();
        names
    })
}

/// Names of the keys a `dscsa.load_key` call loaded (each once): what a backfill worker
/// loads to do what its session does (keys a trigger or an import loaded implicitly are
/// loaded the same way there, when needed).
pub fn explicitly_loaded_names() -> Vec<String> {
    KEYS.with(|keys| {
        let mut names: Vec<String> = keys
            .borrow()
            .iter()
            .filter(|k| k.explicit)
            .map(|k| k.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
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

/// What dscsa.loaded_keys() shows of one key: never key material.
pub struct KeyInfo {
    pub name: String,
    pub version: i32,
    pub key_id: u32,
    pub active: bool,
    pub scope: Scope,
    pub loaded_by: u32,
    pub privileges: Privileges,
}

/// Whether this session holds any blind-index key (its cached plans may hold transparent
/// lookups, whose candidates depend on the versions loaded).
pub fn any_blind_index_key_loaded() -> bool {
    KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .any(|k| matches!(k.key, KeyMaterial::BlindIndex(_)))
    })
}

/// How many versions of `name` this session holds.
pub fn versions_loaded(name: &str) -> i32 {
    KEYS.with(|keys| keys.borrow().iter().filter(|k| k.name == name).count() as i32)
}

/// Name and version of a loaded key id (for audit records).
pub fn describe(key_id: u32) -> Option<(String, i32)> {
    KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .find(|k| k.key_id == key_id)
            .map(|k| (k.name.clone(), k.version))
    })
}

pub fn snapshot() -> Vec<KeyInfo> {
    KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .map(|k| KeyInfo {
                name: k.name.clone(),
                version: k.version,
                key_id: k.key_id,
                active: k.active,
                scope: k.scope,
                loaded_by: k.loaded_by,
                privileges: k.privileges,
            })
            .collect()
    })
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // Still inside the transaction: a procedure's batch committed; its audited
            // operations so far are queued. Key changes that cannot be recorded are
            // refused here, which aborts the transaction.
            if crate::hooks::nesting() > 0 {
                crate::audit::flush(crate::audit::Ending::Committed);
            }
            crate::audit::check_before_commit().or_raise();
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            crate::audit::transaction_ended(true);
            end_of_transaction();
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            crate::audit::flush(crate::audit::Ending::Failed);
            crate::audit::transaction_ended(false);
            crate::hooks::reset_nesting();
            end_of_transaction();
        }
        _ => {}
    }
}

/// Transaction-scoped keys and the transaction's seal log go.
fn end_of_transaction() {
    let dropped: Vec<(String, i32)> = KEYS.with(|keys| {
        keys.borrow()
            .iter()
            .filter(|k| k.scope == Scope::Transaction)
            .map(|k| (k.name.clone(), k.version))
            .collect()
    });
    if !dropped.is_empty() {
        remove_where(|k| k.scope == Scope::Transaction);
        crate::audit::unloaded_at_transaction_end(&dropped);
    }
    SEALED.with(|s| {
        if let Some(log) = s.borrow_mut().as_mut() {
            log.clear();
        }
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_backend_exit(_code: i32, _arg: pg_sys::Datum) {
    remove_where(|_| true);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn before_shmem_exit(_code: i32, _arg: pg_sys::Datum) {
    crate::audit::backend_exiting();
}

thread_local! {
    /// The process that registered the exit callback. With shared_preload_libraries,
    /// `_PG_init` runs in the postmaster, and PostgreSQL resets on_proc_exit callbacks in
    /// every forked child; so the callback is registered by the backend itself, the first
    /// time it holds a key.
    static EXIT_CALLBACK_PID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

pub fn ensure_exit_callback() {
    let me = pid();
    if EXIT_CALLBACK_PID.with(|p| p.replace(me)) != me {
        // SAFETY: registers callbacks whose function pointers live as long as the
        // library. before_shmem_exit runs while shared memory is still attached (the
        // audit queue), before the transaction is aborted; on_proc_exit at the very end.
        unsafe {
            pg_sys::before_shmem_exit(Some(before_shmem_exit), pg_sys::Datum::from(0));
            pg_sys::on_proc_exit(Some(on_backend_exit), pg_sys::Datum::from(0));
        }
    }
}

pub fn init() {
    // SAFETY: registers a callback whose function pointer lives as long as the library
    // (PostgreSQL never unloads it). The transaction callback list survives fork().
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
    }
}

/// When the current statement started (PostgreSQL microseconds): key expiry is judged
/// per statement, without a clock read per operation.
fn statement_start_us() -> i64 {
    crate::unguarded::statement_start()
}

thread_local! {
    /// Why the last attempt to unwrap expired keys again failed (for their error).
    static REFRESH_FAILURE: RefCell<Option<(String, i64)>> = const { RefCell::new(None) };
}

fn last_refresh_failure() -> Option<String> {
    REFRESH_FAILURE.with(|f| f.borrow().as_ref().map(|(why, _)| why.clone()))
}

/// Whether a loaded key has expired by the current statement and no refresh was tried
/// in the last second.
pub fn expiry_due() -> bool {
    let now = statement_start_us();
    let tried_recently = REFRESH_FAILURE.with(|f| {
        f.borrow()
            .as_ref()
            .is_some_and(|(_, at)| now - at < 1_000_000)
    });
    !tried_recently
        && KEYS.with(|keys| {
            keys.borrow()
                .iter()
                .any(|k| k.expires_at_us.is_some_and(|e| now >= e))
        })
}

/// The expired keys: name, scope, explicit, loader.
pub fn expired() -> Vec<(String, Scope, bool, u32)> {
    let now = statement_start_us();
    KEYS.with(|keys| {
        let mut out: Vec<(String, Scope, bool, u32)> = keys
            .borrow()
            .iter()
            .filter(|k| k.expires_at_us.is_some_and(|e| now >= e))
            .map(|k| (k.name.clone(), k.scope, k.explicit, k.loaded_by))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    })
}

/// Takes the expired versions of `name` out (to be unwrapped again; put back with
/// `restore` if that fails, so that their use reports the expiry).
pub fn take_expired(name: &str) -> Vec<SessionKey> {
    let now = statement_start_us();
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        let (expired, kept): (Vec<SessionKey>, Vec<SessionKey>) = std::mem::take(&mut *keys)
            .into_iter()
            .partition(|k| k.name == name && k.expires_at_us.is_some_and(|e| now >= e));
        *keys = kept;
        expired
    })
}

pub fn restore(taken: Vec<SessionKey>) {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        for k in taken {
            if !keys.iter().any(|x| x.key_id == k.key_id) {
                keys.push(k);
            }
        }
    });
}

pub fn refresh_failed(why: String) {
    REFRESH_FAILURE.with(|f| *f.borrow_mut() = Some((why, statement_start_us())));
}

pub fn refresh_succeeded() {
    REFRESH_FAILURE.with(|f| *f.borrow_mut() = None);
}
