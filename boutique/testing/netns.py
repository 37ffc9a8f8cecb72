"""Each node on a host of its own: Linux network namespaces joined by a bridge, for tests.

``NetLab`` builds a small private network on this machine, the way Jepsen gets separate
hosts: a bridge in the root namespace holding ``10.213.X.1/24`` (X picked so that no
other lab on the machine uses it), and for every host a network namespace with a veth
pair into the bridge and the address ``10.213.X.(10+i)``. Test clients stay in the root
namespace and reach every host through the bridge; nodes run inside their namespaces
(``ip netns exec``), so a fault made with iptables inside a namespace is below the
process: packets vanish, and TCP connections hang instead of closing.

Faults live in a chain of our own (``BQ-FAULTS``) hooked into INPUT and OUTPUT of each
namespace, so healing is one flush per namespace:

* ``cut(a, b)``: packets from ``a`` to ``b`` are dropped (one way); ``partition`` cuts
  every link between groups both ways, a silent partition;
* ``lose(host, p)``: drop a random share ``p`` of the packets it receives from the other
  hosts (iptables' ``statistic`` match);
* delay and jitter: this kernel may have no ``netem``, so every peer connection a host
  dials goes through a transparent proxy in its namespace (``delay_proxy``), redirected
  there by an iptables NAT rule; ``set_delay`` changes its delay at run time.

Everything made is recorded and undone by ``close()`` (also on exceptions, through
``with``). Names carry the creating process's PID, so ``sweep_stale()`` removes what a
killed run left behind. It never touches an interface, namespace or rule it did not
make, and it only ever assigns addresses inside its own /24 to interfaces it created.

Needs root, ``ip`` (iproute2) and ``iptables``; ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PREFIX = "bq"
"""Every namespace and interface a lab makes starts with this."""
SUBNET_BASE = "10.213"
FAULT_CHAIN = "BQ-FAULTS"
PROXY_MARK = "0x5b"
"""Set on the delay proxy's own outgoing connections so the NAT rule lets them pass."""
PROXY_PORT = 7999
"""Where the delay proxy listens, on 127.0.0.1 inside each namespace."""


class NetLabError(RuntimeError):
    """A command that builds or changes the lab failed; the message has its output."""


def unavailable() -> str | None:
    """Why a lab cannot be built here (None if it can): the reason a test skips with."""
    if sys.platform != "linux":
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "creating network namespaces and iptables rules needs root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian package {package}; tools/ensure-clients.sh installs it as root)"
    probe = f"{PREFIX}probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        rule = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-w", "-A", "INPUT", "-m", "statistic",
             "--mode", "random", "--probability", "0.5", "-j", "DROP"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if rule.returncode != 0:
            return f"iptables does not work in a namespace here: {rule.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetLabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete the namespaces and bridges of labs whose creating process is gone (a run
    that was killed before it could clean up). Returns what it removed."""
    removed = []
    pattern = re.compile(rf"^{PREFIX}-(\d+)-")
    for line in _run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    bridge = re.compile(rf"^\d+: ({PREFIX}(\d+)br)[:@]")
    for line in _run("ip", "-o", "link", "show", check=False).splitlines():
        match = bridge.match(line)
        if match and not _pid_alive(int(match.group(2))):
            _run("ip", "link", "del", match.group(1), check=False)
            removed.append(match.group(1))
    return removed


def _subnets_in_use() -> set[int]:
    used = set()
    for match in re.finditer(rf"inet {SUBNET_BASE}\.(\d+)\.", _run("ip", "-o", "addr", "show")):
        used.add(int(match.group(1)))
    return used


@dataclass(slots=True)
class Host:
    """One namespace of the lab."""

    name: str
    namespace: str
    address: str
    veth: str
    delay_file: Path | None = None
    proxy: subprocess.Popen[bytes] | None = None
    rules: list[list[str]] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it on this host."""
        return ["ip", "netns", "exec", self.namespace]


