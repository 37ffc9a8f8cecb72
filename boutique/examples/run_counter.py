"""A replicated counter you type into: one member of a group per terminal.

    python -m boutique.examples.run_counter --id 1 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103

Start the same command with `--id 2` and `--id 3` in two more terminals, then type
into any of them (one command per line; replies are printed on stdout):

    incr N | decr N | set N   change the counter; prints the new value
    value                     the current value (a linearizable read)
    leader                    the id of the member this one believes leads
    status                    this member's view of the group
    add ID HOST:PORT          add a member (start it with --join)
    remove ID                 remove a member
    transfer ID               hand leadership to a member
    quit                      stop this member (so does Ctrl-C or end of input)

In a terminal the prompt is `counter[N]> `. Errors are printed as
`error: <kind>: <message>` and the member keeps running, except `Removed`: a member
removed from the group prints that error and exits. It uses `BlockingMember`, the
library's API for code that is not async. With `--data-dir` the member keeps its log on
disk and restarts with its state; without, a restarted member catches up from the
others. The README's library section runs exactly these commands in a test, so change
the output only together with that text. It is an example: one member per process, and
no state of its own besides the member's.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from boutique.command_line import add_version
from boutique.examples.counter import Counter, CounterCommand
from boutique.group import BlockingMember, GroupError, Removed

DEMO_SECRET = "boutique-counter-demo-secret"

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def parse_peers(text: str) -> dict[int, Address]:
    peers: dict[int, Address] = {}
    for item in text.split(","):
        node, sep, address = item.partition("=")
        if not sep or not node.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, not {item!r}")
        peers[int(node)] = parse_address(address.strip())
    return peers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m boutique.examples.run_counter",
        description="One member of a replicated counter; type commands on stdin.",
    )
    add_version(parser)
    parser.add_argument("--id", type=int, required=True, help="this member's node id")
    parser.add_argument(
        "--peers",
        type=parse_peers,
        required=True,
        help="ID=HOST:PORT,... for every founding member, this one included "
        "(a joining member: itself and at least one existing member)",
    )
    parser.add_argument("--data-dir", help="keep the log here (default: in memory)")
    parser.add_argument("--join", action="store_true", help="join an existing group")
    parser.add_argument(
        "--secret",
        default=os.environ.get("BOUTIQUE_SECRET"),
        help="the group's shared secret (default: $BOUTIQUE_SECRET, else a demo secret)",
    )
    return parser


def handle(member: BlockingMember[CounterCommand, int, str, int], line: str) -> str | None:
    """Run one typed command; the text to print, or None to stop."""
    words = line.split()
    match words:
        case []:
            return ""
        case ["quit" | "exit"]:
            return None
        case [("incr" | "decr" | "set") as op, number] if _is_int(number):
            return str(member.command((op, int(number))))
        case ["value"]:
            return str(member.query("value"))
        case ["leader"]:
            leader = member.leader()
            return str(leader) if leader is not None else "none"
        case ["status"]:
            s = member.status()
            return (
                f"member {s.node_id}: {s.role}, leader {s.leader}, term {s.term}, "
                f"applied {s.applied_index}, voters {list(s.voters)}, learners {list(s.learners)}"
            )
        case ["add", node, address] if node.isdigit():
            member.add_member(int(node), parse_address(address))
            return f"added {node}"
        case ["remove", node] if node.isdigit():
            member.remove_member(int(node))
            return f"removed {node}"
        case ["transfer", node] if node.isdigit():
            member.transfer_leadership(int(node))
            return f"{node} leads"
        case _:
            return "error: syntax: incr N | decr N | set N | value | leader | status | quit"


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def repl(member: BlockingMember[CounterCommand, int, str, int], stdin: TextIO) -> None:
    interactive = stdin.isatty()
    while True:
        if interactive:
            print(f"counter[{member.node_id}]> ", end="", flush=True)
        line = stdin.readline()
        if not line:
            return
        try:
            reply = handle(member, line)
        except Removed as exc:
            print(f"error: Removed: {exc}; stopping", flush=True)
            return  # it serves nothing any more
        except GroupError as exc:
            reply = f"error: {type(exc).__name__}: {exc}"
        except (ValueError, argparse.ArgumentTypeError) as exc:
            reply = f"error: syntax: {exc}"
        if reply is None:
            return
        if reply:
            print(reply, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.id not in args.peers:
        print(f"--peers must include this member ({args.id})", file=sys.stderr)
        return 2
    secret = args.secret
    if secret is None:
        secret = DEMO_SECRET
        print("note: using the demo secret; set BOUTIQUE_SECRET for real use", file=sys.stderr)
    host, port = args.peers[args.id]
    where = f"data in {args.data_dir}" if args.data_dir else "in memory"
    print(f"counter member {args.id} listening on {host}:{port} ({where})", file=sys.stderr)
    try:
        with BlockingMember.start(
            Counter(),
            node_id=args.id,
            members=args.peers,
            secret=secret,
            data_dir=args.data_dir,
            join=args.join,
        ) as member:
            print("type: incr N | decr N | value | leader | status | quit", file=sys.stderr)
            repl(member, sys.stdin)
    except KeyboardInterrupt:
        pass
    print(f"counter member {args.id} stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
