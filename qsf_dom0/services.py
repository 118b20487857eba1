"""The two dom0 services: qsf.AuthorizeFolderAccess and qsf.QueryFolderAuthorization.

Each reads its request from stdin (bounded, validated), decides with the pure
functions of `qsf_dom0.decisions`, stores the result, brings the generated
policy files in line, and writes one reply line. They always exit 0 after a
reply, so that qrexec's own 125-127 keep their meaning.

Installed services run `python3 -m qsf_dom0.services authorize|query`, which
use the real paths and ask in the client's GUI domain (qsf_dom0.ask; the
terminal prompt only for a dom0 without a graphical session). qsf_sim imports this module and
calls `authorize()` / `query()` with its own Config and Prompt.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final

from qsf_dom0 import decisions, policy, wire
from qsf_dom0.ask import GuiPrompt, LocalAgent
from qsf_dom0.config import Config
from qsf_dom0.limits import PromptLimits
from qsf_dom0.prompt import Prompt, PromptRequest, PromptUnavailable, TerminalPrompt
from qsf_dom0.qubes import AdminQubeDirectory
from qsf_dom0.store import Store, StoreError

Clock = Callable[[], float]

EXIT_REPLIED: Final = 0
EXIT_NO_REPLY: Final = 1  # even the reply could not be written


def new_fingerprint() -> str:
    """128 random bits: a fingerprint cannot be derived from the request."""
    return secrets.token_hex(16)


def _log(service: str, message: str) -> None:
    print(f"{service}: {message}", file=sys.stderr, flush=True)


def _reply(fd: int, line: str) -> int:
    data = (line + "\n").encode("ascii")
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        return EXIT_NO_REPLY
    return EXIT_REPLIED


def _caller(environ: Mapping[str, str]) -> str:
    return wire.qube_name(environ.get("QREXEC_REMOTE_DOMAIN", ""))


def _store(config: Config) -> Store:
    return Store(config.store_path, config.upstream_db)


def authorize(
    stdin: int,
    stdout: int,
    environ: Mapping[str, str],
    config: Config,
    prompt: Prompt,
    clock: Clock = time.time,
    make_fingerprint: Callable[[], str] = new_fingerprint,
) -> int:
    """qsf.AuthorizeFolderAccess: stdin SERVER, BASE64(FOLDER), ro|rw; reply allow/deny."""
    service = "qsf.AuthorizeFolderAccess"
    try:
        client = _caller(environ)
        if environ.get("QREXEC_SERVICE_ARGUMENT"):
            raise wire.InvalidInput("this service takes no argument")
        server = wire.qube_name(wire.read_line(stdin, wire.MAX_NAME_LINE))
        folder = wire.decode_path(wire.read_line(stdin, wire.MAX_PATH_LINE))
        mode = wire.mode(wire.read_line(stdin, wire.MAX_MODE_LINE))
    except wire.InvalidInput as error:
        _log(service, f"invalid request: {error}")
        return _reply(stdout, "deny invalid")
    request = decisions.Request(client, server, folder, mode)
    try:
        reply = _authorize(request, config, prompt, clock, make_fingerprint)
    except (StoreError, policy.PolicyError, OSError) as error:
        _log(service, f"internal error: {error}")
        return _reply(stdout, "deny internal")
    if isinstance(reply, decisions.Allow):
        _log(service, f"{client} -> {server}: allowed {reply.mode}")
        return _reply(stdout, f"allow {reply.fingerprint} {reply.mode}")
    _log(service, f"{client} -> {server}: denied ({reply.reason})")
    return _reply(stdout, f"deny {reply.reason}")


def _authorize(
    request: decisions.Request,
    config: Config,
    prompt: Prompt,
    clock: Clock,
    make_fingerprint: Callable[[], str],
) -> decisions.Allow | decisions.Deny:
    store = _store(config)
    with store.transaction() as transaction:
        now = clock()
        transaction.replace(decisions.prune(transaction.decisions, now, config.once_ttl))
        outcome = decisions.evaluate(request, transaction.decisions, now)
        refused_by = decisions.deciding(request, transaction.decisions, now)
        if refused_by is not None:  # when a remembered deny or block was last applied
            transaction.replace(decisions.used(transaction.decisions, refused_by.fingerprint, now))
        policy.sync(transaction.decisions, config.grants_dir, config.once_dir, now)
    if not isinstance(outcome, decisions.Ask):
        return outcome
    limits = PromptLimits(config.state_dir, config.prompts_per_minute)
    with limits.slot(request.client, clock()) as admitted:
        if not admitted:
            return decisions.Deny("busy")
        try:
            answer = prompt.ask(PromptRequest(request, outcome.choices))
        except PromptUnavailable as unavailable:
            return decisions.Deny(unavailable.reason)  # nothing stored
    with store.transaction() as transaction:
        now = clock()
        live = decisions.prune(transaction.decisions, now, config.once_ttl)
        resolution = decisions.resolve(request, answer, live, now, make_fingerprint())
        transaction.replace(resolution.decisions)
        policy.sync(transaction.decisions, config.grants_dir, config.once_dir, now)
    return resolution.reply


def query(
    stdin: int,
    stdout: int,
    environ: Mapping[str, str],
    config: Config,
    clock: Clock = time.time,
) -> int:
    """qsf.QueryFolderAuthorization+FP: stdin CLIENT, BASE64(FOLDER); reply ok/deny."""
    service = "qsf.QueryFolderAuthorization"
    try:
        server = _caller(environ)
        fingerprint = wire.fingerprint(environ.get("QREXEC_SERVICE_ARGUMENT", ""))
        client = wire.qube_name(wire.read_line(stdin, wire.MAX_NAME_LINE))
        folder = wire.decode_path(wire.read_line(stdin, wire.MAX_PATH_LINE))
    except wire.InvalidInput as error:
        _log(service, f"invalid request: {error}")
        return _reply(stdout, "deny invalid")
    try:
        with _store(config).transaction() as transaction:
            now = clock()
            result = decisions.query(
                fingerprint, server, client, folder, transaction.decisions, now, config.once_ttl
            )
            transaction.replace(decisions.prune(result.decisions, now, config.once_ttl))
            policy.sync(transaction.decisions, config.grants_dir, config.once_dir, now)
    except (StoreError, policy.PolicyError, OSError) as error:
        _log(service, f"internal error: {error}")
        return _reply(stdout, "deny internal")
    reply = result.reply
    if isinstance(reply, decisions.Allow):
        _log(service, f"{client} -> {server}: grant used ({reply.mode})")
        return _reply(stdout, f"ok {reply.mode}")
    _log(service, f"{client} -> {server}: refused ({reply.reason})")
    return _reply(stdout, f"deny {reply.reason}")


def main(argv: list[str] | None = None) -> int:
    """`python3 -m qsf_dom0.services authorize|query`, as the qubes-rpc wrappers run it."""
    args = sys.argv[1:] if argv is None else argv
    config = Config.from_environ(os.environ)
    if args == ["authorize"]:
        prompt = GuiPrompt(AdminQubeDirectory(), LocalAgent(config.ask_socket),
                           fallback=TerminalPrompt())
        return authorize(0, 1, os.environ, config, prompt)
    if args == ["query"]:
        return query(0, 1, os.environ, config)
    print("usage: python3 -m qsf_dom0.services authorize|query", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
