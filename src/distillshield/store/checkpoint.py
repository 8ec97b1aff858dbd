"""Signed checkpoints (signed tree heads) of the audit log's Merkle tree, in the C2SP formats.

A checkpoint is a signed note (C2SP signed-note) whose text is a transparency-log checkpoint
(C2SP tlog-checkpoint) with one extension line, the time it was made:

    distillshield/audit-log                      origin: the log's name (also the key's name)
    1000                                         tree size: rows 1..1000
    3q0Zr...base64 of the 32-byte tree head...=
    timestamp 1767225600                         Unix seconds
                                                 (blank line)
    — distillshield/audit-log AbCd...            key name, base64(4-byte key id || Ed25519 signature)

The key id is the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key), and the public key is
shared as the signed-note verifier key `name+<key id hex>+<base64(0x01 || public key)>`, so Go's
golang.org/x/mod/sumdb/note can check these notes too. The signing key is a file outside the database:
someone who can rewrite the database cannot sign a checkpoint for the rewritten log.

Checkpoints go to an append-only file (one note per block, blank line between) and, optionally, to a
command's stdin (write-once storage, another machine).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from distillshield.config import CheckpointSettings, ConfigError
from distillshield.store.database import Store
from distillshield.store.merkle import HASH_SIZE

SIG_PREFIX = "\u2014 "  # "— ": an em dash and a space start every signature line
ALG_ED25519 = b"\x01"


class CheckpointError(ValueError):
    """A checkpoint, key or checkpoint file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log `origin` had `size` rows with Merkle tree head `root` at `timestamp`."""

    origin: str
    size: int
    root: bytes
    timestamp: int

    def text(self) -> str:
        """The note text that is signed."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\ntimestamp {self.timestamp}\n"

    def as_dict(self) -> dict[str, object]:
        return {"origin": self.origin, "size": self.size, "root": self.root.hex(), "timestamp": self.timestamp}


def parse_text(text: str) -> Checkpoint:
    """A checkpoint's note text back into its fields."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("a checkpoint needs an origin, a tree size and a root hash, one per line")
    origin, size_s, root_s, *ext = lines[:-1]
    if not origin:
        raise CheckpointError("the checkpoint's origin line is empty")
    if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
        raise CheckpointError(f"the checkpoint's tree size {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except binascii.Error:
        root = b""
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"the checkpoint's root {root_s!r} is not a base64 SHA-256 hash")
    stamps = [e.split(" ", 1)[1] for e in ext if e.startswith("timestamp ")]
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise CheckpointError("the checkpoint has no 'timestamp <unix seconds>' line")
    return Checkpoint(origin, int(size_s), root, int(stamps[0]))


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ALG_ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A public key with its name: checks notes signed by the matching `Signer`."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> str:
        return _key_id(self.name, self.public_key).hex()

    def encode(self) -> str:
        """The signed-note verifier key: name+keyid+base64(0x01 || public key)."""
        return f"{self.name}+{self.key_id}+{base64.b64encode(ALG_ED25519 + self.public_key).decode('ascii')}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)  # base64 may hold "+"; the name and key id never do
        if len(parts) != 3:
            raise CheckpointError("a verifier key reads NAME+KEYID+BASE64 (`distillshield logs pubkey` prints it)")
        name, key_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 33 or raw[:1] != ALG_ED25519:
            raise CheckpointError("the verifier key does not hold an Ed25519 public key")
        v = cls(name, raw[1:])
        if v.key_id != key_id.lower():
            raise CheckpointError(f"the verifier key's id {key_id} does not match its key (expected {v.key_id})")
        return v

    def open(self, note: str) -> Checkpoint:
        """The checkpoint of a signed note, once its signature by this key is checked."""
        text, sep, sigs = note.partition("\n\n")
        if not sep or not sigs:
            raise CheckpointError("the note has no signature (no blank line before the signature lines)")
        text += "\n"
        others = []
        for line in sigs.rstrip("\n").split("\n"):
            if not line.startswith(SIG_PREFIX):
                raise CheckpointError(f"malformed signature line {line[:60]!r}")
            name, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
            try:
                raw = base64.b64decode(b64, validate=True)
            except binascii.Error:
                raw = b""
            if len(raw) < 5:
                raise CheckpointError(f"malformed signature line {line[:60]!r}")
            if name != self.name or raw[:4].hex() != self.key_id:
                others.append(f"{name} key {raw[:4].hex()}")
                continue
            try:
                Ed25519PublicKey.from_public_bytes(self.public_key).verify(raw[4:], text.encode("utf-8"))
            except InvalidSignature:
                raise CheckpointError(
                    f"bad signature by key {self.key_id}: the checkpoint was forged or altered"
                ) from None
            cp = parse_text(text)
            if cp.origin != self.name:
                raise CheckpointError(f"the checkpoint is for log {cp.origin!r}, not {self.name!r}")
            return cp
        raise CheckpointError(
            f"not signed by the expected key {self.name} {self.key_id} but by {', '.join(others)} "
            "(a replaced signing key?)"
        )


class Signer:
    """An Ed25519 private key with its name (the log's origin): signs checkpoints."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self.name = name
        self._key = key
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, public)

    def sign(self, cp: Checkpoint) -> str:
        """The signed note of `cp`."""
        if cp.origin != self.name:
            raise CheckpointError(f"this key signs for {self.name!r}, not {cp.origin!r}")
        text = cp.text()
        sig = _key_id(self.name, self.verifier.public_key) + self._key.sign(text.encode("utf-8"))
        return f"{text}\n{SIG_PREFIX}{self.name} {base64.b64encode(sig).decode('ascii')}\n"


