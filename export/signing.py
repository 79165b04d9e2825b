"""Release signatures: Ed25519 over the release manifest.

The research office's signing key lives on premises (``RIDL_HOME/signing/release-signing.key``,
mode 0600, or ``RIDL_SIGNING_KEY`` as PEM); only its public key leaves, with every release and
in the release notes, so a researcher can check that the manifest they hold is the one the
research office published, byte for byte.

Engines floor (``export/``): :mod:`export.release` signs at publication; :mod:`export.pull`
verifies on the researcher's side.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ridl import settings
from ridl.errors import ConfigError, RidlError

KEY_ENV = "RIDL_SIGNING_KEY"


class SignatureError(RidlError):
    """A manifest does not match its signature, or the key is not the expected one."""


def signing_key_path() -> Path:
    """The key file, ``RIDL_HOME/signing/release-signing.key`` (PKCS#8 PEM, mode 0600)."""
    return settings.ridl_home() / "signing" / "release-signing.key"


def load_or_create_signing_key() -> Ed25519PrivateKey:
    """The research office's key: from the environment, its 0600 file, or created once.

    ``RIDL_SIGNING_KEY`` (PEM) wins over the file; a new key is written with mode 0600 in a
    0700 folder, and a key another process wrote first is used instead.

    Raises:
        ConfigError: the key file is readable by group or others, or the key is not Ed25519.
        ValueError: the PEM cannot be parsed (from ``cryptography``).
    """
    pem = os.environ.get(KEY_ENV)
    if pem:
        return _private_from_pem(pem.encode())
    path = signing_key_path()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"the release signing key is readable by others (mode {oct(mode)}); "
                f"run: chmod 600 {path}"
            )
        return _private_from_pem(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use that one
        return _private_from_pem(path.read_bytes())
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return key


def _private_from_pem(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the release signing key is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key (of a private key, or itself) as SubjectPublicKeyInfo PEM text."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public(pem: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text or bytes.

    Raises:
        SignatureError: the text is not a PEM public key, or not an Ed25519 one.
    """
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        raise SignatureError("the public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


def fingerprint(pem: str | bytes) -> str:
    """SHA-256 of the raw public key, short enough to read aloud and compare with the notes.

    ``ed25519:`` and 32 hex characters (the first 128 bits of the digest).

    Raises:
        SignatureError: ``pem`` is not an Ed25519 public key (see :func:`load_public`).
    """
    raw = load_public(pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """A base64 Ed25519 signature of ``data`` (64 bytes, 88 base64 characters)."""
    return base64.b64encode(key.sign(data)).decode()


def verify(public: str | bytes, data: bytes, signature_b64: str) -> None:
    """Raise SignatureError unless ``signature_b64`` signs ``data`` under ``public``.

    ``public`` is PEM text or bytes; surrounding whitespace of the signature is ignored.

    Raises:
        SignatureError: the signature does not verify or is not base64, or the public key is
            not an Ed25519 PEM key.
    """
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
        load_public(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError(
            "the manifest does not match its signature: it was changed after the research "
            "office signed it (or the public key is not the research office's); do not use it, "
            "ask the research office for the release manifest again"
        ) from None
