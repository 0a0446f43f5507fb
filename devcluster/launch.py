"""Enter a container: build its root in a new mount namespace, take its user, exec its command.

Run by the process kubelet as ``python -I -S launch.py PLAN.json [ARGV...]`` (standard library
only, so it starts fast). ``mode: start`` (a new container):

1. ``unshare(CLONE_NEWNS)``, every mount private (nothing propagates back to the host);
2. a tmpfs at ``root``: the host's top-level directories bind-mounted into it (they stand in for
   the image's files), a fresh ``/dev`` (a few device nodes, ``/dev/pts``, a 64 MiB ``/dev/shm``);
3. the plan's binds in order (the image's own directories, the volumes at their mountPaths,
   read-only where asked, the termination-message file). Mountpoints are created inside the
   root, never on the host: a host directory that needs a new entry is replaced, inside the
   namespace only, by a tmpfs holding bind mounts of its entries ("shadowed");
4. ``chroot`` into the root, ``chdir`` to the working directory, ``setgroups``/``setgid``/
   ``setuid``; a non-root user keeps one capability, CAP_DAC_READ_SEARCH, because the host's
   files stand in for an image whose files are readable (writing follows ownership);
5. ``execvpe`` the command with the environment this process got.

A failure before the exec is written to ``sync_fd`` (the kubelet reports it as StartError); a
successful exec closes it. ``mode: join`` runs a command in a running container (exec probes,
preStop hooks): the container's mount namespace and root (``/proc/PID/root``), same user.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 8, 24, 47, 2
CAP_DAC_READ_SEARCH = 2
CAP_VERSION_3 = 0x20080522
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty", "ptmx")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}  # fmt: skip
SHM_BYTES = 64 * 1024 * 1024  # what container runtimes give /dev/shm

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def umount(target: str, lazy: bool = True) -> None:
    """umount2(2), detached by default."""
    _check(_libc.umount2(target.encode(), MNT_DETACH if lazy else 0), f"umount {target}")


def private_mount_namespace() -> None:
    """Move this (single-threaded) process into a new mount namespace whose mounts are all private."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def bind(source: str, target: str, read_only: bool = False) -> None:
    """A recursive bind mount; read-only on its top mount when asked (as Kubernetes 1.20 does)."""
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


