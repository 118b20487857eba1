"""qrexec policy as Qubes 4.2 reads and evaluates it: files in, a decision out, no effects.

Files: `*.policy` in the runtime and the persistent directory, merged by file name in
C order (a runtime file hides a persistent one of the same name), dot-files ignored.
A file name outside [0-9a-z_.-] or a syntax error anywhere raises PolicyError: the
caller must then deny every call, as Qubes does.

Line: `SERVICE|* +ARG|+|* SOURCE TARGET allow|deny|ask [key=value ...]`, `#` comment
lines, directives `!include FILE`, `!include-dir DIR`, `!include-service SVC ARG FILE`
(old one-service format) and `!compat-4.0` (no legacy files exist in the simulator).

Tokens: a qube name (`dom0` is read as `@adminvm`), `@adminvm`, `@anyvm` (every qube but
dom0), `*` (every qube), `@default` (target only), `@dispvm`, `@dispvm:NAME`,
`@dispvm:@tag:T`, `@tag:T`, `@type:T`, each only in the columns where Qubes accepts it.
A token such as `$anyvm` is a qube name that matches nothing.

Choices where upstream is silent because dom0's own calls skip its policy: a call from
dom0 has the source `dom0`, matched by `@adminvm`, `@type:AdminVM`, `*` and its tags,
never by `@anyvm`. As source, `@dispvm:NAME` matches the disposables made from NAME.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qsf_sim.layout import ADMIN, Qube

RPCNAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-+")
FILENAME_CHARS = frozenset(string.digits + string.ascii_lowercase + "_.-")
POLICY_SUFFIX = ".policy"
MAX_INCLUDE_DEPTH = 16

# Columns a token may appear in: Source, Target, Redirect (target=, default_target=),
# Intended (what the caller asked for).
SRC, TGT, RDR, INT = "source", "target", "redirect", "intended"
EXACT_TOKENS: dict[str, frozenset[str]] = {
    "*": frozenset({SRC, TGT}),
    "@adminvm": frozenset({SRC, TGT, RDR, INT}),
    "@anyvm": frozenset({SRC, TGT}),
    "@default": frozenset({TGT, INT}),
    "@dispvm": frozenset({TGT, RDR, INT}),
}
# Checked in this order; a value starting with "@" falls through to a longer prefix.
PREFIX_TOKENS: tuple[tuple[str, frozenset[str]], ...] = (
    ("@type:", frozenset({SRC, TGT})),
    ("@tag:", frozenset({SRC, TGT})),
    ("@dispvm:", frozenset({SRC, TGT, RDR, INT})),
    ("@dispvm:@tag:", frozenset({SRC, TGT})),
)
ACTION_PARAMS = {
    "deny": frozenset({"notify"}),
    "allow": frozenset({"target", "user", "notify", "autostart"}),
    "ask": frozenset({"target", "default_target", "user", "notify", "autostart"}),
}
BOOLEANS = {"yes": True, "no": False}

SystemInfo = Mapping[str, Qube]


class PolicyError(Exception):
    """The policy cannot be used (bad file name, syntax error, unreadable file): deny all."""


def parse_token(text: str, column: str, where: str) -> str:
    """Validate a token for a column; `dom0` becomes `@adminvm`."""
    token = "@adminvm" if text == "dom0" else text
    if not (token.startswith("@") or token == "*"):
        return token
    columns = EXACT_TOKENS.get(token)
    if columns is not None:
        if column in columns:
            return token
        raise PolicyError(f"{where}: {text!r} is not allowed as {column}")
    for prefix, columns in PREFIX_TOKENS:
        if not token.startswith(prefix) or column not in columns:
            continue
        value = token[len(prefix):]
        if not value:
            raise PolicyError(f"{where}: empty {prefix} token")
        if value.startswith("@"):
            continue
        return token
    raise PolicyError(f"{where}: invalid {column} token {text!r}")


@dataclass(frozen=True)
class Rule:
    service: str | None  # None: any service
    argument: str | None  # "+ARG"; None: any argument
    source: str
    target: str
    action: str
    where: str
    redirect: str | None = None  # target=
    default_target: str | None = None
    user: str | None = None
    notify: bool | None = None
    autostart: bool = True


def _check_service(service: str, argument: str, where: str) -> tuple[str | None, str | None]:
    svc = None if service == "*" else service
    arg = None if argument == "*" else argument
    if svc is not None and (not svc or set(svc) - (RPCNAME_CHARS - {"+"})):
        raise PolicyError(f"{where}: invalid service {service!r}")
    if arg is not None:
        if set(arg) - RPCNAME_CHARS:
            raise PolicyError(f"{where}: invalid argument {argument!r}")
        if not arg.startswith("+"):
            raise PolicyError(f"{where}: argument {argument!r} does not start with +")
        if svc is None:
            raise PolicyError(f"{where}: only * argument allowed for * service")
    return svc, arg


def make_rule(service: str, argument: str, source: str, target: str, action: str,
              params: Sequence[str], where: str) -> Rule:
    svc, arg = _check_service(service, argument, where)
    if action not in ACTION_PARAMS:
        raise PolicyError(f"{where}: invalid action {action!r}")
    values: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            raise PolicyError(f"{where}: invalid action parameter {param!r}")
        if key in values:
            raise PolicyError(f"{where}: parameter given twice: {key!r}")
        if key not in ACTION_PARAMS[action]:
            raise PolicyError(f"{where}: invalid parameter {key!r} for {action}")
        values[key] = value
    flags: dict[str, bool] = {}
    for key in ("notify", "autostart"):
        if key in values:
            if values[key] not in BOOLEANS:
                raise PolicyError(f"{where}: {key} must be yes or no")
            flags[key] = BOOLEANS[values[key]]
    redirect = values.get("target")
    default_target = values.get("default_target")
    rule = Rule(
        service=svc, argument=arg, source=parse_token(source, SRC, where),
        target=parse_token(target, TGT, where), action=action, where=where,
        redirect=None if redirect is None else parse_token(redirect, RDR, where),
        default_target=None if default_target is None else parse_token(default_target, RDR, where),
        user=values.get("user"), notify=flags.get("notify"), autostart=flags.get("autostart", True),
    )
    if rule.target == "@default" and action == "allow" and rule.redirect is None:
        raise PolicyError(f"{where}: allow for @default must specify target=")
    return rule


def rule_from_fields(fields: Sequence[str], where: str) -> Rule:
    service, argument, source, target, action = fields[:5]
    return make_rule(service, argument, source, target, action, fields[5:], where)


@dataclass
class _Loader:
    """Reads policy files and directives; `resolve` maps an absolute path into the sim."""

    resolve: Callable[[PurePosixPath], Path]
    rules: list[Rule] = field(default_factory=list)

    def load_dirs(self, dirs: Iterable[Path]) -> None:
        seen: dict[str, Path] = {}
        for directory in dirs:
            for path in _policy_files(directory):
                seen.setdefault(path.name, path)
        for name in sorted(seen):
            self.load_file(seen[name], depth=0)

    def load_file(self, path: Path, depth: int) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise PolicyError(f"{path}: includes nested too deep")
        for where, line in _lines(path):
            if line.startswith("!"):
                self.directive(path, line.split(), where, depth)
                continue
            fields = line.split()
            if len(fields) < 5:
                raise PolicyError(f"{where}: wrong number of fields")
            self.rules.append(rule_from_fields(fields, where))

    def directive(self, path: Path, words: list[str], where: str, depth: int) -> None:
        name, params = words[0], words[1:]
        if name == "!compat-4.0" and not params:
            return
        expected = {"!include": 1, "!include-dir": 1, "!include-service": 3}.get(name)
        if expected is None:
            raise PolicyError(f"{where}: invalid directive {name!r}")
        if len(params) != expected:
            raise PolicyError(f"{where}: invalid number of params")
        included = self.locate(path, params[-1])
        if name == "!include":
            if not included.is_file():
                raise PolicyError(f"{where}: not a file: {included}")
            self.load_file(included, depth + 1)
        elif name == "!include-dir":
            if not included.is_dir():
                raise PolicyError(f"{where}: not a directory: {included}")
            for file in _policy_files(included):
                self.load_file(file, depth + 1)
        else:
            if not included.is_file():
                raise PolicyError(f"{where}: not a file: {included}")
            self.load_service_file(params[0], params[1], included, depth + 1)

    def load_service_file(self, service: str, argument: str, path: Path, depth: int) -> None:
        """The one-service format: `SOURCE TARGET ACTION[,param=value...]`, `$` for `@`."""
        _check_service(service, argument, str(path))
        if depth > MAX_INCLUDE_DEPTH:
            raise PolicyError(f"{path}: includes nested too deep")
        for where, line in _lines(path):
            line = line.replace("$include:", "!include ").replace("$", "@").replace(",", " ")
            words = line.split()
            if words[0].startswith("!"):
                if words[0] != "!include" or len(words) != 2:
                    raise PolicyError(f"{where}: invalid directive")
                self.load_service_file(service, argument, self.locate(path, words[1]), depth + 1)
                continue
            if len(words) < 3:
                raise PolicyError(f"{where}: wrong number of fields")
            self.rules.append(rule_from_fields([service, argument, *words], where))

    def locate(self, including: Path, text: str) -> Path:
        target = PurePosixPath(text)
        return self.resolve(target) if target.is_absolute() else including.parent / target


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """(`path:lineno`, stripped line) for each line that is not blank or a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"cannot read {path}: {error}") from error
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield f"{path}:{lineno}", line