def generate_key_file(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key written to `path` (PEM, PKCS#8) with mode 0600; never overwrites a file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CheckpointError(
            f"{path} already exists; it is not overwritten (remove it first to replace the key)"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot create the signing key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def load_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise CheckpointError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def signer_from_settings(cfg: CheckpointSettings, *, create: bool = True) -> Signer | None:
    """The configured signer (the key file created when absent and `create`); None when no key is set."""
    if cfg.key_file is None:
        return None
    path = Path(cfg.key_file)
    try:
        key = load_key_file(path) if path.exists() or not create else generate_key_file(path)
    except CheckpointError as exc:
        raise ConfigError(f"checkpoints.key_file: {exc}") from None
    return Signer(cfg.origin, key)


def load_verifier(source: str, name: str | None = None) -> Verifier:
    """A verifier from a verifier key string, a file holding one, or a PEM public key file (named `name`)."""
    text = source
    path = Path(source)
    if "+" not in source or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read the public key {source}: {exc}") from None
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise CheckpointError(f"{source} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError(f"{source} is not an Ed25519 public key")
        if name is None:
            raise CheckpointError("a PEM public key has no name: give the verifier key (`distillshield logs pubkey`)")
        return Verifier(name, key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return Verifier.parse(text)


# -- the checkpoint file ------------------------------------------------------------------------------


def split_notes(text: str) -> list[str]:
    """The notes of a checkpoint file, in file order (each: text, blank line, signature lines)."""
    notes: list[str] = []
    body: list[str] = []
    sigs: list[str] = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith(SIG_PREFIX):
            if not body:
                raise CheckpointError(f"line {n}: a signature line without a checkpoint before it")
            sigs.append(line)
        elif line == "":
            if sigs:
                notes.append("\n".join(body) + "\n\n" + "\n".join(sigs) + "\n")
                body, sigs = [], []
        elif sigs:
            raise CheckpointError(f"line {n}: text right after a signature line (a blank line must come first)")
        else:
            body.append(line)
    if sigs:
        notes.append("\n".join(body) + "\n\n" + "\n".join(sigs) + "\n")
    elif body:
        raise CheckpointError("the file ends with an unsigned checkpoint (cut short?)")
    return notes


def read_notes(path: Path) -> list[str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist or is not a file")
    try:
        return split_notes(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a checkpoint file (not UTF-8 text)") from None


def append_note(path: Path, note: str) -> None:
    """Add one note to the file, opened for appending only, and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (note + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


async def send_to_command(command: str, note: str, timeout_s: float) -> None:
    """Run `command` (no shell) with the note on stdin; CheckpointError when it fails."""
    argv = shlex.split(command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise CheckpointError(f"cannot run checkpoints.command {argv[0]!r}: {exc.strerror}") from None
    try:
        _, err = await asyncio.wait_for(proc.communicate(note.encode("utf-8")), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CheckpointError(f"checkpoints.command did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        raise CheckpointError(f"checkpoints.command exited with {proc.returncode}: {last}")


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: str


class Checkpointer:
    """Signs the store's current tree head and hands the note to the configured file and command."""

    def __init__(
        self, signer: Signer, file: Path | None = None, command: str | None = None, command_timeout_s: float = 30.0
    ) -> None:
        self.signer = signer
        self.file = file
        self.command = command
        self.command_timeout_s = command_timeout_s
        self.last_size: int | None = None

    @classmethod
    def from_settings(cls, cfg: CheckpointSettings) -> Checkpointer | None:
        signer = signer_from_settings(cfg)
        if signer is None:
            return None
        return cls(signer, Path(cfg.file) if cfg.file else None, cfg.command, cfg.command_timeout_s)

    async def checkpoint(self, store: Store, *, force: bool = False) -> SignedCheckpoint | None:
        """Sign and publish the tree head now; None (nothing written) when the log has not grown since the
        last one, unless `force`."""
        size, root = await store.tree_head()
        if not force and (size == 0 or size == self.last_size):
            return None
        cp = Checkpoint(self.signer.name, size, root, int(time.time()))
        note = self.signer.sign(cp)
        if self.file is not None:
            try:
                await asyncio.to_thread(append_note, self.file, note)
            except OSError as exc:
                raise CheckpointError(f"cannot append to the checkpoint file {self.file}: {exc.strerror}") from None
        if self.command is not None:
            await send_to_command(self.command, note, self.command_timeout_s)
        self.last_size = size
        return SignedCheckpoint(cp, note)
