"""meshlib's tooling, fenced off from the runtime core.

The runtime core (clients, transports, discovery, policy, middleware) never
imports this package; only the command line and `meshlib.testing.Fleet`
load it, when used. It holds what surrounds the runtime:

* `.backend`: the loopback HTTP/1.1 fault server (parsing, behaviour,
  control, a thread runner and a child-process runner), the engine of
  `meshlib.testing.Fleet` and of meshlib's own tests;
* `.bench`, `.demo`, `.status`: the `meshlib bench`,
  `meshlib demo` and `meshlib status` commands; the bench's measurements
  each have a module (`.overhead`, `.sidecar` with `.envoy`,
  `.tail`, `.routes_cost`, `.throughput`, `.pick`,
  `.memory`, `.large_set`) and `.report` prints the table;
* `.demo_baseline`: httpx + tenacity retries, the demo's second baseline;
* `.resolve_routes` and `.printing`: `meshlib resolve xds:///...` and the
  print-on-change of every `--watch`.

Not public API: users reach it through `meshlib.testing` and the CLI.
"""
