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
