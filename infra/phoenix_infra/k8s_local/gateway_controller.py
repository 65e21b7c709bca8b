"""The local cluster's gateway controller: implements HTTPRoute for Gateway
``phoenix`` (GatewayClass ``phoenix-haproxy``, controllerName
``phoenix.deploy/haproxy-gateway``) on the stack's HAProxy.

Run by the ``k8s-local`` stack as a process of its own (``gateway.py``):
``python gateway_controller.py <config.json>``. It imports only the official
``kubernetes`` client and the tree's HAProxy runtime-API client
(``plugins/module_utils/platforms/local/haproxy.py``, loaded by path).

- Three watches (HTTPRoutes, Services, EndpointSlices of the namespace; a full
  list again after every watch ends) feed in-memory caches; every change, and
  a tick every ``tick`` seconds (HAProxy restarted by ``pulumi up`` comes back
  with empty backends), runs one reconcile.
- The HAProxy config (written by the stack) has one frontend per listener
  (one per artifact, on its own loopback port) whose backend is
  ``be_<namespace>_<route>`` for the listener's route ``<artifact>-<env>``.
- Per backendRef Service, one server per ready endpoint (EndpointSlice
  readiness is the source of truth), named ``<service>.<slot>``, weight = the
  backendRef weight split over the Service's ready endpoints (integers,
  scaled into HAProxy's 0-256 when needed). An endpoint that goes away is set
  to MAINT with weight 0 and kept (its counters stay readable) until its
  Service leaves the route; then its servers are deleted.
- HTTPRoute ``status.parents[]`` gets Accepted and ResolvedRefs with
  ``observedGeneration`` = the route's generation, written only after HAProxy
  shows that generation's servers and weights. A new generation that weighs
  a Service with no ready endpoint in the cache yet is held (HAProxy keeps
  the last one) until the EndpointSlice shows one: the watch can lag the
  pods' readiness, and that share would otherwise go to no server.
"""
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
HAPROXY_MAX_WEIGHT = 256
_HAPROXY_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir,
                           "plugins", "module_utils", "platforms", "local", "haproxy.py")
log = logging.getLogger("phoenix-gateway")


