"""meshlib's tooling, fenced off from the runtime core.

The runtime core (clients, transports, discovery, policy, middleware) never
imports this package; only the command line and :class:`meshlib.testing.Fleet`
load it, when used. It holds what surrounds the runtime:

* :mod:`.backend`: the loopback HTTP/1.1 fault server (parsing, behaviour,
  control, a thread runner and a child-process runner), the engine of
  :class:`meshlib.testing.Fleet` and of meshlib's own tests;
* :mod:`.bench`, :mod:`.demo`, :mod:`.status`: the ``meshlib bench``,
  ``meshlib demo`` and ``meshlib status`` commands; the bench's measurements
  each have a module (:mod:`.overhead`, :mod:`.sidecar` with :mod:`.envoy`,
  :mod:`.tail`, :mod:`.routes_cost`, :mod:`.throughput`, :mod:`.pick`,
  :mod:`.memory`, :mod:`.large_set`) and :mod:`.report` prints the table;
* :mod:`.demo_baseline`: httpx + tenacity retries, the demo's second baseline.

Not public API: users reach it through :mod:`meshlib.testing` and the CLI.
"""
