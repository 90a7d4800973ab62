//! What the rewrite needs from the catalogs: its own functions, and which protected
//! columns have a blind index (read from the relation cache, through their trigger).

use std::ffi::{c_char, c_int, CStr};

use pgrx::pg_sys;

/// The catalog objects the rewrite uses. Looked up once per backend and kept until a
/// change to pg_proc or pg_namespace (the extension created, dropped or updated) makes
/// PostgreSQL call `forget`: the hook runs before every planned statement of every
/// database, most of which never touch pg_dscsa.
#[derive(Clone, Copy)]
pub(super) struct Catalog {
    pub(super) namespace: pg_sys::Oid,
    pub(super) trigger_fn: pg_sys::Oid,
    pub(super) candidates_fn: pg_sys::Oid,
    pub(super) candidates_array_fn: pg_sys::Oid,
    pub(super) slot_fn: pg_sys::Oid,
    pub(super) bytea_eq_fn: pg_sys::Oid,
    /// `identifier_index_candidates(gtin, serial, key_name)` and its slot function, for
    /// the planner support function (support.rs); InvalidOid on an older installation.
    pub(super) identifier_candidates_fn: pg_sys::Oid,
    pub(super) identifier_slot_fn: pg_sys::Oid,
    /// `try_identifier_index_candidates(gtin, serial, key_name)` and its slot function.
    pub(super) try_identifier_candidates_fn: pg_sys::Oid,
    pub(super) try_identifier_slot_fn: pg_sys::Oid,
}

/// The last lookup (`None` before the first and after an invalidation; `Some(None)` when
/// the extension is not installed, remembered too: that is the common case), and a count
/// of invalidations, so that a lookup overtaken by one is not kept.
struct Cached {
    generation: u64,
    catalog: Option<Option<Catalog>>,
}

static CACHED: std::sync::Mutex<Cached> = std::sync::Mutex::new(Cached {
    generation: 0,
    catalog: None,
});

/// Registers `forget` with the syscache (from _PG_init; backends inherit it).
pub(super) fn init() {
    for cache in [
        pg_sys::SysCacheIdentifier::PROCOID,
        pg_sys::SysCacheIdentifier::NAMESPACEOID,
    ] {
        // SAFETY: the callback is a function of this library, which is never unloaded.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as c_int,
                Some(forget),
                pg_sys::Datum::from(0),
            )
        };
    }
}

/// Syscache invalidation (a function or schema changed, or the caches were reset).
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, _cache: c_int, _hash: u32) {
    if let Ok(mut cached) = CACHED.lock() {
        cached.generation += 1;
        cached.catalog = None;
    }
}

impl Catalog {
    /// The catalog objects, from the cache or looked up now. (The lock is never held
    /// across a catalog access, which may process invalidations and call `forget`.)
    pub(super) unsafe fn get() -> Option<Catalog> {
        let generation = match CACHED.lock() {
            Ok(cached) => match cached.catalog {
                Some(known) => return known,
                None => cached.generation,
            },
            Err(_) => return Catalog::lookup(),
        };
        let found = Catalog::lookup();
        if let Ok(mut cached) = CACHED.lock() {
            if cached.generation == generation {
                cached.catalog = Some(found);
            }
        }
        found
    }

    unsafe fn lookup() -> Option<Catalog> {
        let namespace = pg_sys::get_namespace_oid(c"dscsa".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        // Straight from the syscache: a name lookup (LookupFuncName) would check USAGE on
        // the schema and fail every query of a role that has none.
        let func = |name: &CStr, args: &[pg_sys::Oid]| {
            let argtypes = pg_sys::buildoidvector(args.as_ptr(), args.len() as c_int);
            pg_sys::GetSysCacheOid(
                pg_sys::SysCacheIdentifier::PROCNAMEARGSNSP as c_int,
                pg_sys::Anum_pg_proc_oid as pg_sys::AttrNumber,
                pg_sys::Datum::from(name.as_ptr()),
                pg_sys::Datum::from(argtypes),
                pg_sys::Datum::from(namespace),
                pg_sys::Datum::from(0),
            )
        };
        let text = pg_sys::TEXTOID;
        let int4 = pg_sys::INT4OID;
        let catalog = Catalog {
            namespace,
            trigger_fn: func(c"blind_index_trigger", &[]),
            candidates_fn: func(c"blind_index_candidates", &[text, text, text]),
            candidates_array_fn: func(
                c"blind_index_candidates",
                &[pg_sys::TEXTARRAYOID, text, text],
            ),
            slot_fn: func(c"_blind_index_slot", &[text, text, text, int4, int4]),
            bytea_eq_fn: pg_sys::get_opcode(pg_sys::Oid::from(pg_sys::ByteaEqualOperator)),
            identifier_candidates_fn: func(c"identifier_index_candidates", &[text, text, text]),
            identifier_slot_fn: func(c"_identifier_index_slot", &[text, text, text, int4, int4]),
            try_identifier_candidates_fn: func(
                c"try_identifier_index_candidates",
                &[text, text, text],
            ),
            try_identifier_slot_fn: func(
                c"_try_identifier_index_slot",
                &[text, text, text, int4, int4],
            ),
        };
        // An installation of another version (mid-upgrade) lacks some: do nothing.
        [
            catalog.trigger_fn,
            catalog.candidates_fn,
            catalog.candidates_array_fn,
            catalog.slot_fn,
        ]
        .iter()
        .all(|f| *f != pg_sys::InvalidOid)
        .then_some(catalog)
    }

    /// `dscsa.dscsa_decrypt` / `dscsa.dscsa_try_decrypt`, any overload.
    pub(super) unsafe fn is_decrypt(&self, funcid: pg_sys::Oid) -> bool {
        if pg_sys::get_func_namespace(funcid) != self.namespace {
            return false;
        }
        let name = pg_sys::get_func_name(funcid);
        !name.is_null()
            && matches!(
                CStr::from_ptr(name).to_bytes(),
                b"dscsa_decrypt" | b"dscsa_try_decrypt"
            )
    }
}

/// A protected column with a blind index, as its trigger describes it.
pub(super) struct BlindIndexed {
    pub(super) bidx_attno: pg_sys::AttrNumber,
    pub(super) key: String,
    /// The kind the trigger hashed with: the column's field kind, or every kind for a
    /// generic column (which may hold envelopes of any kind).
    pub(super) kind: &'static CStr,
    /// Where the rows are: how the candidates are spelled (condition.rs).
    pub(super) storage: Storage,
}

/// What kind of relation holds the column, as far as the candidates' spelling matters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// An ordinary table.
    Local,
    /// A partitioned table (partitioned by the blind-index column, perhaps) without foreign
    /// partitions: candidates are spelled so that partition pruning can use them.
    Partitioned,
    /// A foreign table, or a partitioned table with a foreign partition: candidates are
    /// computed once per execution into parameters, which postgres_fdw sends to the
    /// remote server with the condition (it ships no function of ours).
    Foreign,
}

