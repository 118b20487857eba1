"""qvm-folder-share: list, add and revoke the remembered folder-sharing decisions in dom0."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qsf_dom0 import policy, wire
from qsf_dom0.admin import MIN_ID_PREFIX, Admin, Refused, Row, Stale, folder_argument, rows
from qsf_dom0.config import ROOT_VARIABLE, Config
from qsf_dom0.store import StoreError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own


def _qube(text: str) -> str:
    try:
        return wire.qube_name(text)
    except wire.InvalidInput:
        raise argparse.ArgumentTypeError(f"{text!r} is not a qube name") from None


def _folder(text: str) -> bytes:
    try:
        return folder_argument(text)
    except wire.InvalidInput as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an absolute normalised folder ({error})"
        ) from None


def _id(text: str) -> str:
    if len(text) < MIN_ID_PREFIX or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a decision id (at least {MIN_ID_PREFIX} hex digits)"
        )
    return text.lower()


def get_parser() -> argparse.ArgumentParser:
    """The command's parser (also read by argparse-manpage)."""
    main_parser = argparse.ArgumentParser(
        prog="qvm-folder-share",
        description=(
            "Show and change which qube may mount which folder of which other qube: the "
            "decisions qsf.AuthorizeFolderAccess remembers. Changes take effect at once "
            "(the generated qrexec policy files are rewritten with the store, under the same "
            "lock the services take) and are refused, with nothing written, when they break "
            "a rule: dom0 never shares, a qube never mounts from itself, disposable qubes "
            "get no Always grants, a block wins over any grant. Writing needs root in dom0."
        ),
        epilog=(
            f"Exit status: 0 done, 1 refused or failed (the message says why), 2 usage error. "
            f"{ROOT_VARIABLE}=DIR puts every dom0 path below DIR (tests, qsf_sim)."
        ),
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        aliases=["ls"],
        help="list every remembered decision",
        description=(
            "List every remembered decision: its id, client and server qubes, folder, "
            "allow/deny/block, ro/rw, once/always, when it was decided, when it was last used "
            "(a grant by a connection, a deny or block by a refused request) and whether a "
            "one-time grant is still pending (made, not used yet, valid for 60 s)."
        ),
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help="a JSON array of objects (times in ISO 8601 UTC; folder_base64 holds the exact "
        "bytes of the folder, folder the same escaped for display)",
    )
    listing.set_defaults(run=_list)

    allow = commands.add_parser(
        "allow",
        help="grant CLIENT access to FOLDER of SERVER ahead of time",
        description="Grant CLIENT access to FOLDER (and below) of SERVER without asking. "
        "It replaces a remembered allow or deny of the same folder.",
    )
    _triple(allow)
    allow.add_argument("--read-only", "--ro", action="store_true",
                       help="read-only access (the server refuses every change)")
    allow.add_argument("--once", action="store_true",
                       help="a one-time grant: one connection within 60 s, then gone")
    allow.set_defaults(run=_allow)

    deny = commands.add_parser(
        "deny",
        help="refuse FOLDER of SERVER to CLIENT without asking",
        description="Remember a deny: CLIENT's requests for FOLDER (and below) of SERVER are "
        "refused without a dialog. A grant for a folder below it still counts.",
    )
    _triple(deny)
    deny.set_defaults(run=_deny)

    block = commands.add_parser(
        "block",
        help="refuse everything from CLIENT to SERVER",
        description="Block CLIENT from SERVER: every request is refused, whatever is granted.",
    )
    block.add_argument("client", metavar="CLIENT", type=_qube, help="the qube that mounts")
    block.add_argument("server", metavar="SERVER", type=_qube, help="the qube that serves")
    block.set_defaults(run=_block)

    revoke = commands.add_parser(
        "revoke",
        aliases=["rm"],
        help="forget decisions by id, or all of a client or a server",
        description="Forget remembered decisions: the ids given (whole, or a unique prefix of "
        f"{MIN_ID_PREFIX} or more hex digits, as `list` shows them), or every decision of a "
        "client and/or a server. A revoked grant's qrexec policy line goes at once; a share "
        "already mounted stays until it is unmounted.",
    )
    revoke.add_argument("ids", metavar="ID", nargs="*", type=_id, help="decision ids")
    revoke.add_argument("--client", type=_qube, help="every decision of this client qube")
    revoke.add_argument("--server", type=_qube, help="every decision of this server qube")
    revoke.set_defaults(run=_revoke, command_parser=revoke)

    upstream = commands.add_parser(
        "import-upstream",
        help="import the decisions of upstream's qubes-shared-folders",
        description="Add the remembered decisions of upstream's policy.db (ALLOW_ALWAYS, "
        "DENY_ALWAYS; a deny of / is a block), keeping their fingerprints. One-time entries, "
        "entries already here and entries breaking a rule are skipped.",
    )
    upstream.add_argument("path", metavar="PATH", nargs="?", type=Path,
                          help="upstream's policy.db (default: "
                          "/etc/qubes/shared-folders/policy.db)")
    upstream.set_defaults(run=_import)
    return main_parser


