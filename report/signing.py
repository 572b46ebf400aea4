"""Ed25519 keys and detached signatures over a report's canonical JSON bytes.

The crypto is the ``cryptography`` package's; this module only reads and writes keys and names
things. Files:

- private key: PKCS#8 PEM, unencrypted, created with mode 0600 (owner read/write only); a
  key file that others can read is refused, as ssh does;
- public key: SubjectPublicKeyInfo PEM;
- signature: the 64-byte Ed25519 signature in base64 on one line (``report.json.sig``), over
  ``report.jsonview.canonical_json(report)`` — the parsed report re-serialised canonically, so a
  re-indented copy still verifies while any change of content does not.

A key's **fingerprint** is the SHA-256 of its 32 raw public-key bytes, in hex; a signed report
names it in R9 and R13, so a verifier can tell "wrong key" from "altered report".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.durable_files import flush_folder, in_device_folder
from ledger.errors import BadInputError

ALGORITHM = "Ed25519"
PRIVATE_SUFFIX, PUBLIC_SUFFIX = ".key", ".pub"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key_pair(prefix: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub``; refuse to overwrite either.

    Returns (private path, public path, fingerprint).
    """
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise BadInputError(f"got key prefix {text!r}, but it must end in a file name, e.g. "
                            f"keys/signing (for keys/signing{PRIVATE_SUFFIX} and "
                            f"keys/signing{PUBLIC_SUFFIX})")
    if in_device_folder(text):
        raise BadInputError(f"got key prefix {text!r}, but keys cannot go under /dev or /proc: "
                            f"give a path in an ordinary folder")
    private_path = Path(f"{text}{PRIVATE_SUFFIX}")
    public_path = Path(f"{text}{PUBLIC_SUFFIX}")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise BadInputError(f"{path} exists: refusing to overwrite a key")
        if not path.parent.is_dir():
            raise BadInputError(f"cannot write {path}: folder {path.parent} does not exist")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BadInputError:
        private_path.unlink()
        raise
    try:
        flush_folder(private_path.parent)  # both names, so that a power loss cannot take them
    except OSError as error:
        private_path.unlink()
        public_path.unlink()
        raise BadInputError(f"cannot write {private_path}: {error.strerror or error}") from None
    return private_path, public_path, fingerprint(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) holding ``data``, flushed to disk; on any
    failure — a full disk, say — remove it, so that no empty or cut key is left behind under
    the key's name, where the next ``keygen`` would refuse to replace it."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise BadInputError(f"{path} exists: refusing to overwrite a key") from None
    except OSError as error:
        raise BadInputError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        path.unlink(missing_ok=True)
        raise BadInputError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        path.unlink(missing_ok=True)
        raise


SMALL_FILE_BYTES = 1 << 20
"""Most bytes a key or a signature file may hold."""


def read_regular_file(path: str | os.PathLike[str], what: str,
                      limit: int = SMALL_FILE_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; BadInputError for a
    missing file, a named pipe (which would block), a device such as /dev/zero (which never
    ends) or anything larger. Raises FileNotFoundError through for callers that word it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise BadInputError(f"cannot read {what} {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise BadInputError(f"cannot read {what} {path}: not a regular file (a folder, "
                                f"pipe or device)")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadInputError(f"cannot read {what} {path}: larger than {limit:,} bytes")
    return data


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return read_regular_file(path, what)
    except FileNotFoundError:
        raise BadInputError(f"cannot read {what} {path}: no such file") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key written by ``ledger keygen``; refuse one that others can read, and
    name a public key given in its place as one (whatever its mode: a public key is 0644)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError as error:
        raise BadInputError(f"cannot read private key {path}: {error.strerror}") from None
    data = _read(path, "private key")
    if _is_public_key(data):
        raise BadInputError(f"{path} is a public key, not a private key: sign with the "
                            f"private key ledger keygen wrote beside it (PREFIX{PRIVATE_SUFFIX})")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInputError(f"private key {path} is readable by others (mode "
                            f"{stat.S_IMODE(mode):o}): chmod 600 it first")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadInputError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInputError(f"{path} is not an Ed25519 private key")
    return key


def _is_public_key(data: bytes) -> bool:
    """True when ``data`` is a PEM public key (what ``PREFIX.pub`` holds)."""
    try:
        serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM public key (``PREFIX.pub``)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadInputError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadInputError(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """The signature file's content: base64 of the Ed25519 signature, and a newline."""
    return base64.b64encode(key.sign(message)) + b"\n"


def signature_bytes(text: bytes) -> bytes | None:
    """The raw signature from a signature file's content, or None when it is not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None


def verify_signature(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` (raw 64 bytes) is ``key``'s signature of ``message``."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
