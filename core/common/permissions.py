"""Who may read archived mail: owner only, or owner and one configured group.

Mail and the state database are confidential, whatever umask the operator's
shell or init system hands mailpipe. So every mailpipe process sets its own
umask before it creates anything: ``077`` (files 0600, directories 0700) by
default, ``027`` (0640 / 0750) with ``[server] group = "NAME"``, which also
gives the data directory and each filesystem archive that group with the
set-group-ID bit, so that everything created below them inherits it (a
vendor's reader in that group can read the archive, nobody else can).

Files created before (an older version, another umask) are brought in line
at start where that is cheap: the data directory's own files, the spool
(including the reusable files in ``spool/free/``) and the state database.
An existing archive is not walked (it may hold millions of files):
``chmod -R go-rwx`` it once by hand.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

from mailpipe.errors import ConfigError

log = logging.getLogger("mailpipe.permissions")

PRIVATE_UMASK = 0o077
GROUP_UMASK = 0o027


def group_id(group: str | None) -> int | None:
    """The gid of ``[server] group``; a clear error when it does not exist."""
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"[server] group {group!r} does not exist on this machine; create it "
            f"(`groupadd {group}`) or remove the setting to keep the archive readable by its owner only"
        ) from None


def apply_umask(gid: int | None) -> None:
    os.umask(PRIVATE_UMASK if gid is None else GROUP_UMASK)


def allowed_bits(gid: int | None) -> int:
    return 0o7777 & ~(PRIVATE_UMASK if gid is None else GROUP_UMASK)


def secure_directory(path: Path, gid: int | None) -> None:
    """Create ``path`` if needed, with the owner-only or group mode (and the
    group, set-group-ID so that what is created inside inherits it)."""
    path.mkdir(parents=True, exist_ok=True)
    if gid is not None:
        if os.stat(path).st_gid != gid:
            os.chown(path, -1, gid)
        os.chmod(path, 0o750 | stat.S_ISGID)
    else:
        os.chmod(path, 0o700)


def restrict_tree(root: Path, gid: int | None) -> None:
    """Take group/world bits the setting does not allow off everything under
    ``root`` (and give it the group); cheap when nothing needs changing."""
    allowed = allowed_bits(gid)
    for directory, directories, files in os.walk(root):
        for name in [*directories, *files]:
            restrict(Path(directory) / name, gid, allowed)


def restrict(path: Path, gid: int | None, allowed: int | None = None) -> None:
    allowed = allowed_bits(gid) if allowed is None else allowed
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(status.st_mode):
        return
    if gid is not None and status.st_gid != gid:
        os.chown(path, -1, gid)
    mode = stat.S_IMODE(status.st_mode)
    wanted = mode & allowed
    if stat.S_ISDIR(status.st_mode) and gid is not None:
        wanted |= stat.S_ISGID
    if wanted != mode:
        os.chmod(path, wanted)


def secure_data_dir(data_dir: Path, gid: int | None) -> None:
    """At start: the umask, the data directory, and what already lies in it.

    A directory that belongs to someone else (a data_dir made by root for the
    service) cannot be changed: mailpipe says so and runs on, since its own
    files are private by the umask anyway."""
    apply_umask(gid)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        secure_directory(data_dir, gid)
        for entry in os.scandir(data_dir):
            restrict(Path(entry.path), gid)
        spool = data_dir / "spool"
        if spool.is_dir():
            restrict_tree(spool, gid)
    except PermissionError as error:
        log.warning(
            "cannot set the permissions of the data directory or a file in it; check who may read it",
            extra={"path": str(data_dir), "error": str(error)},
        )