def _policy_files(directory: Path) -> list[Path]:
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as error:
        raise PolicyError(f"cannot list {directory}: {error}") from error
    files = [p for p in entries
             if p.suffix == POLICY_SUFFIX and not p.name.startswith(".") and p.is_file()]
    for path in files:
        if set(path.name) - FILENAME_CHARS:
            raise PolicyError(f"invalid file name: {path}")
    return sorted(files)


def load_policy(dirs: Iterable[Path], resolve: Callable[[PurePosixPath], Path]) -> list[Rule]:
    """Every rule in file order; raises PolicyError when every call must be denied."""
    loader = _Loader(resolve)
    loader.load_dirs(dirs)
    return loader.rules


def parse_text(text: str, name: str = "<text>") -> list[Rule]:
    """Rules of one policy text without directives (for linting and tests)."""
    rules = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if line.startswith("!") or len(fields) < 5:
            raise PolicyError(f"{name}:{lineno}: wrong number of fields or a directive")
        rules.append(rule_from_fields(fields, f"{name}:{lineno}"))
    return rules


# --- evaluation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    service: str
    argument: str  # "+ARG", "+" when the caller gave none
    source: str  # the calling qube's name, from its channel
    target: str  # as the caller asked: a name, "" or a keyword


@dataclass(frozen=True)
class Decision:
    action: str  # "allow", "ask" or "deny"
    reason: str
    rule: Rule | None = None
    target: str | None = None  # allow: a qube name or @dispvm:NAME
    targets_for_ask: tuple[str, ...] = ()
    default_target: str | None = None
    user: str | None = None


