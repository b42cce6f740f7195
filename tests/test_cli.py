"""The meshlib command line: resolve (once and --watch) and its errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from meshlib.cli import main
from servers import Dnsmasq

SRV = "_http._tcp.svc.mesh.test"


def test_resolve_prints_a_static_list(capsys: pytest.CaptureFixture[str]) -> None:
    """meshlib resolve URL prints each endpoint, IPv6 in brackets."""
    assert main(["resolve", "static://127.0.0.1:8001,[::1]:8002"]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.1:8001" in out and "[::1]:8002" in out


def test_resolve_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the set as JSON."""
    assert main(["resolve", "--json", "static://127.0.0.1:8001"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["endpoint"] == "127.0.0.1:8001" and data[0]["weight"] == 1.0


def test_resolve_reports_bad_urls(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed URL gives exit status 2 and a one-line error naming it."""
    assert main(["resolve", "static://host:port"]) == 2
    assert "static://host:port" in capsys.readouterr().err


def test_resolve_ignores_unrelated_environment(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A bad MESHLIB_SERVICES does not stop resolving an unrelated URL."""
    monkeypatch.setenv("MESHLIB_SERVICES", "garbage")
    assert main(["resolve", "static://127.0.0.1:8001"]) == 0


@pytest.mark.server
def test_resolve_watch_prints_only_changes() -> None:
    """--watch against a TTL-1 SRV set prints it once, not on every refresh."""
    with Dnsmasq([f"srv-host={SRV},node1.mesh.test,18081,10,10",
                  "host-record=node1.mesh.test,127.0.0.1"], ttl=1) as dns:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshlib", "resolve", "--watch",
             f"dns+srv://{SRV}?nameserver={dns.nameserver}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3.5)  # three refreshes at TTL 1 s
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
    assert out.count("127.0.0.1:18081") == 1, out + err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """meshlib --version prints the package version and exits 0."""
    import meshlib

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"meshlib {meshlib.__version__}"


def test_resolve_a_service_name_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """meshlib resolve NAME looks NAME up in MESHLIB_SERVICES (ignoring case)."""
    monkeypatch.setenv("MESHLIB_SERVICES",
                       "users=static://127.0.0.1:8001 orders=static://127.0.0.1:9001")
    assert main(["resolve", "Users"]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.1:8001" in out and "9001" not in out


@pytest.mark.parametrize(("services", "hint"), [
    (None, "MESHLIB_SERVICES is not set"),
    ("orders=static://127.0.0.1:9001", "which names orders"),
])
def test_resolve_an_unknown_name(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str],
                                 services: str | None, hint: str) -> None:
    """An unknown service name exits 2 with one line saying where it was looked up."""
    if services is None:
        monkeypatch.delenv("MESHLIB_SERVICES", raising=False)
    else:
        monkeypatch.setenv("MESHLIB_SERVICES", services)
    assert main(["resolve", "users"]) == 2
    err = capsys.readouterr().err
    assert "'users'" in err and hint in err and len(err.strip().splitlines()) == 1


def test_every_command_and_option_has_help() -> None:
    """--help explains every subcommand, argument and option."""
    import argparse

    from meshlib.cli import _parser

    parser = _parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) >= {"demo", "resolve", "bench", "status"}
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        assert helps.get(name), f"{name} has no help line"
        assert command.description, f"{name} has no description"
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for action in parser._actions:
        assert action.help or action is sub, action


def _run_into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m meshlib ARGV`` with a standard output nobody reads (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a line
    try:
        return subprocess.run([sys.executable, "-m", "meshlib", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)


def test_resolve_into_a_closed_pipe_exits_quietly() -> None:
    """meshlib resolve URL | head: no BrokenPipeError traceback, status 141 as for SIGPIPE."""
    endpoints = ",".join(f"127.0.0.1:{8000 + i}" for i in range(50))
    done = _run_into_closed_pipe(["resolve", f"static://{endpoints}"])
    assert done.stderr == ""
    assert done.returncode == 141
