"""A node's accounts: the clear-text credentials files and the hashed password files."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import attrs
import orjson

from redy import pki
from redy.brokers.config import NodeBroker
from redy.errors import BrokerError


@attrs.frozen
class Credentials:
    """Clear-text passwords of a node's local accounts. (Peers have no password: they prove
    who they are with their certificate on the grid listener.)"""

    users: Mapping[str, str]

    def password(self, user: str) -> str:
        try:
            return self.users[user]
        except KeyError:
            raise BrokerError(
                f"no account {user!r}; expected one of {sorted(self.users)}"
            ) from None


def load_credentials(path: Path | str) -> Credentials:
    """Read a node's credentials.json."""
    try:
        data = orjson.loads(Path(path).read_bytes())
        return Credentials(users={str(k): str(v) for k, v in dict(data["users"]).items()})
    except OSError as exc:
        raise BrokerError(f"cannot read credentials {path}: {exc.strerror or exc}") from None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BrokerError(
            f"cannot read credentials {path}: expected the JSON a launch writes, "
            f'{{"users": {{name: password}}}} ({type(exc).__name__}: {exc})'
        ) from None


def write_private(path: Path, data: bytes) -> Path:
    """Write `path` readable by its owner only, atomically (a reader never sees half a file)."""
    tmp = _private_tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _private_tmp(path: Path) -> Path:
    """A new empty file next to `path`, mode 0600, with a name no other writer uses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return tmp


def password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file: clear text into a private temporary file, hashed there by
    `mosquitto_passwd -U` in one call, then moved into place (clear text never sits at `path`)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise BrokerError("mosquitto_passwd not found: install the Debian package mosquitto")
    tmp = _private_tmp(path)
    try:
        tmp.write_bytes("".join(f"{u}:{p}\n" for u, p in users.items()).encode())
        done = (  # mosquitto_passwd fails on an empty file; nothing to hash then
            subprocess.run([tool, "-U", str(tmp)], capture_output=True, text=True, check=False)
            if users
            else subprocess.CompletedProcess([], 0)
        )
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_passwd failed on {path}: {done.stderr.strip()}")
        tmp.chmod(0o644)  # hashed; readable by a container's mosquitto user
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unit_credentials_path(broker: NodeBroker, unit: str) -> Path:
    """The file a unit process is handed: its own password, nothing else."""
    return broker.node_dir / "units" / f"{unit}.json"


def grid_identity(node_dir: Path) -> pki.Identity:
    """The node's TLS identity as `render` leaves it in the node's folder."""
    return pki.Identity(
        ca=node_dir / "grid-ca.crt", cert=node_dir / "grid.crt", key=node_dir / "grid.key"
    )
