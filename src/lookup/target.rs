//! Where a decrypted comparison's column lives: a relation of this query, or a view's
//! (subquery's) relation, and how to reach its blind-index column from this query.

use pgrx::pg_sys;

use super::*;

/// Where a decrypted comparison's column lives, seen from the query it appears in.
pub(super) enum Target {
    /// A column of relation `rtindex` of this query.
    Here {
        rtindex: pg_sys::Index,
        col: BlindIndexed,
    },
    /// A column of a relation inside the (view's) subquery of RTE `rtindex`.
    Inside {
        rtindex: pg_sys::Index,
        subquery: *mut pg_sys::Query,
        inner: Box<Target>,
    },
}

/// A query whose WHERE clause may take an extra condition without changing which rows
/// it returns to its parent: no grouping, DISTINCT, window, set operation, LIMIT or SRF.
pub(super) unsafe fn filterable(q: *mut pg_sys::Query) -> bool {
    let q = &*q;
    q.commandType == pg_sys::CmdType::CMD_SELECT
        && q.setOperations.is_null()
        && q.groupClause.is_null()
        && q.groupingSets.is_null()
        && q.distinctClause.is_null()
        && !q.hasAggs
        && !q.hasWindowFuncs
        && !q.hasTargetSRFs
        && q.limitCount.is_null()
        && q.limitOffset.is_null()
        && q.havingQual.is_null()
        && !q.jointree.is_null()
}

pub(super) unsafe fn resolve(
    catalog: &Catalog,
    q: *mut pg_sys::Query,
    expr: *mut pg_sys::Node,
) -> Option<Target> {
    let e = strip_relabel(expr);
    if is_a(e, pg_sys::NodeTag::T_FuncExpr) {
        let f = &*e.cast::<pg_sys::FuncExpr>();
        if !catalog.is_decrypt(f.funcid) {
            return None;
        }
        let arg = strip_relabel(nth(f.args, 0));
        if !is_a(arg, pg_sys::NodeTag::T_Var) {
            return None;
        }
        let var = &*arg.cast::<pg_sys::Var>();
        if var.varlevelsup != 0 {
            return None;
        }
        let rte = nth::<pg_sys::RangeTblEntry>((*q).rtable, var.varno as usize - 1);
        if rte.is_null() || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
            return None;
        }
        let col = blind_indexed(catalog, (*rte).relid, var.varattno)?;
        // The blind-index column is read like any other: by a role that may select it,
        // and recorded as selected so that the executor checks it too.
        let checker = if (*rte).checkAsUser != pg_sys::InvalidOid {
            (*rte).checkAsUser
        } else {
            pg_sys::GetUserId()
        };
        // Table-level SELECT, or SELECT on the column (the column check alone ignores
        // table privileges and superuser).
        let ok = pg_sys::AclResult::ACLCHECK_OK;
        if pg_sys::pg_class_aclcheck((*rte).relid, checker, pg_sys::ACL_SELECT) != ok
            && pg_sys::pg_attribute_aclcheck(
                (*rte).relid,
                col.bidx_attno,
                checker,
                pg_sys::ACL_SELECT,
            ) != ok
        {
            return None;
        }
        (*rte).selectedCols = pg_sys::bms_add_member(
            (*rte).selectedCols,
            i32::from(col.bidx_attno) - pg_sys::FirstLowInvalidHeapAttributeNumber,
        );
        return Some(Target::Here {
            rtindex: var.varno as pg_sys::Index,
            col,
        });
    }
    if is_a(e, pg_sys::NodeTag::T_Var) {
        let var = &*e.cast::<pg_sys::Var>();
        if var.varlevelsup != 0 || var.varattno <= 0 {
            return None;
        }
        let rte = nth::<pg_sys::RangeTblEntry>((*q).rtable, var.varno as usize - 1);
        if rte.is_null() || (*rte).rtekind != pg_sys::RTEKind::RTE_SUBQUERY {
            return None;
        }
        let sub = (*rte).subquery;
        if sub.is_null() || !filterable(sub) {
            return None;
        }
        let tle = cells((*sub).targetList)
            .iter()
            .map(|c| c.ptr_value.cast::<pg_sys::TargetEntry>())
            .find(|t| (**t).resno == var.varattno && !(**t).resjunk)?;
        let inner = resolve(catalog, sub, (*tle).expr.cast())?;
        return Some(Target::Inside {
            rtindex: var.varno as pg_sys::Index,
            subquery: sub,
            inner: Box::new(inner),
        });
    }
    None
}

