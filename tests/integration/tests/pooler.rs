//! Keys behind a transaction pooler (pgbouncer, pool_mode = transaction, started by
//! scripts/test.sh): transaction-scoped keys, including the ones triggers load on their
//! own, end with their transaction, so no client ever runs on a server session that
//! still holds another client's key, whichever role that client is.

use std::thread;

use pg_dscsa_itest::{erp_db, pooled, READER, WRITER};

const CLIENTS: usize = 8;
const TRANSACTIONS: usize = 150;

#[test]
fn no_transaction_sees_another_clients_keys() {
    let (db, mut su) = erp_db("pooler", 100);
    su.batch_execute(
        "CREATE TABLE pooled_unit (id bigserial PRIMARY KEY, serial text UNIQUE);
         CALL dscsa.protect_column('pooled_unit', 'serial', kind => 'serial', mode => 'in_place', blind_index_key => 'bk');
         INSERT INTO pooled_unit (serial) SELECT dscsa.dscsa_encrypt_serial('SEED' || i) FROM generate_series(1, 50) i;
         GRANT SELECT, INSERT ON pooled_unit TO itest_writer, itest_reader;
         GRANT USAGE ON SEQUENCE pooled_unit_id_seq TO itest_writer;",
    )
    .expect("table");
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let db = db.clone();
            thread::spawn(move || {
                let user = if i % 2 == 0 { WRITER } else { READER };
                let mut c = pooled(&db, user);
                for n in 0..TRANSACTIONS {
                    let mut tx = c.transaction().expect("begin");
                    let inherited: i64 = tx
                        .query_one("SELECT count(*) FROM dscsa.loaded_keys()", &[])
                        .expect("loaded keys")
                        .get(0);
                    assert_eq!(inherited, 0, "{user} transaction {n} started with someone's keys");
                    tx.batch_execute(
                        "SET LOCAL dscsa.key_name = 'k'; SELECT dscsa.load_key('k', 'transaction');",
                    )
                    .expect("load");
                    if user == WRITER {
                        // The blind-index trigger loads bk on its own, for this transaction.
                        tx.execute(
                            "INSERT INTO public.pooled_unit (serial) VALUES (dscsa.dscsa_encrypt_serial($1))",
                            &[&format!("C{i}-T{n}")],
                        )
                        .expect("insert");
                    } else {
                        tx.batch_execute("SELECT dscsa.load_key('bk', 'transaction')")
                            .expect("load bk");
                        let hits: i64 = tx
                            .query_one(
                                "SELECT count(*) FROM public.pooled_unit
                                  WHERE serial_bidx = ANY (dscsa.blind_index_candidates($1, 'bk', 'serial'))
                                    AND dscsa.dscsa_decrypt(serial) = $1",
                                &[&format!("SEED{}", 1 + n % 50)],
                            )
                            .expect("lookup")
                            .get(0);
                        assert_eq!(hits, 1);
                    }
                    let foreign: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM dscsa.loaded_keys() WHERE loaded_by <> current_user::regrole OR scope <> 'transaction'",
                            &[],
                        )
                        .expect("own keys")
                        .get(0);
                    assert_eq!(foreign, 0, "{user}: keys of another role or scope in its transaction");
                    if n % 10 == 9 {
                        tx.rollback().expect("rollback");
                    } else {
                        tx.commit().expect("commit");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client");
    }
    let written: i64 = su
        .query_one(
            "SELECT count(*) FROM pooled_unit WHERE dscsa_decrypt(serial) LIKE 'C%'",
            &[],
        )
        .expect("count")
        .get(0);
    let expected = (CLIENTS / 2 * TRANSACTIONS * 9 / 10) as i64;
    assert_eq!(
        written, expected,
        "committed inserts, none of the rolled back ones"
    );
}
