"""The dom0 services end to end within dom0: input validation, decisions, policy files."""

from __future__ import annotations

import base64
import multiprocessing
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import support

from qsf_dom0 import policy, services
from qsf_dom0.config import Config
from qsf_dom0.decisions import Answer, Choice
from qsf_dom0.prompt import PromptRequest
from qsf_dom0.store import Store

FOLDER = b"/home/user/share"
B64 = base64.b64encode(FOLDER)


class Scripted:
    """A test prompt: answers from a list, records what it was asked."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.asked: list[PromptRequest] = []

    def ask(self, prompt: PromptRequest) -> Answer:
        self.asked.append(prompt)
        return self.answers.pop(0)


class NeverAsk:
    def ask(self, prompt: PromptRequest) -> Answer:
        raise AssertionError(f"unexpected prompt: {prompt}")


def feed(data: bytes) -> int:
    """An fd reading `data` then EOF (a file: a pipe would block past 64 KiB)."""
    fd = os.memfd_create("stdin")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def call(service: Callable[..., int], data: bytes, env: dict[str, str], *args: object) -> str:
    stdin = feed(data)
    out_read, out_write = os.pipe()
    try:
        assert service(stdin, out_write, env, *args) == 0
    finally:
        os.close(stdin)
        os.close(out_write)
    with os.fdopen(out_read, "rb") as out:
        return out.read().decode()


def authorize(config: Config, prompt: object, data: bytes, client: str = "work") -> str:
    env = {"QREXEC_REMOTE_DOMAIN": client}
    return call(services.authorize, data, env, config, prompt)


def query(config: Config, fp: str, data: bytes, server: str = "vault") -> str:
    env = {"QREXEC_REMOTE_DOMAIN": server, "QREXEC_SERVICE_ARGUMENT": fp}
    return call(services.query, data, env, config)


def request(server: str = "vault", folder: bytes = B64, mode: str = "rw") -> bytes:
    return f"{server}\n".encode() + folder + f"\n{mode}\n".encode()


def policy_lines(config: Config) -> tuple[list[str], list[str]]:
    def lines(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [line for line in path.read_text().splitlines() if not line.startswith("#")]

    grants = lines(config.grants_dir / policy.GRANTS_FILE)
    return grants, lines(config.once_dir / policy.ONCE_FILE)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.under(tmp_path)


def test_allow_once_then_query_consumes_it(config: Config) -> None:
    prompt = Scripted(Answer(Choice.ALLOW_ONCE, "rw"))
    reply = authorize(config, prompt, request())
    verb, fp, mode = reply.split()
    assert (verb, mode) == ("allow", "rw")
    assert policy_lines(config) == ([], [f"qsf.ConnectToFolder +{fp} work vault allow"])
    assert query(config, fp, b"work\n" + B64 + b"\n") == "ok rw\n"
    assert policy_lines(config) == ([], [])  # used once: line gone
    assert query(config, fp, b"work\n" + B64 + b"\n") == "deny unknown\n"
    # and the next mount asks again
    prompt2 = Scripted(Answer(Choice.DENY_ONCE, "ro"))
    assert authorize(config, prompt2, request()) == "deny user\n"
    assert len(prompt2.asked) == 1


def test_allow_always_is_remembered(config: Config) -> None:
    reply = authorize(config, Scripted(Answer(Choice.ALLOW_ALWAYS, "ro")), request())
    _, fp, mode = reply.split()
    assert mode == "ro"
    assert policy_lines(config) == ([f"qsf.ConnectToFolder +{fp} work vault allow"], [])
    assert authorize(config, NeverAsk(), request(mode="ro")) == f"allow {fp} ro\n"
    sub = base64.b64encode(FOLDER + b"/sub")
    assert authorize(config, NeverAsk(), request(folder=sub, mode="ro")) == f"allow {fp} ro\n"
    assert query(config, fp, b"work\n" + sub + b"\n") == "ok ro\n"
    assert query(config, fp, b"work\n" + B64 + b"\n") == "ok ro\n"  # not consumed
    outside = base64.b64encode(b"/home/user")
    assert query(config, fp, b"work\n" + outside + b"\n") == "deny outside\n"
    assert query(config, fp, b"other\n" + B64 + b"\n") == "deny mismatch\n"


def test_query_and_remembered_denies_record_when_last_used(config: Config) -> None:
    store = Store(config.store_path, config.upstream_db)
    env = {"QREXEC_REMOTE_DOMAIN": "work"}
    prompt = Scripted(Answer(Choice.ALLOW_ALWAYS, "rw"))
    fp = call(services.authorize, request(), env, config, prompt, lambda: 100.0).split()[1]
    assert [d.last_used for d in store.load()] == [None]
    later = {"QREXEC_REMOTE_DOMAIN": "vault", "QREXEC_SERVICE_ARGUMENT": fp}
    assert call(services.query, b"work\n" + B64 + b"\n", later, config, lambda: 200.0) == "ok rw\n"
    assert [d.last_used for d in store.load()] == [200.0]
    other = base64.b64encode(b"/srv/secret")
    deny = Scripted(Answer(Choice.DENY_ALWAYS, "rw"))
    assert call(services.authorize, request(folder=other), env, config, deny,
                lambda: 300.0) == "deny user\n"
    assert call(services.authorize, request(folder=other), env, config, NeverAsk(),
                lambda: 400.0) == "deny user\n"
    assert sorted((d.kind.value, d.last_used) for d in store.load()) == [
        ("always", 200.0), ("deny", 400.0)]


def test_unused_once_grant_expires_and_its_line_goes(config: Config) -> None:
    start = time.time()
    clock = iter([start, start, start, start + 61, start + 61])
    prompt = Scripted(Answer(Choice.ALLOW_ONCE, "rw"))
    env = {"QREXEC_REMOTE_DOMAIN": "work"}
    reply = call(services.authorize, request(), env, config, prompt, lambda: next(clock))
    fp = reply.split()[1]
    assert policy_lines(config)[1] != []
    # The next dom0 call, whoever makes it, removes the stale line.
    other = {"QREXEC_REMOTE_DOMAIN": "personal"}
    deny = Scripted(Answer(Choice.DENY_ONCE, "ro"))
    assert call(services.authorize, request(), other, config, deny,
                lambda: start + 61) == "deny user\n"
    assert policy_lines(config) == ([], [])
    later = {"QREXEC_REMOTE_DOMAIN": "vault", "QREXEC_SERVICE_ARGUMENT": fp}
    assert call(services.query, b"work\n" + B64 + b"\n", later, config,
                lambda: start + 61) == "deny unknown\n"


def test_query_of_an_expired_once_grant(config: Config) -> None:
    start = time.time()
    clock = iter([start, start, start])
    prompt = Scripted(Answer(Choice.ALLOW_ONCE, "rw"))
    env = {"QREXEC_REMOTE_DOMAIN": "work"}
    fp = call(services.authorize, request(), env, config, prompt, lambda: next(clock)).split()[1]
    later = {"QREXEC_REMOTE_DOMAIN": "vault", "QREXEC_SERVICE_ARGUMENT": fp}
    assert call(services.query, b"work\n" + B64 + b"\n", later, config,
                lambda: start + 60.5) == "deny expired\n"
    assert policy_lines(config) == ([], [])


def test_block_and_policy_refusals(config: Config) -> None:
    assert authorize(config, Scripted(Answer(Choice.BLOCK, "ro")), request()) == "deny block\n"
    other = base64.b64encode(b"/srv")
    assert authorize(config, NeverAsk(), request(folder=other)) == "deny block\n"
    assert authorize(config, NeverAsk(), request(server="dom0")) == "deny policy\n"
    assert authorize(config, NeverAsk(), request(server="work")) == "deny policy\n"


def test_disposable_is_never_offered_always(config: Config) -> None:
    prompt = Scripted(Answer(Choice.ALLOW_ALWAYS, "rw"))
    reply = authorize(config, prompt, request(), client="disp42")
    assert Choice.ALLOW_ALWAYS not in prompt.asked[0].choices
    assert reply.startswith("allow ")
    grants, once = policy_lines(config)
    assert grants == [] and len(once) == 1


MALFORMED_AUTHORIZE = [
    b"",
    b"vault",  # no newline
    b"vault\n",
    b"-vault\n" + B64 + b"\nrw\n",
    b"@anyvm\n" + B64 + b"\nrw\n",
    b"v" * 40 + b"\n" + B64 + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"relative/x") + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"/a/../etc") + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"/a//b") + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"/a/b/") + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"/a\0b") + b"\nrw\n",
    b"vault\n" + base64.b64encode(b"/" + b"a" * 4096) + b"\nrw\n",
    b"vault\n" + b"L2E=?" + b"\nrw\n",
    b"vault\n" + b"L2E" + b"\nrw\n",
    b"vault\n" + B64 + b"\nwr\n",
    b"vault\n" + B64 + b"\nrwx\n",
    b"vault\n" + B64 + b"\n",
    b"vault\n" + b"A" * 100_000 + b"\nrw\n",
]


@pytest.mark.parametrize("data", MALFORMED_AUTHORIZE)
def test_malformed_authorize_writes_nothing(config: Config, data: bytes, tmp_path: Path) -> None:
    assert authorize(config, NeverAsk(), data) == "deny invalid\n"
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"QREXEC_REMOTE_DOMAIN": "bad name"},
        {"QREXEC_REMOTE_DOMAIN": "work", "QREXEC_SERVICE_ARGUMENT": "x"},
    ],
)
def test_authorize_checks_its_environment(config: Config, env: dict[str, str],
                                          tmp_path: Path) -> None:
    assert call(services.authorize, request(), env, config, NeverAsk()) == "deny invalid\n"
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("fp", "data"),
    [
        ("", b"work\n" + B64 + b"\n"),
        ("0" * 31, b"work\n" + B64 + b"\n"),
        ("0" * 31 + "G", b"work\n" + B64 + b"\n"),
        ("A" * 32, b"work\n" + B64 + b"\n"),
        ("-" + "0" * 31, b"work\n" + B64 + b"\n"),
        ("0" * 32, b"work\n"),
        ("0" * 32, b"wo rk\n" + B64 + b"\n"),
        ("0" * 32, b"work\n" + base64.b64encode(b"/..") + b"\n"),
    ],
)
def test_malformed_query_writes_nothing(config: Config, fp: str, data: bytes,
                                        tmp_path: Path) -> None:
    assert query(config, fp, data) == "deny invalid\n"
    assert list(tmp_path.rglob("*")) == []


def test_corrupt_store_denies_internal_and_is_left_alone(config: Config) -> None:
    config.store_path.parent.mkdir(parents=True)
    config.store_path.write_text("{not json")
    assert authorize(config, NeverAsk(), request()) == "deny internal\n"
    assert config.store_path.read_text() == "{not json"


def test_installed_wrappers_validate_input(tmp_path: Path) -> None:
    """The qubes-rpc files as qrexec runs them, dom0 state under QSF_DOM0_ROOT."""
    env = {
        "PATH": f"{support.VENV_BIN}:/usr/bin:/bin",
        "QSF_DOM0_ROOT": str(tmp_path),
        "QREXEC_REMOTE_DOMAIN": "work",
    }
    rpc = support.REPO / "qubes-rpc"
    result = subprocess.run([rpc / "qsf.AuthorizeFolderAccess"], input=b"vault\nnot base64!\nrw\n",
                            env=env, capture_output=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, b"deny invalid\n")
    assert b"malformed base64" in result.stderr
    query_env = {**env, "QREXEC_REMOTE_DOMAIN": "vault", "QREXEC_SERVICE_ARGUMENT": "1" * 32}
    result = subprocess.run([rpc / "qsf.QueryFolderAuthorization", "1" * 32],
                            input=b"work\n" + B64 + b"\n", env=query_env,
                            capture_output=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, b"deny unknown\n")
    assert not (tmp_path / "etc/qubes/policy.d/79-qsf-grants.policy").read_text().count("allow")


# Busy and rate limits, across processes.


def _authorize_in_child(root: str, hold: str, done: str) -> None:
    """A child process whose prompt stays open until file `hold` disappears."""

    class Holding:
        def ask(self, prompt: PromptRequest) -> Answer:
            Path(done).touch()
            while Path(hold).exists():
                time.sleep(0.02)
            return Answer(Choice.DENY_ONCE, "ro")

    config = Config.under(Path(root))
    reply = authorize(config, Holding(), request())
    Path(done).write_text(reply)


def test_second_prompt_for_the_same_client_is_busy(tmp_path: Path) -> None:
    config = Config.under(tmp_path / "root")
    hold, started = tmp_path / "hold", tmp_path / "started"
    hold.touch()
    child = multiprocessing.get_context("fork").Process(
        target=_authorize_in_child, args=(str(tmp_path / "root"), str(hold), str(started))
    )
    child.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline and child.is_alive()
            time.sleep(0.02)
        assert authorize(config, NeverAsk(), request()) == "deny busy\n"
        # another client is not held up
        other = Scripted(Answer(Choice.DENY_ONCE, "ro"))
        assert authorize(config, other, request(), client="personal") == "deny user\n"
    finally:
        hold.unlink()
        child.join(30)
    assert child.exitcode == 0
    assert started.read_text() == "deny user\n"


def _one_prompt(root: str) -> None:
    config = Config.under(Path(root))
    assert authorize(config, Scripted(Answer(Choice.DENY_ONCE, "ro")), request()) == "deny user\n"


def test_at_most_three_prompts_per_client_a_minute(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for _ in range(3):
        child = context.Process(target=_one_prompt, args=(str(tmp_path),))
        child.start()
        child.join(30)
        assert child.exitcode == 0
    config = Config.under(tmp_path)
    assert authorize(config, NeverAsk(), request()) == "deny busy\n"
    assert authorize(config, Scripted(Answer(Choice.DENY_ONCE, "ro")), request(),
                     client="personal") == "deny user\n"
