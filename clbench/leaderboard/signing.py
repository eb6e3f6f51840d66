"""Owns optional Ed25519 signatures of leaderboard entries.

A signature is a detached file beside its entry, ``<track>/<method>.json.sig``::

    {"signer": "<name>", "signature": "<base64 Ed25519 signature of the entry file's bytes>"}

and the public keys allowed to sign live in ``leaderboards/allowed_signers``, one per line::

    <name> ed25519 <base64 of the 32-byte raw public key>    # comments after '#'

``validate`` leaves unsigned entries as they are (signing is optional) and rejects an entry whose
signature names an unknown signer or does not verify (the entry changed after signing, or the
signature is forged). Unlike the content hash, which anyone can recompute, a valid signature
shows that the holder of that private key published these exact bytes; it still says nothing
about whether the numbers came from a run (that is what ``reproduce`` checks).

``clbench leaderboard keygen <key file>`` writes a new private key (PEM, mode 0600) and prints its
``allowed_signers`` line; ``clbench leaderboard sign <entry> --key <key file> --signer <name>``
writes the ``.sig`` file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from clbench.errors import ClbenchError

ALLOWED_SIGNERS = "allowed_signers"
SIG_SUFFIX = ".sig"


def signature_path(entry: Path) -> Path:
    return entry.with_name(entry.name + SIG_SUFFIX)


def read_allowed_signers(root: Path) -> dict[str, bytes]:
    """Signer name -> raw public key from ``<root>/allowed_signers`` (empty when absent)."""
    path = root / ALLOWED_SIGNERS
    if not path.is_file():
        return {}
    out: dict[str, bytes] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or fields[1] != "ed25519":
            raise ClbenchError(f"{path}:{n}: expected '<name> ed25519 <base64 public key>', got {line!r}")
        try:
            key = base64.b64decode(fields[2], validate=True)
        except binascii.Error as exc:
            raise ClbenchError(f"{path}:{n}: the public key is not base64 ({exc})") from exc
        if len(key) != 32:
            raise ClbenchError(f"{path}:{n}: an Ed25519 public key has 32 bytes, got {len(key)}")
        out[fields[0]] = key
    return out


def signature_errors(entry: Path, signers: dict[str, bytes]) -> list[str]:
    """Why the signature beside ``entry`` is not acceptable (none when unsigned or valid)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig = signature_path(entry)
    if not sig.is_file():
        return []
    try:
        doc = json.loads(sig.read_text(encoding="utf-8"))
        signer, signature = str(doc["signer"]), base64.b64decode(doc["signature"], validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        return [f"signature file {sig.name} is malformed ({type(exc).__name__}: {exc})"]
    if signer not in signers:
        return [f"signed by {signer!r}, who is not in {ALLOWED_SIGNERS} ({', '.join(sorted(signers)) or 'empty'})"]
    try:
        Ed25519PublicKey.from_public_bytes(signers[signer]).verify(signature, entry.read_bytes())
    except InvalidSignature:
        return [f"signature by {signer!r} does not verify: the entry changed after signing, or the "
                "signature is forged"]
    return []


def keygen(key_file: Path, name: str) -> str:
    """Write a new Ed25519 private key to ``key_file`` (PEM, 0600); return its allowed_signers line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if key_file.exists():
        raise ClbenchError(f"{key_file} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{name} ed25519 {base64.b64encode(public).decode()}"


def sign(entry: Path, key_file: Path, signer: str) -> Path:
    """Sign the entry file's bytes with the PEM private key in ``key_file``; write the ``.sig``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ClbenchError(f"cannot read an unencrypted PEM private key from {key_file}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ClbenchError(f"{key_file} holds a {type(key).__name__}, not an Ed25519 key")
    doc = {"signer": signer, "signature": base64.b64encode(key.sign(entry.read_bytes())).decode()}
    out = signature_path(entry)
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out
