-- pg_dscsa 0.3.0 -> 0.4.0, the hand-written part (CHANGELOG.md). New and changed
-- routines come from the routine files of sql/ that follow in the generated script
-- (scripts/gen_upgrade.sh).
-- tests/integration/tests/upgrade.rs checks that the result equals a fresh 0.4.0
-- installation object by object.
--
-- Behaviour change an updated installation should know of: dscsa_encrypt_gtin, _serial,
-- _lot and _expiry now refuse values that break the GS1 rules (22023) and store GTINs as
-- GTIN-14; a superuser can SET dscsa.gs1_validation = off for legacy data (docs/GS1.md).

-- protect_column carries every index and UNIQUE constraint that contains the column
-- (not only a single-column one): described in a new registry column. Rows written by
-- 0.3.0 keep carried_index (read by dscsa._carried_list).
ALTER TABLE dscsa.protected_columns ADD COLUMN carried_indexes jsonb
    CHECK (jsonb_typeof(carried_indexes) = 'array');
DROP FUNCTION dscsa._carried_index(regclass, name);
