"""Install a wheel into a package build root, with the paths given (the RPM
spec's %install where Fedora's %pyproject_install macros are not there, e.g.
rpmbuild on Debian). Uses `installer` (python3-installer), whose 0.6 (Debian
12) has no --prefix option: the scheme is given whole through its API.

    python3 packaging/install_wheel.py WHEEL DESTDIR SITELIB BINDIR
"""

from __future__ import annotations

import sys

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile


def main() -> None:
    wheel, destdir, sitelib, bindir = sys.argv[1:]
    prefix = bindir.rsplit("/", 1)[0]
    scheme = {"purelib": sitelib, "platlib": sitelib, "scripts": bindir,
              "data": prefix, "headers": f"{prefix}/include"}
    destination = SchemeDictionaryDestination(
        scheme, interpreter="/usr/bin/python3", script_kind="posix", destdir=destdir,
        bytecode_optimization_levels=())
    with WheelFile.open(wheel) as source:
        install(source, destination, additional_metadata={})


if __name__ == "__main__":
    main()
