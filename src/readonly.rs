//! Read-only SPI queries. pgrx's `Spi::get_one*` run their query in read-write mode,
//! which assigns the transaction an id: an error on a hot standby ("cannot assign
//! TransactionIds during recovery"), and on a primary an XID and a commit record spent
//! on every read. Reads go through here; tests/integration/tests/static_sql.rs keeps it so.

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::spi::{Spi, SpiResult};

/// The first column of the first row of a read-only query (None for no row or NULL).
pub fn one<T: FromDatum + IntoDatum>(
    query: &str,
    args: &[DatumWithOid<'_>],
) -> SpiResult<Option<T>> {
    Spi::connect(|c| {
        let table = c.select(query, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one::<T>()
    })
}