def deny(reason: str, rule: Rule | None = None) -> Decision:
    return Decision("deny", reason, rule)


def _dispvm_of(source: str, system: SystemInfo) -> str | None:
    qube = system.get(source)
    if qube is None or qube.default_dispvm is None:
        return None
    return "@dispvm:" + qube.default_dispvm


def _is_dispvm_template(name: str, system: SystemInfo) -> bool:
    qube = system.get(name)
    return qube is not None and qube.template_for_dispvms


def match_source(token: str, source: str, system: SystemInfo) -> bool:
    qube = system.get(source)
    if token == "*":
        return True
    if token == "@adminvm":
        return source == ADMIN
    if token == "@anyvm":
        return source != ADMIN
    if token.startswith("@type:"):
        return qube is not None and qube.type == token[len("@type:"):]
    if token.startswith("@tag:"):
        return qube is not None and token[len("@tag:"):] in qube.tags
    if token.startswith("@dispvm:@tag:"):
        template = system.get(qube.template or "") if qube and qube.type == "DispVM" else None
        return template is not None and token[len("@dispvm:@tag:"):] in template.tags
    if token.startswith("@dispvm:"):
        return (qube is not None and qube.type == "DispVM"
                and qube.template == token[len("@dispvm:"):])
    return token == source


def match_target(token: str, intended: str, source: str, system: SystemInfo) -> bool:
    if token == "*":
        return True
    if token == "@anyvm":
        return intended != "@adminvm"
    if token.startswith("@type:"):
        qube = system.get(intended)
        return qube is not None and qube.type == token[len("@type:"):]
    if token.startswith("@tag:"):
        qube = system.get(intended)
        return qube is not None and token[len("@tag:"):] in qube.tags
    if token.startswith("@dispvm:@tag:"):
        wanted = _dispvm_of(source, system) if intended == "@dispvm" else intended
        if wanted is None or not wanted.startswith("@dispvm:"):
            return False
        template = system.get(wanted[len("@dispvm:"):])
        return (template is not None and template.template_for_dispvms
                and token[len("@dispvm:@tag:"):] in template.tags)
    if token.startswith("@dispvm:") and intended == "@dispvm":
        return token == _dispvm_of(source, system)
    return token == intended


def expand(token: str, system: SystemInfo) -> set[str]:
    """Every target a rule's target token stands for (the choices of an `ask`)."""
    if token in ("*", "@anyvm"):
        names = {n for n, q in system.items() if token == "*" or q.type != "AdminVM"}
        templates = {"@dispvm:" + n for n, q in system.items() if q.template_for_dispvms}
        return names | templates | {"@dispvm"}
    if token in ("@adminvm", "@dispvm"):
        return {token}
    if token == "@default":
        return set()
    if token.startswith("@type:"):
        return {n for n, q in system.items() if q.type == token[len("@type:"):]}
    if token.startswith("@tag:"):
        return {n for n, q in system.items() if token[len("@tag:"):] in q.tags}
    if token.startswith("@dispvm:@tag:"):
        tag = token[len("@dispvm:@tag:"):]
        return {"@dispvm:" + n for n, q in system.items()
                if q.template_for_dispvms and tag in q.tags}
    if token.startswith("@dispvm:"):
        return {token} if _is_dispvm_template(token[len("@dispvm:"):], system) else set()
    return {token} if token in system else set()