pub(super) unsafe fn blind_indexed(
    catalog: &Catalog,
    relid: pg_sys::Oid,
    attno: pg_sys::AttrNumber,
) -> Option<BlindIndexed> {
    // The parser holds a lock on every relation of the query.
    let rel = pg_sys::RelationIdGetRelation(relid);
    if rel.is_null() {
        return None;
    }
    let mut found = None;
    let td = (*rel).trigdesc;
    if !td.is_null() {
        let triggers = std::slice::from_raw_parts((*td).triggers, (*td).numtriggers as usize);
        for t in triggers {
            if t.tgfoid != catalog.trigger_fn
                || t.tgnargs != 5
                || t.tgenabled == pg_sys::TRIGGER_DISABLED as c_char
            {
                continue;
            }
            let args = std::slice::from_raw_parts(t.tgargs, 5);
            if pg_sys::get_attnum(relid, args[0]) != attno {
                continue;
            }
            let bidx_attno = pg_sys::get_attnum(relid, args[1]);
            let key = CStr::from_ptr(args[2]).to_string_lossy().into_owned();
            if bidx_attno <= 0 || key.is_empty() {
                continue;
            }
            found = Some(BlindIndexed {
                bidx_attno,
                key,
                kind: kind_of_type(pg_sys::get_atttype(relid, attno)),
                storage: storage_of(relid, (*(*rel).rd_rel).relkind),
            });
            break;
        }
    }
    pg_sys::RelationClose(rel);
    found
}

mod raw {
    use pgrx::pg_sys;

    // catalog/pg_inherits.h, which pgrx's bindings do not include.
    extern "C-unwind" {
        pub fn find_all_inheritors(
            parent: pg_sys::Oid,
            lockmode: pg_sys::LOCKMODE,
            numparents: *mut *mut pg_sys::List,
        ) -> *mut pg_sys::List;
    }
}

unsafe fn storage_of(relid: pg_sys::Oid, relkind: c_char) -> Storage {
    if relkind == pg_sys::RELKIND_FOREIGN_TABLE as c_char {
        return Storage::Foreign;
    }
    if relkind != pg_sys::RELKIND_PARTITIONED_TABLE as c_char {
        return Storage::Local;
    }
    // The lock the planner takes on every partition when it expands the table.
    let tree = raw::find_all_inheritors(
        relid,
        pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        std::ptr::null_mut(),
    );
    let has_foreign = super::cells(tree)
        .iter()
        .any(|c| pg_sys::get_rel_relkind(c.oid_value) == pg_sys::RELKIND_FOREIGN_TABLE as c_char);
    if has_foreign {
        Storage::Foreign
    } else {
        Storage::Partitioned
    }
}

pub(super) unsafe fn kind_of_type(typid: pg_sys::Oid) -> &'static CStr {
    let name = pg_sys::format_type_be_qualified(typid);
    match CStr::from_ptr(name).to_bytes() {
        b"dscsa.gtin_encrypted" => c"gtin",
        b"dscsa.serial_encrypted" => c"serial",
        b"dscsa.lot_encrypted" => c"lot",
        b"dscsa.expiry_encrypted" => c"expiry",
        _ => c"any",
    }
}

/// The session can compute the candidates: the key is loaded for the current role and
/// the role may run the function. Otherwise the query runs as written.
pub(super) unsafe fn session_can_compute(
    catalog: &Catalog,
    key: &str,
    function: pg_sys::Oid,
) -> bool {
    crate::keys::versions_loaded(key) > 0
        && crate::keys::is_name_loaded_for_current_role(key)
        && pg_sys::pg_proc_aclcheck(function, pg_sys::GetUserId(), pg_sys::ACL_EXECUTE)
            == pg_sys::AclResult::ACLCHECK_OK
        && catalog.bytea_eq_fn != pg_sys::InvalidOid
}