def load_haproxy():
    spec = importlib.util.spec_from_file_location("phoenix_gateway_haproxy", _HAPROXY_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- pure logic

def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parent_refs(route, gateway, namespace):
    """The route's parentRefs that name our Gateway."""
    found = []
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if (ref.get("group", GROUP) == GROUP and ref.get("kind", "Gateway") == "Gateway"
                and ref.get("name") == gateway and ref.get("namespace", namespace) == namespace):
            found.append(ref)
    return found


def unsupported(route):
    """Why the route uses something this gateway does not implement, or None:
    one rule, no hostnames, no filters, matches absent or path prefix ``/``."""
    spec = route.get("spec") or {}
    if spec.get("hostnames"):
        return "hostnames are not supported (each listener serves one route on its own port)"
    rules = spec.get("rules") or []
    if len(rules) != 1:
        return f"exactly one rule is supported, the route has {len(rules)}"
    rule = rules[0]
    for match in rule.get("matches") or []:
        if set(match) - {"path"} or (match.get("path") or {}) not in ({"type": "PathPrefix", "value": "/"}, {}):
            return "only the match path prefix '/' is supported"
    if rule.get("filters") or any(ref.get("filters") for ref in rule.get("backendRefs") or []):
        return "filters are not supported"
    return None


def ready_endpoints(service, slices, ref_port):
    """``[(ip, port)]`` of the ready endpoints of ``service`` (a Service dict)
    for its port ``ref_port``, from the EndpointSlices that name it."""
    svc_port = next((p for p in (service.get("spec") or {}).get("ports") or [] if p.get("port") == ref_port), None)
    if svc_port is None:
        return None
    name = svc_port.get("name") or ""
    found = []
    for sl in slices:
        ports = [p for p in sl.get("ports") or [] if (p.get("name") or "") == name]
        if not ports or sl.get("addressType") != "IPv4":
            continue
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating"):
                continue
            found += [(addr, int(ports[0]["port"])) for addr in (ep.get("addresses") or [])[:1]]
    return sorted(set(found))


def split_weights(refs):
    """``{service: (weight, [(ip, port)])}`` -> ``{service: per-endpoint HAProxy
    weight}``: the backendRef weight split over its ready endpoints, scaled
    down (all alike) when one would exceed HAProxy's 256; a non-zero share
    never rounds to 0."""
    raw = {svc: (w / len(eps) if eps else 0.0) for svc, (w, eps) in refs.items()}
    top = max(raw.values(), default=0)
    factor = HAPROXY_MAX_WEIGHT / top if top > HAPROXY_MAX_WEIGHT else 1.0
    return {svc: (max(1, int(round(v * factor))) if v > 0 else 0) for svc, v in raw.items()}


def plan(backend, actual, desired, haproxy):
    """Runtime-API commands that turn ``actual`` (``show servers state`` of
    ``backend``) into ``desired`` (``{service: (weight, [(ip, port)])}`` after
    weights were split: ``{service: (server weight, endpoints)}``). Returns
    (commands, expected ``{server: (ip, port, weight, maint)}``)."""
    by_service = {}
    for name, srv in actual.items():
        svc, _sep, slot = name.rpartition(".")
        if svc and slot.isdigit():
            by_service.setdefault(svc, {})[int(slot)] = (srv["address"], int(srv["port"]), srv)
    commands, expected = [], {}
    for svc, (weight, endpoints) in sorted(desired.items()):
        slots = by_service.get(svc, {})
        where = {(ip, port): slot for slot, (ip, port, _s) in slots.items()}
        used = set(slots)
        for ip, port in endpoints:
            slot = where.get((ip, port))
            name = None
            if slot is None:
                slot = next(n for n in range(len(used) + 1) if n not in used)
                used.add(slot)
                name = haproxy.gateway_server(svc, slot)
                commands += [("add", "server", f"{backend}/{name}", f"{ip}:{port}", "weight", weight),
                             ("enable", "server", f"{backend}/{name}")]
            else:
                name = haproxy.gateway_server(svc, slot)
                srv = slots[slot][2]
                if srv["weight"] != weight:
                    commands.append(("set", "server", f"{backend}/{name}", "weight", weight))
                if srv["admin"] & 0x01:
                    commands.append(("set", "server", f"{backend}/{name}", "state", "ready"))
            expected[name] = (ip, port, weight, False)
        for slot, (ip, port, srv) in sorted(slots.items()):
            if (ip, port) in set(endpoints):
                continue
            name = haproxy.gateway_server(svc, slot)
            if srv["weight"] != 0:
                commands.append(("set", "server", f"{backend}/{name}", "weight", 0))
            if not srv["admin"] & 0x01:
                commands.append(("set", "server", f"{backend}/{name}", "state", "maint"))
            expected[name] = (ip, port, 0, True)
    for svc, slots in sorted(by_service.items()):  # Services that left the route
        if svc in desired:
            continue
        for slot, (_ip, _port, srv) in sorted(slots.items()):
            name = haproxy.gateway_server(svc, slot)
            if not srv["admin"] & 0x01:
                commands.append(("set", "server", f"{backend}/{name}", "state", "maint"))
            commands.append(("del", "server", f"{backend}/{name}"))
    return commands, expected


def matches(actual, expected):
    got = {name: (s["address"], int(s["port"]), s["weight"], bool(s["admin"] & 0x01)) for name, s in actual.items()}
    return got == expected


def condition(ctype, ok, reason, message, generation, previous):
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") \
        else _now()
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}


def same_conditions(a, b):
    def key(conds):
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"), c.get("observedGeneration"))
                      for c in conds)
    return key(a) == key(b)


# --------------------------------------------------------------------------- the process