def intended_target(requested: str, system: SystemInfo) -> str:
    """The caller's target as policy sees it; raises PolicyError for an invalid keyword."""
    if requested == "":
        return "@default"
    token = parse_token(requested, INT, "requested target")
    if token.startswith("@dispvm:") and not _is_dispvm_template(token[len("@dispvm:"):], system):
        raise PolicyError(f"not a template for disposables: {token[len('@dispvm:'):]}")
    if not token.startswith("@") and token not in system:
        return "@default"  # as qrexec 4.2: an unknown qube is asked for as @default
    return token


def _final_target(token: str, request: Request, system: SystemInfo) -> str | None:
    """A resolved target: a qube name or @dispvm:NAME; None if nothing can be chosen."""
    if token == "@dispvm":
        return _dispvm_of(request.source, system)
    if token == "@adminvm":
        return ADMIN
    if token.startswith("@dispvm:"):
        return token if _is_dispvm_template(token[len("@dispvm:"):], system) else None
    if token.startswith("@") or token not in system:
        return None
    return token


def _targets_for_ask(rules: Sequence[Rule], request: Request, system: SystemInfo) -> set[str]:
    targets: set[str] = set()
    for rule in reversed(rules):
        if not _matches_but_target(rule, request, system):
            continue
        expansion = expand(rule.redirect or rule.target, system)
        if rule.action == "deny":
            targets -= expansion
        else:
            targets |= expansion
    if "@dispvm" in targets:
        targets.discard("@dispvm")
        dispvm = _dispvm_of(request.source, system)
        if dispvm is not None:
            targets.add(dispvm)
    if "@adminvm" in targets:
        targets.discard("@adminvm")
        targets.add(ADMIN)
    return targets


def _matches_but_target(rule: Rule, request: Request, system: SystemInfo) -> bool:
    return ((rule.service is None or rule.service == request.service)
            and (rule.argument is None or rule.argument == request.argument)
            and match_source(rule.source, request.source, system))


def evaluate(rules: Sequence[Rule], request: Request, system: SystemInfo) -> Decision:
    """The first matching rule decides; no match denies."""
    try:
        intended = intended_target(request.target, system)
    except PolicyError as error:
        return deny(f"invalid target: {error}")
    for rule in rules:
        if (_matches_but_target(rule, request, system)
                and match_target(rule.target, intended, request.source, system)):
            break
    else:
        return deny("no matching rule found")
    if rule.action == "deny":
        return deny(f"denied by policy {rule.where}", rule)
    if rule.action == "allow":
        wanted = rule.redirect or intended
        if wanted == "@default":
            return deny(f"allow at {rule.where} but no target is specified by caller or policy",
                        rule)
        target = _final_target(wanted, request, system)
        if target is None:
            return deny(f"allow at {rule.where}: no valid target for {wanted}", rule)
        if not rule.autostart and target.startswith("@dispvm"):
            return deny(f"target {target} would require autostart", rule)
        return Decision("allow", f"allowed by policy {rule.where}", rule, target=target,
                        user=rule.user)
    if rule.redirect is not None:
        redirect = _final_target(rule.redirect, request, system)
        choices = set() if redirect is None else {redirect}
    else:
        choices = _targets_for_ask(rules, request, system)
    if not rule.autostart:
        choices = {c for c in choices if not c.startswith("@dispvm")}
    if not choices:
        return deny(f"ask at {rule.where} but no target is available to choose from", rule)
    default = rule.default_target
    if default is not None:
        default = _final_target(default, request, system)
        if default not in choices:
            default = None
    return Decision("ask", f"ask by policy {rule.where}", rule,
                    targets_for_ask=tuple(sorted(choices)), default_target=default, user=rule.user)


def answer_ask(decision: Decision, allowed: bool, target: str | None) -> Decision:
    """The user's answer to an `ask` decision: allow to one of its targets, or deny."""
    assert decision.action == "ask"
    if not allowed:
        return deny(f"denied by the user ({decision.reason})", decision.rule)
    chosen = target or decision.default_target
    if chosen is None and len(decision.targets_for_ask) == 1:
        chosen = decision.targets_for_ask[0]
    if chosen not in decision.targets_for_ask:
        return deny(f"target {chosen} is not a valid choice", decision.rule)
    return Decision("allow", f"allowed by the user ({decision.reason})", decision.rule,
                    target=chosen, user=decision.user)
