"""Every route an ASGI app built with Starlette or FastAPI serves, as
"METHODS PATH" lines (methods comma-separated; "*" for a mounted app, which
takes any method and every path below it).

Shared by the engines' launchers (tests/tools/*/serve.py), which write these
lines down for the test harness. FastAPI 0.16x keeps included routers as
such (with their prefix) instead of copying their routes into the app's
list: they are walked here.
"""

from starlette.routing import Mount


def route_lines(routes, prefix=""):
    """The lines of `routes`, each path under `prefix`, sorted."""
    lines = set()
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            lines.update(route_lines(included.routes, prefix + (getattr(context, "prefix", "") or "")))
        elif isinstance(route, Mount):
            lines.add(f"* {prefix}{route.path}")
        elif getattr(route, "methods", None):
            lines.add(f"{','.join(sorted(route.methods))} {prefix}{route.path}")
    return sorted(lines)
