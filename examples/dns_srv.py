"""DNS SRV discovery against a local dnsmasq: weights, priorities, and a change picked up live.

Run it (needs dnsmasq: ``apt-get install dnsmasq``, or
``scripts/install-servers.sh``; it is started here on a free loopback port, as
the current user, and stopped at the end)::

    python examples/dns_srv.py [--dnsmasq PATH]

Three backends are published as ``_http._tcp.users.mesh.test``: two in
priority 10 with SRV weights 3 and 1, one in priority 20 (a standby, used only
when the first group has no endpoint). A ``MeshClient`` with
``dns+srv://_http._tcp.users.mesh.test?nameserver=127.0.0.1:PORT`` spreads
requests over the first group; then the records change (the standby becomes
the only priority-10 record) and, after the 1 s TTL, traffic follows.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from _loopback import Backends

import meshlib

SRV = "_http._tcp.users.mesh.test"


def free_udp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (DNS uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free loopback port")


class Dnsmasq:
    """dnsmasq in the foreground on 127.0.0.1:``port``, serving only the given records."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.dir = Path(tempfile.mkdtemp(prefix="meshlib-example-dnsmasq-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, records: list[str]) -> None:
        """(Re)start with ``records`` (dnsmasq options without ``--``), TTL 1 s."""
        self.stop_process()
        conf = self.dir / "dnsmasq.conf"
        conf.write_text("\n".join([
            "keep-in-foreground", "pid-file=", "user=root", f"port={self.port}",
            "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
            "local-ttl=1", "local=/mesh.test/", *records]) + "\n")
        self.proc = subprocess.Popen([self.binary, f"--conf-file={conf}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        limit = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > limit:
                self.stop_process()
                raise RuntimeError(f"dnsmasq did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether dnsmasq answers a query yet."""
        query = dns.message.make_query(SRV, "SRV")
        try:
            dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def stop_process(self) -> None:
        """Stop dnsmasq if it runs."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def stop(self) -> None:
        """Stop dnsmasq and remove its directory."""
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


def records(ports: list[int], weights: list[int], priorities: list[int]) -> list[str]:
    """SRV records for ``node{i}.mesh.test`` on ``ports``, plus their A records."""
    lines = []
    for i, (port, weight, priority) in enumerate(zip(ports, weights, priorities, strict=True)):
        lines.append(f"srv-host={SRV},node{i}.mesh.test,{port},{priority},{weight}")
        lines.append(f"host-record=node{i}.mesh.test,127.0.0.1")
    return lines


def spread(client: meshlib.MeshClient, n: int) -> Counter[str]:
    """Which endpoint answered each of ``n`` GETs."""
    return Counter(client.get("http://users/").extensions["meshlib"]["endpoint"]
                   for _ in range(n))


def main() -> int:
    """Publish, discover, call, change the records, call again."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dnsmasq", default=shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
                        help="the dnsmasq binary")
    args = parser.parse_args()
    if not Path(args.dnsmasq).is_file():
        print(f"dns_srv: dnsmasq not found at {args.dnsmasq}: apt-get install dnsmasq "
              "(or scripts/install-servers.sh), or pass --dnsmasq PATH", file=sys.stderr)
        return 1
    dns = Dnsmasq(args.dnsmasq, free_udp_port())
    with Backends(3) as users:
        ports = [int(a.rsplit(":", 1)[1]) for a in users.addresses]
        try:
            dns.start(records(ports, weights=[3, 1, 1], priorities=[10, 10, 20]))
            url = f"dns+srv://{SRV}?nameserver=127.0.0.1:{dns.port}"
            print(f"discovery URL: {url}")
            policy = meshlib.Policy(balancer="random")  # spread by SRV weight alone
            with meshlib.MeshClient(services={"users": url}, policy=policy) as client:
                first = spread(client, 200)
                print("priority 10 (weights 3, 1): " + ", ".join(
                    f"{a} x{first[a]}" for a in users.addresses))
                dns.start(records(ports, weights=[1, 1, 1], priorities=[20, 20, 10]))
                # the TTL is 1 s: discovery refreshes on its own, within a few seconds
                limit = time.monotonic() + 15
                while spread(client, 1)[users.addresses[2]] == 0:
                    if time.monotonic() > limit:
                        raise RuntimeError("the change was not picked up within 15 s")
                    time.sleep(0.1)
                second = spread(client, 20)
                print("after the change: " + ", ".join(
                    f"{a} x{second[a]}" for a in users.addresses))
        except RuntimeError as exc:
            print(f"dns_srv: {exc}", file=sys.stderr)
            return 1
        finally:
            dns.stop()
    print("servers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