/// Variables of the current level that `node` reads from relation `rtindex`.
pub(super) unsafe fn reads_relation(node: *mut pg_sys::Node, rtindex: pg_sys::Index) -> bool {
    !columns_read(node, rtindex).is_null()
}

/// The columns of range-table entry `rtindex` that `node` reads, as `pull_varattnos`
/// gives them (attribute numbers offset by `FirstLowInvalidHeapAttributeNumber`).
pub(super) unsafe fn columns_read(
    node: *mut pg_sys::Node,
    rtindex: pg_sys::Index,
) -> *mut pg_sys::Bitmapset {
    let mut attnos: *mut pg_sys::Bitmapset = std::ptr::null_mut();
    pg_sys::pull_varattnos(node, rtindex, &mut attnos);
    attnos
}

/// The blind-index column of `target` as a column of query `q`: through a view, the
/// view's query is made to return it as one more column (reused if already added). Not
/// when `q` reads the view's whole row (which would then have that column too) or is
/// not a plain SELECT.
pub(super) unsafe fn expose(
    q: *mut pg_sys::Query,
    target: Target,
) -> Option<(*mut pg_sys::Var, BlindIndexed)> {
    match target {
        Target::Here { rtindex, col } => Some((bidx_var(rtindex, col.bidx_attno), col)),
        Target::Inside {
            rtindex,
            subquery,
            inner,
        } => {
            if (*q).commandType != pg_sys::CmdType::CMD_SELECT || reads_whole_row(q, rtindex) {
                return None;
            }
            let (inner_var, col) = expose(subquery, *inner)?;
            let tlist = (*subquery).targetList;
            let entries: Vec<*mut pg_sys::TargetEntry> =
                cells(tlist).iter().map(|c| c.ptr_value.cast()).collect();
            if entries.iter().any(|t| (**t).resjunk) {
                return None;
            }
            let same_var = |t: *mut pg_sys::TargetEntry| {
                let e = (*t).expr.cast::<pg_sys::Node>();
                is_a(e, pg_sys::NodeTag::T_Var) && {
                    let v = &*e.cast::<pg_sys::Var>();
                    v.varno == (*inner_var).varno
                        && v.varattno == (*inner_var).varattno
                        && v.varlevelsup == 0
                }
            };
            let resno = match entries.iter().find(|t| same_var(**t)) {
                Some(t) => (**t).resno,
                None => {
                    let resno = (entries.len() + 1) as pg_sys::AttrNumber;
                    let name = pg_sys::pstrdup(c"dscsa_blind_index".as_ptr());
                    let tle = pg_sys::makeTargetEntry(inner_var.cast(), resno, name, false);
                    (*subquery).targetList = pg_sys::lappend(tlist, tle.cast());
                    let rte = nth::<pg_sys::RangeTblEntry>((*q).rtable, rtindex as usize - 1);
                    let eref = (*rte).eref;
                    (*eref).colnames =
                        pg_sys::lappend((*eref).colnames, pg_sys::makeString(name).cast());
                    resno
                }
            };
            Some((bidx_var(rtindex, resno), col))
        }
    }
}

/// `q` reads the whole row of RTE `rtindex` somewhere (`SELECT v FROM v`, `row_to_json(v)`).
pub(super) unsafe fn reads_whole_row(q: *mut pg_sys::Query, rtindex: pg_sys::Index) -> bool {
    let whole_row = -pg_sys::FirstLowInvalidHeapAttributeNumber;
    let mut attnos: *mut pg_sys::Bitmapset = std::ptr::null_mut();
    for node in [
        (*q).targetList.cast::<pg_sys::Node>(),
        (*q).jointree.cast(),
        (*q).havingQual,
        (*q).returningList.cast(),
    ] {
        if !node.is_null() {
            pg_sys::pull_varattnos(node, rtindex, &mut attnos);
        }
    }
    pg_sys::bms_is_member(whole_row, attnos)
}
