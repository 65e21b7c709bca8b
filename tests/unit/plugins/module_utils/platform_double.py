"""Deterministic in-memory platform for engine unit tests (not shipped).

Time is a ``FakeClock`` whose ``sleep`` advances it; every request takes
effect later (instances become ready after ``start_delay``, weights after
``weight_delay``, ...) so the engine's polling is exercised.  Every mutating
call is logged with a snapshot, and ``crash_at`` raises ``Crash`` (a
BaseException, like the controller being killed) at the n-th mutating call.
``fail_next`` is a list of ``(operation, error[, skip[, after]])``: the next
call of that operation (after ``skip`` calls that succeed) raises the error
before it takes any effect (with ``after``: once it took effect, as when a
reply is lost), and the entry is used up, e.g.
``[("set_weights", PlatformError("HTTP 429", transient=True), 1)]``;
``outage(operation, error, seconds, skip)`` makes every call of it fail for
``seconds`` of clock time from the first failing one.  ``failed`` records
``(time, operation, error)`` of every injected failure.
"""
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import (
    DRAINING, FAILED, READY, STARTING, GroupManager, Health, InstanceHealth, Metrics,
    MetricsProvider, Platform, PlatformError, ServerGroup, TrafficRouter)


class Crash(BaseException):
    """The controller died here."""


class FakeClock:
    def __init__(self, start=1_700_000_000.0):
        self.t = start

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(seconds, 0)


class _Role:
    """A role of the double: every call goes to the world's method of the
    same name, looked up at call time (a test may replace one)."""

    def __init__(self, world):
        self.world = world
        self.name = world.name


class FakeGroups(_Role, GroupManager):
    @property
    def poll_interval(self):
        return self.world.poll_interval

    def create_group(self, *args, **kwargs):
        return self.world.create_group(*args, **kwargs)

    def resize(self, group, size):
        return self.world.resize(group, size)

    def health(self, group):
        return self.world.health(group)

    def cancel_drain(self, group):
        return self.world.cancel_drain(group)

    def config_inputs(self):
        return self.world.config_inputs()

    def destroy(self, group):
        return self.world.destroy(group)

    def list_groups(self, artifact, environment):
        return self.world.list_groups(artifact, environment)


class FakeTraffic(_Role, TrafficRouter):
    @property
    def settle_time(self):
        return self.world.settle_time

    def set_weights(self, weights):
        return self.world.set_weights(weights)

    def verify_weights(self, weights):
        return self.world.verify_weights(weights)

    def drain_and_detach(self, group):
        return self.world.drain_and_detach(group)


class FakeMetrics(_Role, MetricsProvider):
    def metrics(self, group, start, end):
        return self.world.group_metrics(group, start, end)


