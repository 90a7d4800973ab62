-- The complete SQL surface of the extension, so that any change to it is deliberate.
SET search_path = pg_catalog;
\dx+ pg_dscsa

-- Volatility, strictness, parallel safety and security of every function.
SELECT p.oid::regprocedure AS function,
       CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END AS volatility,
       p.proisstrict AS strict,
       CASE p.proparallel WHEN 's' THEN 'safe' WHEN 'r' THEN 'restricted' ELSE 'unsafe' END AS parallel,
       p.prosecdef AS security_definer,
       p.proconfig AS config
  FROM pg_proc p
 WHERE p.pronamespace = 'dscsa'::regnamespace
 ORDER BY p.oid::regprocedure::text;

-- Who may execute what.
SELECT p.oid::regprocedure::text AS function,
       string_agg(a.grantee::regrole::text, ', ' ORDER BY a.grantee::regrole::text) AS granted_to
  FROM pg_proc p, aclexplode(p.proacl) a
 WHERE p.pronamespace = 'dscsa'::regnamespace AND a.grantee <> p.proowner
 GROUP BY 1
 ORDER BY 1;
SELECT c.relname, a.privilege_type, a.grantee::regrole
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'dscsa'::regnamespace AND a.grantee <> c.relowner
 ORDER BY 1, 2, 3;

-- Every routine meant for users (not _-prefixed) has a description (\df+, \dd): none
-- listed here.
SELECT p.oid::regprocedure::text AS undocumented
  FROM pg_proc p
 WHERE p.pronamespace = 'dscsa'::regnamespace AND p.proname !~ '^_'
   AND obj_description(p.oid, 'pg_proc') IS NULL
 ORDER BY 1;
