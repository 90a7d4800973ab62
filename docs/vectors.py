#!/usr/bin/env python3
"""Computes the docs/FORMAT.md test vectors with an independent AES-GCM (pyca/cryptography).

The Rust test core/tests/vectors.rs checks the same bytes, so the two implementations
agree on the envelope. Run: python3 docs/vectors.py
"""
import base64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VECTORS = [
    # name, key (hex), key_id, kind, nonce (hex), context, plaintext
    ("generic-empty", "00" * 32, 1, 0, "000000000000000000000000", "", ""),
    ("serial-with-context", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     42, 2, "a0a1a2a3a4a5a6a7a8a9aaab", "erp.stock_lot.serial", "SN0000000000000001"),
    ("gtin-no-context", "ff" * 32, 0x01020304, 1, "0102030405060708090a0b0c", "", "00300010123455"),
    ("lot-utf8", "7f" * 32, 7, 3, "ffffffffffffffffffffffff", "epcis.ilmd.lot", "LÖT-α✓"),
]

for name, key, key_id, kind, nonce, context, plaintext in VECTORS:
    header = bytes([1, kind]) + key_id.to_bytes(4, "big")
    sealed = AESGCM(bytes.fromhex(key)).encrypt(
        bytes.fromhex(nonce), plaintext.encode(), header + context.encode())
    envelope = header + bytes.fromhex(nonce) + sealed
    armor = "dscsa:" + base64.urlsafe_b64encode(envelope).decode().rstrip("=")
    print(f"{name}\n  envelope {envelope.hex()}\n  armor    {armor}")

# Blind index format 1 (docs/BLIND_INDEX.md), with the standard library's HMAC. The
# normalized value is given explicitly: normalization is specified in the document.
import hashlib
import hmac

BLIND_VECTORS = [
    # name, key (hex), key_id, kind, value as given, normalized value, length
    ("serial-16", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     7, 2, "SN0000000001", "SN0000000001", 16),
    ("gtin12-padded-16", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     1, 1, "300010123455", "00300010123455", 16),
    ("expiry-iso-8", "ff" * 32, 0x0102, 4, "2027-03-31", "270331", 8),
    ("lot-trimmed-32", "7f" * 32, 9, 3, " A1B2C3 ", "A1B2C3", 32),
]

for name, key, key_id, kind, _given, normalized, length in BLIND_VECTORS:
    mac = hmac.new(bytes.fromhex(key), b"pg_dscsa blind index 1\x00" + bytes([kind]) + normalized.encode(),
                   hashlib.sha256).digest()
    index = key_id.to_bytes(4, "big") + mac[:length]
    print(f"blind {name}\n  index {index.hex()}")

# Product-identifier pair (kind byte 0x10): GTIN-14 || serial, whatever spelling the unit
# was given in (docs/BLIND_INDEX.md, "Product-identifier index").
PAIR_VECTORS = [
    # name, key (hex), key_id, spelling, GTIN-14, serial, length
    ("pair-element-string", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     3, "(01)00300010123455(21)SN1", "00300010123455", "SN1", 16),
    ("pair-epc-escaped", "42" * 32, 5, "urn:epc:id:sgtin:0614141.812345.6789%2F%26",
     "80614141123458", "6789/&", 16),
]

for name, key, key_id, _spelling, gtin14, serial, length in PAIR_VECTORS:
    mac = hmac.new(bytes.fromhex(key), b"pg_dscsa blind index 1\x00" + bytes([0x10]) + (gtin14 + serial).encode(),
                   hashlib.sha256).digest()
    index = key_id.to_bytes(4, "big") + mac[:length]
    print(f"identifier {name}\n  index {index.hex()}")

# Audit chain format 1 (docs/AUDIT.md, "Record format" and "Chain"), with the standard
# library's HMAC: what a second verifier must compute.
AUDIT_KEY = bytes(range(32))
AUDIT_RECORDS = [
    # seq, ts, origin, epoch, record_type, database, session_user, current_user, client_addr,
    # application, backend_pid, backend_start, statement_id, query_id, statement, operation,
    # key_id, key_name, key_version, field_kind, context, outcome, count, detail, mac_key_id
    (1, 1796000000000001, "primary", 1796000000000000, "access", "erp", "pharmacist", "pharmacist",
     "10.0.0.7", "vrs", 4242, 1795999999000000, 7, -4962594702645316738, None, "decrypt",
     3, "serials", 2, "serial", "erp.unit.serial", "ok", 1000, '{"statement":"completed"}', 9),
    (2, 1796000000500000, "primary", 1796000000000000, "anchor", None, "pg_dscsa worker", None,
     None, None, 77, None, None, None, None, "anchor", None, None, None, None, None, "ok", 0,
     '{"totals":{"erp":{"blind_index":0,"decrypt":1000,"encrypt":0,"failed":0,"key":0}}}', 9),
]


def audit_field(value):
    if value is None:
        return b"\xff\xff\xff\xff"
    text = str(value).encode()
    return len(text).to_bytes(4, "big") + text


prev = bytes(32)
for record in AUDIT_RECORDS:
    encoding = b"pg_dscsa audit record v1\x00" + b"".join(audit_field(v) for v in record)
    mac = hmac.new(AUDIT_KEY, encoding + prev, hashlib.sha256).digest()
    print(f"audit record {record[0]}\n  encoding sha256 {hashlib.sha256(encoding).hexdigest()}\n  mac {mac.hex()}")
    prev = mac