class FakePlatform(Platform):
    """The world of the double and its three roles (``groups``, ``traffic``,
    ``metrics``); the server groups themselves are in ``table``.
    ``weights_observable=False`` makes ``verify_weights`` answer None (a
    router that cannot tell), ``settle_time`` is then waited.
    ``owned_deletion=True``: a destroyed group is the platform's to finish
    (as a Kubernetes Deployment under garbage collection): ``list_groups``
    reports it ``deleting``, size 0, detached, until ``destroy_delay`` passed."""

    name = "double"
    poll_interval = 0.5

    def __init__(self, clock, start_delay=2.0, weight_delay=0.5, drain_delay=1.0,
                 destroy_delay=1.0, rps=100.0, weights_observable=True, settle_time=1.0,
                 owned_deletion=False):
        Platform.__init__(self, FakeGroups(self), FakeTraffic(self), FakeMetrics(self),
                          name="double")
        self.table = {}
        self.weights_observable, self.settle_time = weights_observable, settle_time
        self.clock = clock
        self.start_delay, self.weight_delay = start_delay, weight_delay
        self.drain_delay, self.destroy_delay = drain_delay, destroy_delay
        self.owned_deletion = owned_deletion
        self.rps = rps  # None: only what send() puts through counts
        self.sent = []  # [(time, requests)] of send()
        self.behaviour = {}  # image -> {error_rate, error_rates, p99, crash, never_ready}
        self.log = []
        self.ops = 0
        self.crash_at = None
        self.crash_after = None  # crash right after the n-th call took effect
        self.seq = 0
        self.fail_next = []  # [(operation, exception[, skip])], used up in order
        self.outages = []
        self.failed = []

    # -- internals -----------------------------------------------------------
    def outage(self, op, error, seconds, skip=0):
        self.outages.append({"op": op, "error": error, "seconds": seconds, "skip": skip,
                             "since": None})

    def _fail(self, op, after=False):
        now = self.clock.now()
        for outage in self.outages:
            if outage["op"] != op or after:
                continue
            if outage["since"] is None and outage["skip"]:
                outage["skip"] -= 1
                continue
            if outage["since"] is None:
                outage["since"] = now
            if now < outage["since"] + outage["seconds"]:
                self.failed.append((now, op, outage["error"]))
                raise outage["error"]
        for index, entry in enumerate(self.fail_next):
            if entry[0] != op or bool(entry[3:4] and entry[3]) != after:
                continue
            if len(entry) > 2 and entry[2] > 0:
                self.fail_next[index] = (entry[0], entry[1], entry[2] - 1) + tuple(entry[3:])
                return
            del self.fail_next[index]
            self.failed.append((now, op, entry[1]))
            raise entry[1]

    def _mutating(self, op, *args):
        self.ops += 1
        if self.crash_at is not None and self.ops == self.crash_at:
            raise Crash("%s%r" % (op, args))

    def _after(self, op, *args):
        """Called once the n-th call took effect (a kill right after it)."""
        if self.crash_after is not None and self.ops == self.crash_after:
            self._refresh()
            for g in self.table.values():  # time passes: requests land
                if g["pending"] is not None:
                    g["weight"], g["pending"] = g["pending"][0], None
            if op == "drain_and_detach":  # killed mid-drain: the drain never ends
                g = self.table[args[0]]
                g["draining"], g["detach_at"], g["attached"] = True, None, False
            raise Crash("after %s%r" % (op, args))

    def _logged(self, op, *args):
        self.log.append((self.clock.now(), op, args, self.snapshot()))
        self._after(op, *args)

    def _group(self, name):
        self._refresh()
        group = self.table.get(name)
        if group is None or group["deleting_at"] is not None:
            raise PlatformError("no server group %r" % name)
        return group

    def _refresh(self):
        now = self.clock.now()
        for name, g in list(self.table.items()):
            if g["deleting_at"] is not None and now >= g["deleting_at"]:
                del self.table[name]
                continue
            if g["pending"] is not None and now >= g["pending"][1]:
                g["weight"] = g["pending"][0]
                g["pending"] = None
            if g["detach_at"] is not None and now >= g["detach_at"]:
                g["attached"], g["detach_at"] = False, None

    def _beh(self, g):
        return self.behaviour.get(g["image"], {})

    def _ready(self, g):
        if g["draining"] or g["deleting_at"] is not None or self._beh(g).get("crash") or \
                self._beh(g).get("never_ready"):
            return 0
        now = self.clock.now()
        return sum(1 for i in g["instances"] if now >= i["started"] + self.start_delay)

    def _new_instance(self, g):
        self.seq += 1
        return {"name": "%s-i%d" % (g["name"], self.seq), "started": self.clock.now()}

    def snapshot(self):
        """{group: (size, ready, target weight, attached, deleting)}"""
        self._refresh()
        out = {}
        for name, g in self.table.items():
            target = g["pending"][0] if g["pending"] else g["weight"]
            serving = g["attached"] and g["detach_at"] is None and g["deleting_at"] is None \
                and not g["draining"]
            out[name] = {"size": len(g["instances"]), "ready": self._ready(g),
                         "weight": target, "serving": serving,
                         "deleting": g["deleting_at"] is not None}
        return out

    def serving_capacity(self, snapshot=None):
        snap = snapshot or self.snapshot()
        return sum(s["ready"] for s in snap.values() if s["serving"] and s["weight"] > 0)

    def live_names(self):
        return sorted(n for n, s in self.snapshot().items() if not s["deleting"])

    # -- the interface -------------------------------------------------------
    def create_group(self, artifact, environment, release_id, image, size, env, name=None,
                     owner=None):
        self._fail("create_group")
        self._mutating("create_group", name)
        self._refresh()
        name = name or "%s-%s-%s" % (artifact, environment, release_id)
        if name in self.table:
            raise PlatformError("server group %r already exists" % name)
        g = {"name": name, "artifact": artifact, "environment": environment,
             "release_id": release_id, "image": image, "env": dict(env),
             "instances": [], "weight": 0, "pending": None, "attached": True,
             "detach_at": None, "deleting_at": None, "draining": False,
             "owner": owner, "created": self.clock.now()}
        g["instances"] = [self._new_instance(g) for _index in range(size)]
        self.table[name] = g
        self._logged("create_group", name, size)
        self._fail("create_group", after=True)
        return ServerGroup(name, artifact, environment, release_id, image, size, owner=owner)

    def resize(self, group, size):
        self._fail("resize")
        self._mutating("resize", group, size)
        g = self._group(group)
        while len(g["instances"]) < size:
            g["instances"].append(self._new_instance(g))
        del g["instances"][size:]
        self._logged("resize", group, size)

    def health(self, group):
        self._fail("health")
        g = self._group(group)
        now, beh, out = self.clock.now(), self._beh(g), []
        g["health_calls"] = g.get("health_calls", 0) + 1
        # flap_every N: every Nth health call of the group, its first instance
        # misses one health check; unready_after T: all instances stop being
        # ready T seconds after the group was created (and stay so)
        flap = beh.get("flap_every") and g["health_calls"] % beh["flap_every"] == 0
        gone = beh.get("unready_after") is not None and now >= g["created"] + beh["unready_after"]
        for index, inst in enumerate(g["instances"]):
            if (flap and index == 0) or gone:
                out.append(InstanceHealth(inst["name"], STARTING, "health check failing"))
                continue
            up = now >= inst["started"] + self.start_delay
            if g["draining"]:
                out.append(InstanceHealth(inst["name"], DRAINING, "draining"))
            elif beh.get("crash") and up:
                out.append(InstanceHealth(inst["name"], FAILED, "exited 3 times (crash loop)", 3))
            elif up and not beh.get("never_ready"):
                out.append(InstanceHealth(inst["name"], READY))
            else:
                out.append(InstanceHealth(inst["name"], STARTING, "health check failing"))
        return Health(sum(1 for i in out if i.state == READY), len(out), out)

    def set_weights(self, weights):
        self._fail("set_weights")
        self._mutating("set_weights", dict(weights))
        for name, weight in weights.items():
            g = self._group(name)
            if not 0 <= weight <= 100:
                raise PlatformError("weight %r out of range" % weight)
            g["pending"] = (weight, self.clock.now() + self.weight_delay)
            if weight > 0:
                g["attached"], g["detach_at"], g["draining"] = True, None, False
        self._logged("set_weights", dict(weights))

    def drain_and_detach(self, group):
        self._fail("drain_and_detach")
        self._mutating("drain_and_detach", group)
        g = self._group(group)
        g["pending"] = (0, self.clock.now())
        g["weight"] = 0
        g["detach_at"] = self.clock.now() + self.drain_delay
        self._logged("drain_and_detach", group)

    def cancel_drain(self, group):
        self._mutating("cancel_drain", group)
        g = self._group(group)
        if g["draining"]:
            g["draining"], g["attached"], g["weight"], g["pending"] = False, True, 0, None
        self._logged("cancel_drain", group)

    def destroy(self, group):
        self._fail("destroy")
        self._mutating("destroy", group)
        self._refresh()
        g = self.table.get(group)
        if g is not None and g["deleting_at"] is None:
            g["deleting_at"] = self.clock.now() + self.destroy_delay
        self._logged("destroy", group)

    def list_groups(self, artifact, environment):
        self._fail("list_groups")
        self._refresh()
        owned = self.owned_deletion
        return [ServerGroup(g["name"], g["artifact"], g["environment"], g["release_id"],
                            g["image"],
                            0 if owned and g["deleting_at"] is not None else len(g["instances"]),
                            g["weight"], g["attached"] and g["detach_at"] is None
                            and g["deleting_at"] is None, owner=g["owner"],
                            deleting=owned and g["deleting_at"] is not None)
                for g in self.table.values()
                if g["artifact"] == artifact and g["environment"] == environment]

    def config_inputs(self):
        return {}

    def send(self, requests):
        """``requests`` through the router now (with ``rps=None``)."""
        self.sent.append((self.clock.now(), requests))
        self.clock.sleep(0.01)

    def verify_weights(self, weights):
        self._fail("verify_weights")
        if not self.weights_observable:
            return None
        self._refresh()
        for name, weight in weights.items():
            g = self.table.get(name)
            if g is None or g["deleting_at"] is not None or g["pending"] is not None or \
                    g["weight"] != weight:
                return False
            if weight and not (g["attached"] and g["detach_at"] is None):
                return False
        return True

    def group_metrics(self, group, start, end):
        """Traffic at ``rps`` x weight over ``[start, end]`` (the weight of now)."""
        window = max(0.0, end - start)
        self._fail("metrics")
        g = self._group(group)
        if not g["attached"] or self._ready(g) == 0:
            return Metrics(0, 0, None, window)
        beh = self._beh(g)
        if self.rps is None:
            requests = int(sum(n for at, n in self.sent if start <= at < end) * g["weight"] / 100.0)
        else:
            requests = int(self.rps * window * g["weight"] / 100.0)
        rate = beh.get("error_rate", 0.0)
        if beh.get("error_rates"):  # one per window; the last one repeats
            rates = beh["error_rates"]
            rate = rates.pop(0) if len(rates) > 1 else rates[0]
        errors = int(round(requests * rate))
        latency = {"p50": beh.get("p99", 40.0) / 2, "p99": beh.get("p99", 40.0)} \
            if requests else None
        return Metrics(requests, errors, latency, window)