class Controller:
    def __init__(self, cfg):
        from kubernetes import client, config
        self.cfg = cfg
        self.ns = cfg["namespace"]
        self.gateway = cfg["gateway"]
        self.controller_name = cfg["controller_name"]
        kcfg = client.Configuration()
        config.load_kube_config(config_file=cfg["kubeconfig"], client_configuration=kcfg)
        self.api = client.ApiClient(kcfg)
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.haproxy = load_haproxy()
        self.proxy = self.haproxy.RuntimeAPI(cfg["socket"], timeout=5)
        self.routes_by_name = {lst["route"]: lst for lst in cfg["listeners"].values()}
        self.lock = threading.Lock()
        self.cache = {"routes": {}, "services": {}, "slices": {}}
        self.synced = set()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.written = {}  # route -> (generation, conditions) last written
        self.applied = {}  # route -> generation last applied to HAProxy
        self.held = {}  # route -> generation held back (a weighted Service without ready endpoints)

    # -- watches
    def _lister(self, kind):
        """(list function, its positional arguments) of ``kind``."""
        if kind == "routes":
            return self.custom.list_namespaced_custom_object, (GROUP, VERSION, self.ns, "httproutes")
        if kind == "services":
            return self.core.list_namespaced_service, (self.ns,)
        return self.discovery.list_namespaced_endpoint_slice, (self.ns,)

    def watch(self, kind):
        from kubernetes import watch
        lister, args = self._lister(kind)
        while not self.stop.is_set():
            try:
                data = json.loads(lister(*args, _preload_content=False).data)
                with self.lock:
                    self.cache[kind] = {o["metadata"]["name"]: o for o in data.get("items") or []}
                    self.synced.add(kind)
                self.wake.set()
                rv = data["metadata"]["resourceVersion"]
                for event in watch.Watch().stream(lister, *args, resource_version=rv, timeout_seconds=60,
                                                  allow_watch_bookmarks=True, deserialize=False):
                    if self.stop.is_set():
                        return
                    obj, etype = event["object"], event["type"]
                    if etype == "ERROR":
                        break
                    if etype == "BOOKMARK":
                        continue
                    with self.lock:
                        if etype == "DELETED":
                            self.cache[kind].pop(obj["metadata"]["name"], None)
                        else:
                            self.cache[kind][obj["metadata"]["name"]] = obj
                    self.wake.set()
            except Exception as exc:  # noqa: BLE001 - the API server restarting: list again
                log.warning("watch %s: %s", kind, exc)
                self.stop.wait(1.0)

    # -- reconcile
    def reconcile(self):
        with self.lock:
            routes = dict(self.cache["routes"])
            services = dict(self.cache["services"])
            slices = list(self.cache["slices"].values())
        served = set()
        for name, route in sorted(routes.items()):
            refs = parent_refs(route, self.gateway, self.ns)
            if not refs:
                continue
            self._route(name, route, refs, services, slices)
            served.add(name)
        for route, lst in self.routes_by_name.items():  # routes gone (or no longer ours): empty their backend
            if route not in served:
                self._apply(lst["backend"], {})
                self.written.pop(route, None)
                self.applied.pop(route, None)

    def _route(self, name, route, refs, services, slices):
        gen = route["metadata"].get("generation", 1)
        lst = self.routes_by_name.get(name)
        why = unsupported(route)
        accepted = (True, "Accepted", f"programmed on HAProxy backend {lst['backend']} (listener "
                    f"{lst['listener']}, port {lst['port']})") if lst else None
        if lst is None:
            names = ", ".join(sorted(self.routes_by_name)) or "none"
            accepted = (False, "NotAllowedByListeners", f"gateway {self.gateway} serves one route per listener "
                        f"(routes {names}); route {name} matches no listener")
        elif why:
            accepted = (False, "UnsupportedValue", why)
        backend_refs = (((route.get("spec") or {}).get("rules") or [{}])[0].get("backendRefs") or [])
        desired, missing, refused, starved = {}, [], [], []
        for ref in backend_refs:
            svc = ref.get("name")
            if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
                refused.append(("InvalidKind", f"{ref.get('group', '')}/{ref.get('kind')} {svc}"))
                continue
            if ref.get("namespace", self.ns) != self.ns:
                refused.append(("RefNotPermitted", f"Service {ref['namespace']}/{svc}"))
                continue
            weight = int(ref.get("weight", 1))
            service = services.get(svc)
            endpoints = ready_endpoints(service, [s for s in slices if (s["metadata"].get("labels") or {}).get(
                "kubernetes.io/service-name") == svc], ref.get("port")) if service else None
            if endpoints is None:
                missing.append(f"Service {svc}" + (f" has no port {ref.get('port')}" if service else " not found"))
                endpoints = []
            elif weight > 0 and not endpoints:
                starved.append(svc)
            prev = desired.get(svc)
            desired[svc] = ((prev[0] if prev else 0) + weight, endpoints)
        if refused:
            resolved = (False, refused[0][0], "; ".join(f"{r}: {what}" for r, what in refused))
        elif missing:
            resolved = (False, "BackendNotFound", "; ".join(missing))
        else:
            resolved = (True, "ResolvedRefs", "all backendRefs resolved")
        if accepted[0]:
            if starved and self.applied.get(name) != gen:
                # a new generation weighs a Service none of whose endpoints this
                # controller has seen ready yet (its EndpointSlice watch lags the
                # pods' readiness): applying it would send that share to no
                # server (503s). HAProxy keeps the last applied generation, and
                # no status is written for this one until the endpoints arrive
                if self.held.get(name) != gen:
                    log.info("route %s generation %s: held until %s has a ready endpoint", name, gen,
                             ", ".join(sorted(set(starved))))
                self.held[name] = gen
                return
            weights = split_weights(desired)
            if not self._apply(lst["backend"], {s: (weights[s], eps) for s, (_w, eps) in desired.items()}):
                return  # not applied yet: no status for this generation
            self.applied[name] = gen
        self._status(name, route, refs, gen, accepted, resolved)

    def _apply(self, backend, desired):
        """Make HAProxy's ``backend`` hold ``desired``; True once it does."""
        try:
            actual = self.proxy.servers_state(backend)
            commands, expected = plan(backend, actual, desired, self.haproxy)
            if not commands:
                return matches(actual, expected)
            self.proxy.batch(commands)
            log.info("%s: %s", backend, "; ".join(" ".join(str(w) for w in c) for c in commands))
            return matches(self.proxy.servers_state(backend), expected)
        except (self.haproxy.RuntimeAPIError, OSError) as exc:
            log.warning("haproxy %s: %s", backend, exc)
            return False

    def _status(self, name, route, refs, gen, accepted, resolved):
        from kubernetes.client.exceptions import ApiException
        parents = (route.get("status") or {}).get("parents") or []
        ours = [p for p in parents if p.get("controllerName") == self.controller_name]
        others = [p for p in parents if p.get("controllerName") != self.controller_name]
        previous = ours[0].get("conditions") or [] if ours else []
        conditions = [condition("Accepted", *accepted, gen, previous), condition("ResolvedRefs", *resolved, gen, previous)]
        wanted = [{"parentRef": ref, "controllerName": self.controller_name, "conditions": conditions} for ref in refs]
        if len(ours) == len(wanted) and all(same_conditions(o.get("conditions") or [], conditions) and
                                            o.get("parentRef") == w["parentRef"] for o, w in zip(ours, wanted)):
            return
        key = (gen, json.dumps([c[:3] for c in (accepted, resolved)]))
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.ns, "httproutes", name, {"status": {"parents": others + wanted}})
            if self.written.get(name) != key:
                log.info("route %s generation %s: Accepted=%s (%s) ResolvedRefs=%s (%s)", name, gen,
                         accepted[0], accepted[1], resolved[0], resolved[1])
            self.written[name] = key
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of route %s: %s %s", name, exc.status, exc.reason)

    # -- gateway status
    def gateway_status(self):
        """Accepted/Programmed on the GatewayClass and the Gateway, with the
        address and per-listener attached routes (written when they change)."""
        try:
            cls = self.custom.get_cluster_custom_object(GROUP, VERSION, "gatewayclasses", self.cfg["gateway_class"])
            conds = [condition("Accepted", True, "Accepted", "handled by the phoenix HAProxy gateway controller",
                               cls["metadata"].get("generation", 1),
                               (cls.get("status") or {}).get("conditions") or [])]
            if not same_conditions((cls.get("status") or {}).get("conditions") or [], conds):
                self.custom.patch_cluster_custom_object_status(GROUP, VERSION, "gatewayclasses",
                                                               self.cfg["gateway_class"], {"status": {"conditions": conds}})
            gw = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "gateways", self.gateway)
        except Exception as exc:  # noqa: BLE001 - not created yet / API server restarting
            log.debug("gateway status: %s", exc)
            return
        gen = gw["metadata"].get("generation", 1)
        old = gw.get("status") or {}
        with self.lock:
            routes = dict(self.cache["routes"])
        attached = {}
        for name, route in routes.items():
            if parent_refs(route, self.gateway, self.ns) and name in self.routes_by_name:
                attached[self.routes_by_name[name]["listener"]] = 1
        previous = {ls.get("name"): ls.get("conditions") or [] for ls in old.get("listeners") or []}
        listeners = [{"name": lst["listener"], "attachedRoutes": attached.get(lst["listener"], 0),
                      "supportedKinds": [{"group": GROUP, "kind": "HTTPRoute"}],
                      "conditions": [condition(t, True, t, f"port {lst['port']}", gen, previous.get(lst["listener"], []))
                                     for t in ("Accepted", "Programmed", "ResolvedRefs")]}
                     for lst in sorted(self.cfg["listeners"].values(), key=lambda x: x["listener"])]
        status = {"addresses": [{"type": "IPAddress", "value": self.cfg["address"]}],
                  "conditions": [condition(t, True, t, f"HAProxy on {self.cfg['address']}", gen,
                                           old.get("conditions") or []) for t in ("Accepted", "Programmed")],
                  "listeners": listeners}
        unchanged = (old.get("addresses") == status["addresses"]
                     and same_conditions(old.get("conditions") or [], status["conditions"])
                     and [(ls.get("name"), ls.get("attachedRoutes")) for ls in old.get("listeners") or []]
                     == [(ls["name"], ls["attachedRoutes"]) for ls in listeners]
                     and all(same_conditions(previous.get(ls["name"], []), ls["conditions"]) for ls in listeners))
        if not unchanged:
            try:
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, "gateways", self.gateway,
                                                                  {"status": status})
            except Exception as exc:  # noqa: BLE001
                log.warning("gateway status: %s", exc)

    def run(self):
        threads = [threading.Thread(target=self.watch, args=(k,), daemon=True, name=k) for k in self.cache]
        for t in threads:
            t.start()
        ready_file, tick, last_gw = self.cfg["ready_file"], float(self.cfg.get("tick", 1.0)), 0.0
        while not self.stop.is_set():
            self.wake.wait(tick)
            self.wake.clear()
            if self.stop.is_set():
                break
            with self.lock:
                synced = len(self.synced) == len(self.cache)
            if not synced:
                continue
            try:
                self.reconcile()
                if time.monotonic() - last_gw > 5 * tick:
                    self.gateway_status()
                    last_gw = time.monotonic()
                if not os.path.exists(ready_file) and self._haproxy_up():
                    with open(ready_file, "w") as fh:
                        fh.write(f"{os.getpid()}\n")
                    log.info("synced: %d routes, %d services, %d endpoint slices", *(len(v) for v in self.cache.values()))
            except Exception:  # noqa: BLE001 - keep serving; the next event or tick retries
                log.exception("reconcile")

    def _haproxy_up(self):
        try:
            self.proxy.process_id()
            return True
        except self.haproxy.RuntimeAPIError:
            return False


def main(argv):
    if len(argv) != 2:
        print("usage: gateway_controller.py <config.json>", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        cfg = json.load(fh)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    ctl = Controller(cfg)
    signal.signal(signal.SIGTERM, lambda *_a: ctl.stop.set() or ctl.wake.set())
    signal.signal(signal.SIGINT, lambda *_a: ctl.stop.set() or ctl.wake.set())
    log.info("gateway controller for %s/%s (listeners %s)", cfg["namespace"], cfg["gateway"],
             ", ".join(f"{k}:{v['port']}->{v['backend']}" for k, v in sorted(cfg["listeners"].items())))
    ctl.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