class NetLab:
    """A bridge and one namespace per host name. Use as a context manager."""

    def __init__(self, names: list[str], workdir: Path) -> None:
        reason = unavailable()
        if reason is not None:
            raise NetLabError(reason)
        sweep_stale()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        used = _subnets_in_use()
        free = [x for x in range(1 + pid % 200, 255) if x not in used] + [
            x for x in range(1, 255) if x not in used
        ]
        if not free:
            raise NetLabError(f"no free /24 left in {SUBNET_BASE}.0.0/16")
        self.subnet = f"{SUBNET_BASE}.{free[0]}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{PREFIX}{pid}br"
        if len(self.bridge) > 15:
            raise NetLabError(f"interface name {self.bridge} is too long")
        self.hosts: dict[str, Host] = {}
        self._closed = False
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i, name in enumerate(names):
                self._add_host(i, name, pid)
        except BaseException:
            self.close()
            raise

    def _add_host(self, i: int, name: str, pid: int) -> None:
        namespace = f"{PREFIX}-{pid}-{name}"
        outside = f"{PREFIX}{pid}v{i}"
        host = Host(name, namespace, f"{self.subnet}.{10 + i}", outside)
        self.hosts[name] = host
        _run("ip", "netns", "add", namespace)
        _run(
            "ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace
        )
        _run("ip", "link", "set", outside, "master", self.bridge)
        _run("ip", "link", "set", outside, "up")
        inside = host.exec_prefix()
        _run(*inside, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "iptables", "-w", "-N", FAULT_CHAIN)
        _run(*inside, "iptables", "-w", "-I", "INPUT", "-j", FAULT_CHAIN)
        _run(*inside, "iptables", "-w", "-I", "OUTPUT", "-j", FAULT_CHAIN)

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the proxies, delete every namespace (their veth ends go with them) and
        the bridge. Safe to call twice; never raises for what is already gone."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            if host.proxy is not None and host.proxy.poll() is None:
                host.proxy.kill()
                host.proxy.wait(timeout=10)
            _run("ip", "netns", "del", host.namespace, check=False)
            _run("ip", "link", "del", host.veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)

    def address(self, name: str) -> str:
        return self.hosts[name].address

    # --- faults -------------------------------------------------------------------------

    def _rule(self, name: str, *rule: str) -> None:
        host = self.hosts[name]
        _run(*host.exec_prefix(), "iptables", "-w", "-A", FAULT_CHAIN, *rule)
        host.rules.append(list(rule))

    def cut(self, frm: str, to: str) -> None:
        """Drop every packet from ``frm`` to ``to`` (one way), on both ends, so the cut
        holds whichever of the two namespaces looks."""
        self._rule(frm, "-d", self.address(to), "-j", "DROP")
        self._rule(to, "-s", self.address(frm), "-j", "DROP")

    def partition(self, *groups: set[str] | list[str]) -> None:
        """Cut every link between hosts of different groups, both ways (silently: no
        reset, no ICMP). Hosts in no group keep their links; clients in the root
        namespace reach everyone."""
        members = [set(g) for g in groups]
        for i, group in enumerate(members):
            for other in members[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)
                        self.cut(b, a)

    def lose(self, name: str, probability: float) -> None:
        """Drop a random share of the packets ``name`` receives from the other hosts
        (not from test clients, which come from the bridge address)."""
        for other, host in self.hosts.items():
            if other != name:
                self._rule(
                    name, "-s", host.address, "-m", "statistic", "--mode", "random",
                    "--probability", f"{probability:.4f}", "-j", "DROP",
                )  # fmt: skip

    def isolate(self, name: str) -> None:
        """Drop every packet ``name`` sends or receives on its link, test clients' too."""
        self._rule(name, "-i", "eth0", "-j", "DROP")  # the chain hangs off INPUT...
        self._rule(name, "-o", "eth0", "-j", "DROP")  # ...and OUTPUT

    def heal(self) -> None:
        """Remove every cut and loss rule (delays are changed with ``set_delay``)."""
        for host in self.hosts.values():
            if host.rules:
                _run(*host.exec_prefix(), "iptables", "-w", "-F", FAULT_CHAIN)
                host.rules.clear()

    # --- delay --------------------------------------------------------------------------

    def start_delay_proxies(self, peer_ports: list[int]) -> None:
        """Route every connection a host dials to ``peer_ports`` of another host through
        a proxy in its own namespace, which delays what it forwards (initially by
        nothing). Call before the nodes dial each other: connections made before stay
        direct."""
        ports = ",".join(str(p) for p in sorted(set(peer_ports)))
        for host in self.hosts.values():
            host.delay_file = self.workdir / f"delay-{host.name}.json"
            host.delay_file.write_text(json.dumps({"delay": 0.0, "jitter": 0.0}))
            log = open(self.workdir / f"proxy-{host.name}.log", "ab")  # noqa: SIM115
            try:
                host.proxy = subprocess.Popen(
                    [*host.exec_prefix(), sys.executable, "-m", "boutique.testing.delay_proxy",
                     "--port", str(PROXY_PORT), "--mark", PROXY_MARK,
                     "--settings", str(host.delay_file)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            finally:
                log.close()
            _run(
                *host.exec_prefix(), "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                "-d", f"{self.subnet}.0/24", "-m", "multiport", "--dports", ports,
                "-m", "mark", "!", "--mark", PROXY_MARK,
                "-j", "REDIRECT", "--to-ports", str(PROXY_PORT),
            )  # fmt: skip
        for host in self.hosts.values():
            self._wait_for_proxy(host)

    def _wait_for_proxy(self, host: Host, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        ready = self.workdir / f"delay-{host.name}.json.ready"
        while not ready.exists():
            if host.proxy is not None and host.proxy.poll() is not None:
                log = (self.workdir / f"proxy-{host.name}.log").read_text(errors="replace")
                raise NetLabError(f"the delay proxy of {host.name} exited:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                raise NetLabError(f"the delay proxy of {host.name} did not start")
            time.sleep(0.02)

    def set_delay(self, name: str, delay: float, jitter: float = 0.0) -> None:
        """What ``name`` sends to other hosts arrives ``delay`` ± ``jitter`` seconds late
        (uniformly spread; order is kept, as on one TCP stream)."""
        host = self.hosts[name]
        if host.delay_file is None:
            raise NetLabError("start_delay_proxies() first")
        temporary = host.delay_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"delay": delay, "jitter": jitter}))
        temporary.replace(host.delay_file)

    def clear_delays(self) -> None:
        for name, host in self.hosts.items():
            if host.delay_file is not None:
                self.set_delay(name, 0.0)


def kill_quietly(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)
