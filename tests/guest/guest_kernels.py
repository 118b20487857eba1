"""Fetch Debian guest kernels and build their initramfs, cached between runs.

Kernels come from `apt-get download` (never installed on the host) and are
unpacked with `dpkg -x`. Debian 13's kernel comes through a private sources
list so the machine's apt configuration is left alone.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _cache_root() -> Path:
    """$QSF_GUEST_CACHE, else /var/cache/qsf-guest for root, else the user's cache."""
    if "QSF_GUEST_CACHE" in os.environ:
        return Path(os.environ["QSF_GUEST_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/qsf-guest")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "qsf-guest"


CACHE_ROOT = _cache_root()
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("guest_init.sh")

# What the guest needs loaded: virtio-serial, the 9p file system and both
# transports (virtio for the host root, fd for the tests). Dependencies come
# from modules.dep; modules built into the kernel are skipped.
WANTED_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9pnet_fd", "9p")


class GuestKernelError(Exception):
    """A guest kernel could not be fetched or prepared (message says why)."""


@dataclass(frozen=True)
class KernelSpec:
    label: str          # test id: "6.1", "6.12"
    suite: str          # Debian suite the kernel comes from
    private_apt: bool   # True: fetch through a private sources list


KERNELS = (
    KernelSpec("6.1", "bookworm", private_apt=False),
    KernelSpec("6.12", "trixie", private_apt=True),
)


@dataclass(frozen=True)
class GuestKernel:
    label: str
    version: str        # uname -r of the guest
    vmlinuz: Path
    initrd: Path


def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise GuestKernelError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _debian_uri() -> str:
    text = DEBIAN_SOURCES.read_text()
    match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE)
    if match is None:
        raise GuestKernelError(f"no debian URI in {DEBIAN_SOURCES}")
    return match.group(1)


def _apt_options(spec: KernelSpec) -> tuple[list[str], Path | None]:
    """apt options for this kernel's suite, and its private lists dir if it has one."""
    if not spec.private_apt:
        return [], None
    state = CACHE_ROOT / f"apt-{spec.suite}"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = state / "sources.list"
    sources.write_text(f"deb [trusted=yes] {_debian_uri()} {spec.suite} main\n")
    return [
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "APT::Get::List-Cleanup=0",
    ], state / "lists"


def _package_name(options: list[str], private_lists: Path | None) -> str:
    """The versioned image package behind the linux-image-amd64 metapackage."""
    if private_lists is not None and not any(private_lists.glob("*Packages*")):
        _run(["apt-get", *options, "update"])
    out = _run(["apt-cache", *options, "depends", "linux-image-amd64"])
    match = re.search(r"Depends:\s*(linux-image-\S+-amd64)\s*$", out, re.MULTILINE)
    if match is None:
        raise GuestKernelError(f"cannot find the kernel behind linux-image-amd64:\n{out}")
    return match.group(1)


def _fetch(spec: KernelSpec) -> tuple[str, Path]:
    """Download and unpack the kernel package; return (uname -r, unpacked root)."""
    options, private_lists = _apt_options(spec)
    package = _package_name(options, private_lists)
    version = package.removeprefix("linux-image-")
    root = CACHE_ROOT / version / "root"
    if (root / "boot" / f"vmlinuz-{version}").exists():
        return version, root
    work = Path(tempfile.mkdtemp(prefix=f"fetch-{version}-", dir=CACHE_ROOT))
    try:
        _run(["apt-get", *options, "download", package], cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise GuestKernelError(f"apt-get download {package} gave {debs}")
        unpacked = work / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)])
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return version, root


def _module_name(path: Path) -> str:
    return re.sub(r"\.ko(\.xz)?$", "", path.name).replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def _module_depends(data: bytes) -> list[str]:
    """The `depends=` list of a module's .modinfo section (what depmod reads)."""
    match = re.search(rb"\x00depends=([A-Za-z0-9_,-]*)\x00", data)
    if match is None:
        raise GuestKernelError("a module without a depends= entry")
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",") if d]


def _module_order(moddir: Path) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko) of the modules to insmod, dependencies first."""
    files = {_module_name(p): p for p in (moddir / "kernel").rglob("*.ko*")}
    builtin = {_module_name(Path(line))
               for line in (moddir / "modules.builtin").read_text().split()}
    order: list[tuple[str, bytes]] = []

    def visit(name: str) -> None:
        if name in builtin or any(done == name for done, _ in order):
            return
        if name not in files:
            raise GuestKernelError(f"module {name} neither built in nor in {moddir}")
        data = _module_bytes(files[name])
        for dep in _module_depends(data):
            visit(dep)
        order.append((name, data))

    for wanted in WANTED_MODULES:
        visit(wanted)
    return order


def _build_initrd(version: str, root: Path) -> Path:
    moddir = next((d for d in (root / "lib" / "modules" / version,
                               root / "usr" / "lib" / "modules" / version) if d.is_dir()), None)
    if moddir is None:
        raise GuestKernelError(f"no modules for {version} under {root}")
    modules = _module_order(moddir)
    digest = hashlib.sha256()
    digest.update(INIT_SCRIPT.read_bytes())
    digest.update(BUSYBOX.read_bytes())
    for name, data in modules:
        digest.update(name.encode() + hashlib.sha256(data).digest())
    initrd = CACHE_ROOT / version / f"initrd-{digest.hexdigest()[:16]}.cpio"
    if initrd.exists():
        return initrd
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as tmp:
        tree = Path(tmp) / "tree"
        for sub in ("bin", "dev", "proc", "sys", "host", "modules", "etc/sudoers.d"):
            (tree / sub).mkdir(parents=True)
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        os.symlink("busybox", tree / "bin" / "sh")
        shutil.copy2(INIT_SCRIPT, tree / "init")
        os.chmod(tree / "init", 0o755)
        names = []
        for index, (module, data) in enumerate(modules):
            name = f"{index:02d}-{module}.ko"
            (tree / "modules" / name).write_bytes(data)
            names.append(name)
        (tree / "modules" / "order").write_text("\n".join(names) + "\n")
        # uid 1000 (the qube's user) may use sudo in the guest, as in a qube.
        sudoers = tree / "etc" / "sudoers.d" / "qsf-guest"
        sudoers.write_text("#1000 ALL=(ALL:ALL) NOPASSWD: ALL\n")
        os.chmod(sudoers, 0o440)
        files = _run(["find", ".", "-print0"], cwd=tree)
        partial = initrd.with_suffix(".partial")
        with open(partial, "wb") as out:
            result = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"],
                                    cwd=tree, input=files.encode(), stdout=out,
                                    stderr=subprocess.PIPE, timeout=120)
        if result.returncode != 0:
            raise GuestKernelError(f"cpio failed: {result.stderr.decode(errors='replace')}")
        partial.rename(initrd)
    return initrd


def prepare(spec: KernelSpec) -> GuestKernel:
    """The kernel and initramfs for `spec`, fetched and built once, then cached."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    for program in ("apt-get", "apt-cache", "dpkg", "cpio", "find"):
        if shutil.which(program) is None:
            raise GuestKernelError(f"program {program} is missing")
    if not BUSYBOX.exists():
        raise GuestKernelError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    version, root = _fetch(spec)
    initrd = _build_initrd(version, root)
    return GuestKernel(spec.label, version, root / "boot" / f"vmlinuz-{version}", initrd)


if __name__ == "__main__":
    for kernel_spec in KERNELS:
        print(prepare(kernel_spec))
