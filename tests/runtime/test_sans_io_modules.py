"""The typed request path's plain parts load without trio (issue 15: the node's logic
becomes sans-I/O, so a simulator can drive it): the request kinds, the outcomes and
their classifier, forwarding's codec and table of requests in flight, the groups and
the host core and the store node's logic above it (``test_host_core_sans_io`` and
``test_store_core_sans_io`` also run them with trio unimportable),
and the decisions of the routing, the router's composite operations (with the errors
they route), the mover, the admin commands, founding and the catalog's
reconciliation."""

from __future__ import annotations

import subprocess
import sys

SANS_IO = (
    "boutique.runtime.requests",
    "boutique.runtime.outcomes",
    "boutique.runtime.forwarding",
    "boutique.runtime.group",
    "boutique.runtime.host_core",
    "boutique.runtime.store_core",
    "boutique.testing.host_doubles",
    "boutique.runtime.routing",
    "boutique.runtime.route_errors",
    "boutique.runtime.router_flows",
    "boutique.runtime.mover_plan",
    "boutique.runtime.admin_commands",
    "boutique.runtime.founding_rule",
    "boutique.runtime.catalog_reconcile",
)


def test_the_request_path_modules_import_no_trio() -> None:
    program = (
        "import sys\n"
        f"for name in {SANS_IO!r}:\n"
        "    __import__(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