def _triple(command: argparse.ArgumentParser) -> None:
    command.add_argument("client", metavar="CLIENT", type=_qube, help="the qube that mounts")
    command.add_argument("server", metavar="SERVER", type=_qube, help="the qube that serves")
    command.add_argument("folder", metavar="FOLDER", type=_folder,
                         help="an absolute folder in SERVER")


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    utc = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(moment: float | None) -> str:
    if moment is None:
        return "never"
    return datetime.datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")


def as_json(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "client": row.client,
        "server": row.server,
        "folder": row.folder_text,
        "folder_base64": base64.b64encode(row.folder).decode("ascii"),
        "decision": row.verdict,
        "mode": row.mode,
        "duration": row.duration,
        "decided": _iso(row.decided),
        "last_used": _iso(row.last_used),
        "pending": row.pending,
    }


def verdict_text(row: Row) -> str:
    if row.verdict != "allow":
        return row.verdict
    return "allow once, pending" if row.pending else "allow always"


def table(shown: Sequence[Row]) -> str:
    header = ("ID", "CLIENT", "SERVER", "DECISION", "MODE", "DECIDED", "LAST USED", "FOLDER")
    lines = [header] + [
        (
            r.id[:12],
            r.client,
            r.server,
            verdict_text(r),
            r.mode if r.verdict == "allow" else "-",
            _local(r.decided),
            _local(r.last_used),
            r.folder_text,
        )
        for r in shown
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  " + line[-1] + "\n"
        for line in lines
    )


def _describe(row: Row) -> str:
    return f"{row.id} {row.client} -> {row.server} {verdict_text(row)} {row.folder_text}"


def _list(admin: Admin, options: argparse.Namespace) -> int:
    shown = rows(admin.snapshot().decisions)
    if options.json:
        sys.stdout.write(json.dumps([as_json(r) for r in shown], indent=1) + "\n")
    else:
        sys.stdout.write(table(shown))
    return EXIT_OK


def _added(before: set[str], after: Sequence[Row]) -> int:
    for new in after:
        if new.id not in before:
            print(_describe(new))
    return EXIT_OK


def _allow(admin: Admin, options: argparse.Namespace) -> int:
    before = {d.fingerprint for d in admin.snapshot().decisions}
    mode = "ro" if options.read_only else "rw"
    result = admin.allow(options.client, options.server, options.folder, mode, options.once)
    return _added(before, rows(result.decisions))


def _deny(admin: Admin, options: argparse.Namespace) -> int:
    before = {d.fingerprint for d in admin.snapshot().decisions}
    result = admin.deny(options.client, options.server, options.folder)
    return _added(before, rows(result.decisions))


def _block(admin: Admin, options: argparse.Namespace) -> int:
    before = {d.fingerprint for d in admin.snapshot().decisions}
    result = admin.block(options.client, options.server)
    return _added(before, rows(result.decisions))


def _revoke(admin: Admin, options: argparse.Namespace) -> int:
    by_owner = options.client is not None or options.server is not None
    if bool(options.ids) == by_owner:
        options.command_parser.error("give decision ids, or --client and/or --server")
    if by_owner:
        removed = admin.revoke_where(options.client, options.server)
        if not removed:
            raise Refused("no decision matches")
    else:
        removed = admin.revoke(options.ids)
    for gone in rows(removed):
        print(f"revoked {_describe(gone)}")
    return EXIT_OK


def _import(admin: Admin, options: argparse.Namespace) -> int:
    path = options.path or admin.config.upstream_db
    added, skipped = admin.import_upstream(path)
    print(f"imported {added} decision{'s' if added != 1 else ''} from {path}, skipped {skipped}")
    return EXIT_OK


parser = get_parser()


def main(
    args: Sequence[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> int:
    options = parser.parse_args(args)
    admin = Admin(Config.from_environ(environ), clock)
    run: Callable[[Admin, argparse.Namespace], int] = options.run
    try:
        return run(admin, options)
    except (Refused, Stale) as error:
        message = str(error)
    except StoreError as error:
        message = f"the decision store is unusable, nothing changed: {error}"
    except policy.PolicyError as error:
        message = f"the change would make an invalid qrexec policy, nothing written: {error}"
    except PermissionError as error:
        message = f"{error.filename}: {error.strerror} (changing decisions needs root in dom0)"
    except OSError as error:
        message = f"{error.filename or 'error'}: {error.strerror}"
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