class Root:
    """The container's root being built at ``path`` (a host directory, a tmpfs in our namespace)."""

    def __init__(self, path: str) -> None:
        self.path = path.rstrip("/")
        # container path -> "own" (our tmpfs: create freely), "host" (a host bind: shadow before
        # creating in it), "vol" (a volume or image dir: create in it, as a runtime does)
        self.kinds: dict[str, str] = {"/": "own"}

    def full(self, path: str) -> str:
        return self.path + (path if path != "/" else "")

    def kind(self, path: str) -> str:
        while path not in self.kinds:
            path = os.path.dirname(path)
        return self.kinds[path]

    def resolve(self, path: str) -> str:
        """``path`` with symlinks resolved inside the root (never escaping it), like runc's securejoin."""
        todo = [c for c in path.split("/") if c]
        out: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            full = self.full("/" + "/".join([*out, part]))
            if os.path.islink(full):
                hops += 1
                if hops > 40:
                    raise OSError(40, f"too many levels of symbolic links: {path}")
                target = os.readlink(full)
                if target.startswith("/"):
                    out = []
                todo = [c for c in target.split("/") if c] + todo
                continue
            out.append(part)
        return "/" + "/".join(out)

    def populate(self, host_dir: str, at: str, names: list[str]) -> None:
        """Entries ``names`` of ``host_dir`` into the (own) directory ``at``: dirs and files bound, links copied."""
        for name in names:
            src = os.path.join(host_dir, name)
            dst_path = os.path.join(at, name)
            dst = self.full(dst_path)
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o755)
            else:
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
            bind(src, dst)
            self.kinds[dst_path] = "host"

    def shadow(self, path: str) -> None:
        """Replace the host directory ``path`` in the root by a tmpfs with bind mounts of its entries."""
        full = self.full(path)
        st = os.stat(full)
        names = sorted(os.listdir(full))
        mount("tmpfs", full, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={st.st_mode & 0o7777:o},size=1m")
        os.chown(full, st.st_uid, st.st_gid)
        self.kinds[path] = "own"
        self.populate(path, path, names)

    def makedirs(self, path: str, is_file: bool = False) -> str:
        """Create ``path`` (its parents too) inside the root; returns it with symlinks resolved."""
        target = self.resolve(path)
        parts = [c for c in target.split("/") if c]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = os.path.join(cur, part)
            if not os.path.lexists(self.full(nxt)):
                if self.kind(cur) == "host":
                    self.shadow(cur)
                if is_file and i == len(parts) - 1:
                    os.close(os.open(self.full(nxt), os.O_CREAT | os.O_WRONLY, 0o644))
                else:
                    os.mkdir(self.full(nxt), 0o755)
            cur = nxt
        return target

    def build(self, skip: list[str]) -> None:
        """tmpfs root, the host's top-level entries, a fresh /dev."""
        mount("tmpfs", self.path, "tmpfs", MS_NOSUID, "mode=755,size=4m")
        names = sorted(os.listdir("/"))
        for name in names:
            if name in ("dev", *skip):
                os.mkdir(self.full("/" + name), 0o755)
        self.populate("/", "/", [n for n in names if n not in ("dev", *skip)])
        copy = self.full(self.path)  # the root itself, seen again through the host dir that holds it
        if os.path.ismount(copy):
            umount(copy)
        dev = self.full("/dev")
        mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=1m")
        self.kinds["/dev"] = "own"
        self.populate("/dev", "/dev", [n for n in (*DEV_NODES, "pts") if os.path.exists("/dev/" + n)])
        for name, target in DEV_LINKS.items():
            os.symlink(target, os.path.join(dev, name))
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={SHM_BYTES}")
        self.kinds["/dev/shm"] = "vol"

    def add_binds(self, binds: list[dict[str, Any]]) -> None:
        """Mountpoints first (those outside every other bind: shadowing then cannot hide a bind),
        then each bind in order, its mountpoint created inside the binds before it when nested."""
        for b in binds:
            mode = b.get("make_source_mode")
            if mode is not None and not os.path.lexists(b["source"]):  # a subPath the kubelet creates
                os.makedirs(b["source"], mode)
                os.chmod(b["source"], mode)
        files = [not os.path.isdir(b["source"]) for b in binds]
        targets = [self.resolve(b["target"]) for b in binds]
        for t, is_file in zip(targets, files, strict=True):
            if not any(o != t and t.startswith(o.rstrip("/") + "/") for o in targets):
                self.makedirs(t, is_file=is_file)
        for b, is_file in zip(binds, files, strict=True):
            target = self.makedirs(b["target"], is_file=is_file)
            bind(b["source"], self.full(target), read_only=bool(b.get("read_only")))
            self.kinds[target] = "vol"


def _capset_only(cap: int) -> None:
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    bit = 1 << cap
    data = (ctypes.c_uint32 * 6)(bit, bit, bit, 0, 0, 0)  # effective, permitted, inheritable (x2 words)
    _check(_libc.capset(header, data), "capset")


def become(uid: int, gid: int, groups: list[int]) -> None:
    """Take the container's user; a non-root user keeps CAP_DAC_READ_SEARCH only (see module doc)."""
    if uid != 0:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115
        for cap in range(last + 1):
            if cap != CAP_DAC_READ_SEARCH:
                _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop capability")
    os.setgroups(groups)
    os.setgid(gid)
    if uid != 0:
        _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keepcaps")
        os.setuid(uid)
        _capset_only(CAP_DAC_READ_SEARCH)
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0), "ambient cap")
    else:
        os.setuid(0)


def start(plan: dict[str, Any]) -> None:
    root = Root(plan["root"])
    private_mount_namespace()
    root.build(list(plan.get("skip") or []))
    root.add_binds(list(plan.get("binds") or []))
    cwd = root.makedirs(plan.get("cwd") or "/")
    os.chroot(root.path)
    os.chdir(cwd)


def join(plan: dict[str, Any]) -> None:
    pid = int(plan["pid"])
    root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    _check(_libc.setns(ns_fd, CLONE_NEWNS), "setns")
    os.fchdir(root_fd)
    os.chroot(".")
    os.chdir(plan.get("cwd") or "/")
    os.close(root_fd)
    os.close(ns_fd)


def _fail(sync_fd: int | None, message: str) -> int:
    if sync_fd is not None:
        os.write(sync_fd, message.encode())
    print(f"devcluster: cannot start container: {message}", file=sys.stderr, flush=True)
    return 128 if sync_fd is not None else 126


def main(argv: list[str]) -> int:
    plan = json.loads(open(argv[0]).read())  # noqa: SIM115
    command = argv[1:] or list(plan["argv"])
    sync_fd = plan.get("sync_fd") if plan["mode"] == "start" else None
    if sync_fd is not None:
        os.set_inheritable(sync_fd, False)  # closed by a successful exec
    try:
        os.umask(0o022)
        (start if plan["mode"] == "start" else join)(plan)
        become(int(plan["uid"]), int(plan["gid"]), [int(g) for g in plan.get("groups") or []])
    except OSError as e:
        return _fail(sync_fd, str(e))
    try:
        os.execvpe(command[0], command, dict(os.environ))
    except OSError as e:
        found = isinstance(e, FileNotFoundError) and "/" not in command[0]
        return _fail(
            sync_fd,
            f'exec: "{command[0]}": ' + ("executable file not found in $PATH" if found else str(e.strerror)),
        )
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
