"""The evidence bundle: `evidence.json` beside a report lists the SHA-256 of every input (each audit's files,
the criteria) and every output (report.html, .pdf, .json), so a reviewer can verify later that nothing
changed; optionally signed with the officer's Ed25519 key (`cryptography`, installed with Flower).

Format (`fedclip-evidence/1`):

    {"format": "fedclip-evidence/1", "created": ISO-8601, "fedclip_version": ...,
     "files": [{"role": "audit 1" | "criteria" | "report", "path": relative to evidence.json,
                "sha256": hex, "bytes": n}, ...],
     "inputs": [each audit's provenance block: software, input data fingerprints],
     "signature": {"algorithm": "Ed25519", "public_key": PEM, "value": hex}  # only when signed}

The signature covers the canonical JSON (sorted keys, no spaces) of everything but "signature".
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedclip import __version__, io
from fedclip.audits.results import AuditError

EVIDENCE_FILE = "evidence.json"
FORMAT = "fedclip-evidence/1"


def _entry(role: str, path: Path, base: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"role": role, "path": os.path.relpath(path.resolve(), base.resolve()),
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in doc.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":")).encode()


def _private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AuditError(f"{path}: not an unencrypted PEM private key ({e}); make one with "
                         "`fedclip keygen --out KEY`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: an Ed25519 key is needed to sign evidence; make one with `fedclip keygen`")
    return key


def write(out: Path, inputs: list[tuple[str, Path]], outputs: list[Path], provenance: list[dict[str, Any]],
          sign_key: Path | None = None) -> Path:
    """evidence.json in `out`: hashes of `inputs` (role, path) and `outputs`, signed with `sign_key`."""
    from cryptography.hazmat.primitives import serialization

    files = [_entry(role, p, out) for role, p in inputs if p.is_file()]
    files += [_entry("report", p, out) for p in outputs]
    doc: dict[str, Any] = {"format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                           "fedclip_version": __version__, "files": files, "inputs": provenance}
    if sign_key is not None:
        key = _private_key(Path(sign_key))
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        doc["signature"] = {"algorithm": "Ed25519", "public_key": pub, "value": key.sign(_canonical(doc)).hex()}
    return io.write_json(out / EVIDENCE_FILE, doc)


def verify(path: str | Path, public_key: str | Path | None = None) -> dict[str, Any]:
    """Check every listed file's hash and, if signed, the signature (against `public_key` when given: a
    bundle's own key proves only that someone signed it). Raises AuditError naming what changed."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path)
    path = path / EVIDENCE_FILE if path.is_dir() else path
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AuditError(f"{path}: no evidence.json here; every `fedclip report` and `fedclip compare` writes "
                         "one beside the report") from None
    except json.JSONDecodeError as e:
        raise AuditError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if doc.get("format") != FORMAT:
        raise AuditError(f"{path}: format {doc.get('format')!r} is not {FORMAT}")
    changed = []
    for f in doc["files"]:
        p = path.parent / f["path"]
        if not p.is_file():
            changed.append(f"{f['path']} is missing")
        elif hashlib.sha256(p.read_bytes()).hexdigest() != f["sha256"]:
            changed.append(f"{f['path']} changed")
    if changed:
        raise AuditError(f"{path}: {len(changed)} file(s) differ from the evidence: {'; '.join(changed[:5])}")
    signed = "signature" in doc
    if signed:
        sig = doc["signature"]
        pem = Path(public_key).read_bytes() if public_key else sig["public_key"].encode()
        try:
            load_pem_public_key(pem).verify(bytes.fromhex(sig["value"]), _canonical(doc))
        except (InvalidSignature, ValueError) as e:
            against = " with the given public key" if public_key else ""
            raise AuditError(f"{path}: the signature does not verify{against} ({type(e).__name__})") from None
    elif public_key:
        raise AuditError(f"{path}: the bundle is not signed, but a public key was given to check it against")
    return {"files": len(doc["files"]), "signed": signed, "checked_against": "given key" if public_key else
            ("the bundle's own key" if signed else None)}


def keygen(out: str | Path) -> tuple[Path, Path]:
    """An Ed25519 key pair for signing evidence: OUT (private, PEM, owner-only) and OUT.pub (public, PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    if out.exists():
        raise AuditError(f"{out} exists; choose another path (a key is never overwritten)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    priv = io.write_bytes(out, private, mode=0o600)  # owner-only before it appears under its name
    return priv, io.write_bytes(out.with_name(out.name + ".pub"), public)
