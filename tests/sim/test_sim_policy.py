"""qsf_sim.policy: Qubes policy files and their evaluation, fact by fact (no daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsf_sim import policy
from qsf_sim.layout import Qube
from qsf_sim.policy import PolicyError, Request
from qsf_sim.tree import REPO

SYSTEM = {q.name: q for q in (
    Qube("dom0", "AdminVM", tags=("admin-tag",)),
    Qube("work", "AppVM", tags=("office",), default_dispvm="dvm"),
    Qube("server", "AppVM", tags=("office", "files")),
    Qube("vault", "AppVM"),
    Qube("dvm", "AppVM", tags=("dvm-tag",), template_for_dispvms=True),
    Qube("disp7", "DispVM", template="dvm"),
    Qube("tpl", "TemplateVM"),
)}


def decide(text: str, source: str, target: str, service: str = "test.Svc",
           argument: str = "+") -> policy.Decision:
    return policy.evaluate(policy.parse_text(text), Request(service, argument, source, target),
                           SYSTEM)


def allowed_target(text: str, source: str, target: str, **kwargs: str) -> str | None:
    decision = decide(text, source, target, **kwargs)
    return decision.target if decision.action == "allow" else None


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def load(run_dir: Path, etc_dir: Path) -> list[policy.Rule]:
    return policy.load_policy([run_dir, etc_dir], lambda p: run_dir.parent / p.relative_to("/"))


# --- matching ----------------------------------------------------------------------------


def test_first_matching_line_wins() -> None:
    text = ("test.Svc * work server deny\n"
            "test.Svc * work server allow\n")
    assert decide(text, "work", "server").action == "deny"
    swapped = ("test.Svc * work server allow\n"
               "test.Svc * work server deny\n")
    assert decide(swapped, "work", "server").action == "allow"


def test_no_match_denies() -> None:
    decision = decide("other.Svc * work server allow\n", "work", "server")
    assert decision.action == "deny"
    assert "no matching rule" in decision.reason


def test_service_and_argument_columns() -> None:
    text = ("test.Svc +one work server allow\n"
            "test.Svc + work vault allow\n"
            "* * work tpl allow\n")
    assert allowed_target(text, "work", "server", argument="+one") == "server"
    assert allowed_target(text, "work", "server", argument="+two") is None
    assert allowed_target(text, "work", "vault", argument="+") == "vault"  # `+` = empty arg
    assert allowed_target(text, "work", "vault", argument="+x") is None
    assert allowed_target(text, "work", "tpl", service="any.Thing", argument="+y") == "tpl"


def test_anyvm_never_matches_dom0() -> None:
    text = "test.Svc * @anyvm @anyvm allow\n"
    assert allowed_target(text, "work", "server") == "server"
    assert allowed_target(text, "work", "dom0") is None
    assert allowed_target(text, "work", "@adminvm") is None
    assert allowed_target(text, "dom0", "work") is None  # not as a source either


def test_adminvm_and_dom0_are_the_same_token() -> None:
    for token in ("@adminvm", "dom0"):
        text = f"test.Svc * work {token} allow\n"
        assert allowed_target(text, "work", "dom0") == "dom0"
        assert allowed_target(text, "work", "@adminvm") == "dom0"
        assert allowed_target(text, "work", "server") is None


def test_wildcard_token_matches_dom0_too() -> None:
    assert allowed_target("test.Svc * * * allow\n", "work", "dom0") == "dom0"


def test_tag_and_type_tokens() -> None:
    text = ("test.Svc * @tag:office @tag:files allow\n"
            "test.Svc * @type:DispVM @type:TemplateVM allow\n")
    assert allowed_target(text, "work", "server") == "server"
    assert allowed_target(text, "vault", "server") is None  # source lacks the tag
    assert allowed_target(text, "work", "vault") is None  # target lacks the tag
    assert allowed_target(text, "disp7", "tpl") == "tpl"
    assert allowed_target(text, "work", "tpl") is None


def test_default_target_needs_a_redirect() -> None:
    assert decide("test.Svc * work @default allow target=server\n", "work", "").target == "server"
    assert decide("test.Svc * work @default allow target=server\n", "work",
                  "@default").target == "server"
    # an unknown qube is asked for as @default (qrexec 4.2)
    assert decide("test.Svc * work @default allow target=vault\n", "work",
                  "nosuchqube").target == "vault"
    # @anyvm matches @default, but allow without a target denies
    decision = decide("test.Svc * work @anyvm allow\n", "work", "")
    assert decision.action == "deny"
    assert "no target" in decision.reason


def test_redirect_with_target_param() -> None:
    text = "test.Svc * work @anyvm allow target=vault\n"
    assert allowed_target(text, "work", "server") == "vault"
    assert allowed_target("test.Svc * work @anyvm allow target=dom0\n", "work", "server") == "dom0"


def test_dispvm_tokens() -> None:
    text = "test.Svc * work @dispvm allow\n"
    assert allowed_target(text, "work", "@dispvm") == "@dispvm:dvm"  # work's default_dispvm
    assert allowed_target("test.Svc * vault @dispvm allow\n", "vault", "@dispvm") is None
    named = "test.Svc * work @dispvm:dvm allow\n"
    assert allowed_target(named, "work", "@dispvm:dvm") == "@dispvm:dvm"
    assert allowed_target(named, "work", "@dispvm") == "@dispvm:dvm"
    assert allowed_target(named, "work", "@dispvm:server") is None  # not a dispvm template
    tagged = "test.Svc * work @dispvm:@tag:dvm-tag allow\n"
    assert allowed_target(tagged, "work", "@dispvm:dvm") == "@dispvm:dvm"
    # as a source, @dispvm:NAME stands for the disposables made from NAME
    source = "test.Svc * @dispvm:dvm server allow\n"
    assert allowed_target(source, "disp7", "server") == "server"
    assert allowed_target(source, "work", "server") is None


def test_legacy_dollar_token_is_a_literal_name() -> None:
    decision = decide("test.Svc * $anyvm $anyvm allow\n", "work", "server")
    assert decision.action == "deny"
    assert "no matching rule" in decision.reason


def test_deny_wins_when_first() -> None:
    text = ("test.Svc * @anyvm vault deny\n"
            "test.Svc * @anyvm @anyvm allow\n")
    assert allowed_target(text, "work", "vault") is None
    assert allowed_target(text, "work", "server") == "server"


def test_invalid_requested_target_denies() -> None:
    for target in ("@anyvm", "@tag:office", "@dispvm:nosuch", "@bogus"):
        assert decide("* * @anyvm * allow\n", "work", target).action == "deny", target


# --- ask ---------------------------------------------------------------------------------


def test_ask_collects_targets_minus_denied() -> None:
    text = ("test.Svc * work vault deny\n"
            "test.Svc * work @anyvm ask default_target=server\n")
    decision = decide(text, "work", "server")
    assert decision.action == "ask"
    assert "vault" not in decision.targets_for_ask
    assert {"server", "dvm", "tpl", "@dispvm:dvm"} <= set(decision.targets_for_ask)
    assert "dom0" not in decision.targets_for_ask
    assert decision.default_target == "server"
    assert policy.answer_ask(decision, True, None).target == "server"
    assert policy.answer_ask(decision, True, "tpl").target == "tpl"
    assert policy.answer_ask(decision, True, "vault").action == "deny"  # not offered
    assert policy.answer_ask(decision, False, "server").action == "deny"


def test_ask_with_target_param_offers_only_it() -> None:
    decision = decide("test.Svc * work @anyvm ask target=vault\n", "work", "server")
    assert decision.targets_for_ask == ("vault",)
    assert policy.answer_ask(decision, True, None).target == "vault"


# --- syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "test.Svc * work server",  # too few fields
    "test.Svc * work server permit",  # unknown action
    "test+Svc * work server allow",  # + in a service name
    "test.Svc arg work server allow",  # argument without +
    "* +arg work server allow",  # argument for * service
    "test.Svc * work server allow target=vault target=vault",  # parameter twice
    "test.Svc * work server allow target",  # no '='
    "test.Svc * work server deny target=vault",  # not a deny parameter
    "test.Svc * work server allow notify=maybe",  # booleans are yes/no
    "test.Svc * work server allow default_target=vault",  # only for ask
    "test.Svc * work @default allow",  # @default needs target=
    "test.Svc * @default server allow",  # @default is not a source
    "test.Svc * @dispvm server allow",  # @dispvm is not a source
    "test.Svc * work @tag: allow",  # empty token
    "test.Svc * work @dispvm:@foo allow",
    "test.Svc * work @bogus allow",
    "test.Svc * work server allow target=@anyvm",  # not a redirect
    "test.Svc +a/b work server allow",  # argument characters
])
def test_syntax_errors(line: str) -> None:
    with pytest.raises(PolicyError):
        policy.parse_text(line + "\n")


def test_valid_parameters() -> None:
    rules = policy.parse_text(
        "test.Svc * work server allow target=vault user=root notify=yes autostart=no\n"
        "test.Svc * work server ask target=vault default_target=vault user=user\n"
        "test.Svc * work server deny notify=no\n"
        "# a comment\n\n")
    assert [r.action for r in rules] == ["allow", "ask", "deny"]
    assert rules[0].user == "root" and rules[0].notify is True and rules[0].autostart is False


# --- files -------------------------------------------------------------------------------


def test_files_merged_in_c_order_and_runtime_hides_persistent(tmp_path: Path) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(etc_dir, "50-b.policy", "test.Svc * work server allow\n")
    write(run_dir, "40-a.policy", "test.Svc * work server deny\n")
    rules = load(run_dir, etc_dir)
    assert [r.action for r in rules] == ["deny", "allow"]
    write(etc_dir, "40-a.policy", "test.Svc * work vault deny\n")  # hidden by run's 40-a
    assert [r.action for r in load(run_dir, etc_dir)] == ["deny", "allow"]
    assert load(run_dir, etc_dir)[0].target == "server"
    # C order of file names: '-' sorts before the digits
    write(etc_dir, "-first.policy", "test.Svc * work tpl allow\n")
    assert load(run_dir, etc_dir)[0].target == "tpl"


def test_ignored_files(tmp_path: Path) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(etc_dir, ".hidden.policy", "this is not policy\n")
    write(etc_dir, "README", "this is not policy\n")
    write(etc_dir, "50-x.policy.rpmsave", "nor this\n")
    write(etc_dir, "50-ok.policy", "test.Svc * work server allow\n")
    assert len(load(run_dir, etc_dir)) == 1


@pytest.mark.parametrize("name", ["50-Upper.policy", "50 space.policy", "50-ü.policy"])
def test_invalid_file_name_denies_all(tmp_path: Path, name: str) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(etc_dir, "50-ok.policy", "test.Svc * work server allow\n")
    write(run_dir, name, "test.Svc * work server allow\n")
    with pytest.raises(PolicyError):
        load(run_dir, etc_dir)


def test_syntax_error_in_any_file_fails_the_whole_load(tmp_path: Path) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(etc_dir, "10-ok.policy", "test.Svc * work server allow\n")
    write(etc_dir, "99-bad.policy", "garbage\n")
    with pytest.raises(PolicyError):
        load(run_dir, etc_dir)


def test_include_directives(tmp_path: Path) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(etc_dir / "include", "one", "test.Svc * work server allow\n")
    write(etc_dir / "include" / "more", "two.policy", "test.Svc * work vault allow\n")
    write(etc_dir / "include", "svc", "$anyvm $anyvm allow,target=tpl\n")
    write(etc_dir, "30-inc.policy",
          "!include include/one\n!include-dir include/more\n"
          "!include-service test.Old * include/svc\n!compat-4.0\n")
    rules = load(run_dir, etc_dir)
    assert [(r.service, r.target) for r in rules] == [
        ("test.Svc", "server"), ("test.Svc", "vault"), ("test.Old", "@anyvm")]
    assert rules[2].redirect == "tpl"
    write(etc_dir, "30-inc.policy", "!include include/missing\n")
    with pytest.raises(PolicyError):
        load(run_dir, etc_dir)
    write(etc_dir, "30-inc.policy", "!frobnicate\n")
    with pytest.raises(PolicyError):
        load(run_dir, etc_dir)


def test_absolute_include_stays_inside_the_simulated_dom0(tmp_path: Path) -> None:
    run_dir, etc_dir = tmp_path / "run", tmp_path / "etc"
    write(tmp_path / "etc" / "qubes" / "policy.d" / "include", "x",
          "test.Svc * work server allow\n")
    write(etc_dir, "30-inc.policy", "!include /etc/qubes/policy.d/include/x\n")
    rules = policy.load_policy([run_dir, etc_dir], lambda p: tmp_path / p.relative_to("/"))
    assert rules[0].target == "server"


def test_project_policy_files_parse_and_deny_direct_connections() -> None:
    files = sorted((REPO / "policy").glob("*.policy"))
    if not files:
        pytest.skip("the project has no policy files yet")
    rules: list[policy.Rule] = []
    for path in files:
        rules += policy.parse_text(path.read_text(), path.name)
    fingerprint = "+" + "ab" * 16
    connect = policy.evaluate(rules, Request("qsf.ConnectToFolder", fingerprint, "work", "server"),
                              SYSTEM)
    assert connect.action == "deny"
    authorize = policy.evaluate(rules, Request("qsf.AuthorizeFolderAccess", "+", "work", "dom0"),
                                SYSTEM)
    assert authorize.action == "allow" and authorize.target == "dom0"
