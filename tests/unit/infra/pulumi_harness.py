"""Run the infra program against Pulumi mocks that validate every request.

``SchemaMocks`` checks each custom resource it is asked to create against the
official schema shipped in the provider SDKs (pulumi_gcp, pulumi_kubernetes):
the resource's ``<Resource>Args`` / ``<Resource>InitArgs`` input type gives the
known property names, their types (recursively, through nested input types)
and the required ones. Gateway API custom resources have no SDK type, so a
transcription of the gateway.networking.k8s.io/v1 CRD fields stands in.
An unknown resource type, an unknown property, a missing required property
or a scalar of the wrong type fails the test.

``run_stack(name)`` loads ``infra/Pulumi.<name>.yaml``, applies overrides,
runs ``config.load()`` → platform ``build`` → ``contract.complete`` under the
mocks and returns the registered resources and the resolved outputs.
"""
import importlib
import inspect
import json
import pathlib
import sys
import threading
import typing
import warnings
from collections import abc
from dataclasses import dataclass, field

import pulumi
import yaml
from pulumi import _types
from pulumi.runtime import rpc

INFRA = pathlib.Path(__file__).resolve().parents[3] / "infra"
SDK_PREFIXES = ("pulumi_gcp", "pulumi_kubernetes")
SECRET = rpc._special_secret_sig
SIG = rpc._special_sig_key

# gateway.networking.k8s.io/v1 (Gateway API v1.2 standard channel), fields used
# in practice. Leaves are python types; "!" marks required keys.
_PARENT_REF = {"group": str, "kind": str, "namespace": str, "name!": str,
               "sectionName": str, "port": int}
_BACKEND_REF = {"group": str, "kind": str, "name!": str, "namespace": str,
                "port": int, "weight": int, "filters": [dict]}
CRD_SPECS = {
    "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute": {
        "parentRefs": [_PARENT_REF],
        "hostnames": [str],
        "rules": [{
            "name": str,
            "matches": [{"path": {"type": str, "value": str}, "headers": [dict],
                         "queryParams": [dict], "method": str}],
            "filters": [dict],
            "backendRefs": [_BACKEND_REF],
            "timeouts": {"request": str, "backendRequest": str},
            "retry": dict,
            "sessionPersistence": dict,
        }],
    },
    "kubernetes:gateway.networking.k8s.io/v1:Gateway": {
        "gatewayClassName!": str,
        "listeners!": [{
            "name!": str, "hostname": str, "port!": int, "protocol!": str, "tls": dict,
            "allowedRoutes": {"namespaces": {"from": str, "selector": dict}, "kinds": [dict]},
        }],
        "addresses": [{"type": str, "value!": str}],
        "infrastructure": dict,
    },
}


def _unwrap(typ):
    while True:
        inner = _types.unwrap_type(typ)
        if inner is typ:
            return typ
        typ = inner


def _required(args_cls):
    names = _types.input_type_py_to_pulumi_names(args_cls)
    params = inspect.signature(args_cls.__init__).parameters.values()
    return {names.get(p.name, p.name) for p in params
            if p.default is inspect.Parameter.empty and p.name not in ("self", "__self__")
            and p.kind is not inspect.Parameter.VAR_KEYWORD}


def _plain(value):
    if isinstance(value, dict) and value.get(SIG) == SECRET:
        return value["value"]
    return value


def _scalar_ok(value, typ):
    """Numbers cross the wire as protobuf doubles: an int is a whole float."""
    if isinstance(value, bool) or typ is bool:
        return isinstance(value, bool) and typ is bool
    if typ is int:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if typ is float:
        return isinstance(value, (int, float))
    return isinstance(value, typ)


def check_value(value, typ, path, errors):
    """Validate a deserialized input value against an SDK type annotation."""
    value = _plain(value)
    if value is None:
        return
    typ = _unwrap(typ)
    origin = typing.get_origin(typ)
    if isinstance(typ, type) and _types.is_input_type(typ):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {value!r}")
            return
        props = _types.input_type_types(typ)
        for key, item in value.items():
            if key not in props:
                errors.append(f"{path}.{key}: unknown property (known: {', '.join(sorted(props))})")
            else:
                check_value(item, props[key], f"{path}.{key}", errors)
        for key in sorted(_required(typ) - set(value)):
            errors.append(f"{path}.{key}: required property missing")
    elif origin in (list, abc.Sequence, typing.Sequence):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for i, item in enumerate(value):
            check_value(item, typing.get_args(typ)[0], f"{path}[{i}]", errors)
    elif origin in (dict, abc.Mapping, typing.Mapping):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {value!r}")
            return
        for key, item in value.items():
            check_value(item, typing.get_args(typ)[1], f"{path}.{key}", errors)
    elif typ in (str, int, float, bool):
        if not _scalar_ok(value, typ):
            errors.append(f"{path}: expected {typ.__name__}, got {value!r}")


def check_crd(value, schema, path, errors):
    """Validate against a hand-transcribed CRD fragment (see CRD_SPECS)."""
    value = _plain(value)
    if isinstance(schema, list):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for i, item in enumerate(value):
            check_crd(item, schema[0], f"{path}[{i}]", errors)
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {value!r}")
            return
        known = {k.rstrip("!"): v for k, v in schema.items()}
        for key, item in value.items():
            if key not in known:
                errors.append(f"{path}.{key}: unknown property (known: {', '.join(sorted(known))})")
            else:
                check_crd(item, known[key], f"{path}.{key}", errors)
        for key in schema:
            if key.endswith("!") and key[:-1] not in value:
                errors.append(f"{path}.{key[:-1]}: required property missing")
    elif schema is int and not _scalar_ok(value, int):
        errors.append(f"{path}: expected int, got {value!r}")
    elif schema in (str, dict) and not isinstance(value, schema):
        errors.append(f"{path}: expected {schema.__name__}, got {value!r}")


_CLASSES = {}


def _load_module_for(token):
    """Import the SDK module that should define ``token`` (SDKs load lazily)."""
    package, middle, kind = (token.split(":") + ["", ""])[:3]
    sdk = {"gcp": "pulumi_gcp", "kubernetes": "pulumi_kubernetes"}.get(package)
    if sdk is None:
        return
    group, _sep, version = middle.partition("/")
    path = group.split(".")[0] + (f".{version}" if sdk == "pulumi_kubernetes" else "")
    with warnings.catch_warnings():  # importing a module warns about its deprecated resources
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            getattr(importlib.import_module(f"{sdk}.{path}"), kind, None)
        except ImportError:
            pass


def resource_args_class(token):
    """The SDK's input type for a resource type token, or None."""
    if token not in _CLASSES:
        _load_module_for(token)
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith(SDK_PREFIXES):
                for obj in list(vars(mod).values()):
                    if isinstance(obj, type) and "pulumi_type" in vars(obj):
                        _CLASSES.setdefault(obj.pulumi_type, obj)
    cls = _CLASSES.get(token)
    if cls is None:
        return None
    module = importlib.import_module(cls.__module__)
    for suffix in ("Args", "InitArgs"):
        args = getattr(module, cls.__name__ + suffix, None)
        if args is not None:
            return args
    return None


def validate(typ, inputs):
    errors = []
    if typ in CRD_SPECS:
        meta_type = importlib.import_module("pulumi_kubernetes.meta.v1").ObjectMetaArgs
        known = {"apiVersion", "kind", "metadata", "spec"}
        errors += [f"{typ}.{k}: unknown property" for k in inputs if k not in known]
        check_value(inputs.get("metadata"), meta_type, f"{typ}.metadata", errors)
        check_crd(inputs.get("spec"), CRD_SPECS[typ], f"{typ}.spec", errors)
        return errors
    args_cls = resource_args_class(typ)
    if args_cls is None:
        return [f"{typ}: no schema known for this resource type"]
    check_value(inputs, args_cls, typ, errors)
    return errors


def _computed(typ, name, inputs):
    """Outputs a provider would compute, so dependants see plausible values."""
    out = {}
    kind = typ.rsplit(":", 1)[-1]
    if typ.startswith("gcp:") and "name" not in inputs:
        out["name"] = f"{name}-0a1b2c3"
    final = inputs.get("name") or out.get("name")
    if typ.startswith("gcp:"):
        out["selfLink"] = f"https://www.googleapis.com/compute/v1/mock/{kind.lower()}/{final}"
    if typ.startswith("kubernetes:") and "metadata" in inputs:
        meta = dict(inputs.get("metadata") or {})
        meta.setdefault("name", f"{name}-0a1b2c3")
        out["metadata"] = meta
    if typ == "gcp:serviceaccount/account:Account":
        out["email"] = f"{inputs['accountId']}@mock-project.iam.gserviceaccount.com"
    if typ == "gcp:compute/globalAddress:GlobalAddress" and "address" not in inputs:
        out["address"] = "203.0.113.10"
    if typ == "gcp:sql/databaseInstance:DatabaseInstance":
        out["privateIpAddress"] = "10.64.0.3"
        out["connectionName"] = f"mock-project:region:{final}"
    if typ == "gcp:container/cluster:Cluster":
        out["endpoint"] = "198.51.100.7"
        out["masterAuth"] = {"clusterCaCertificate": "bW9jaw=="}
    return out


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict
    custom: bool
    provider: str = ""


class SchemaMocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources = []
        self.errors = []
        self._lock = threading.Lock()

    def new_resource(self, args):
        with self._lock:
            self.resources.append(Registered(args.typ, args.name, args.inputs, args.custom, args.provider or ""))
        if args.custom:
            errors = validate(args.typ, args.inputs)
            if errors:
                with self._lock:
                    self.errors.extend(f"{args.name}: {e}" for e in errors)
                raise ValueError(f"{args.typ} '{args.name}' fails schema:\n  " + "\n  ".join(errors))
        return f"{args.name}-id", {**args.inputs, **_computed(args.typ, args.name, args.inputs)}

    def call(self, args):
        with self._lock:
            self.errors.append(f"unexpected invoke {args.token}")
        raise ValueError(f"the program must not call data sources; got {args.token}")


def stack_config(stack):
    """The stack file's config as the flat string map the Pulumi engine passes."""
    doc = yaml.safe_load((INFRA / f"Pulumi.{stack}.yaml").read_text()) or {}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (doc.get("config") or {}).items()}


@dataclass
class StackRun:
    resources: list
    outputs: dict
    secret_outputs: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def custom(self, typ):
        return [r for r in self.resources if r.custom and r.typ == typ]

    def one(self, typ):
        found = self.custom(typ)
        assert len(found) == 1, f"expected one {typ}, got {[r.name for r in found]}"
        return found[0]


DB_PASSWORD = "not-a-real-password-0123456789"


def use_stack(stack, *, set=None, unset=(), secrets=None, mocks=None):
    """Point the Pulumi runtime at fresh SchemaMocks and ``stack``'s config
    (plus overrides; ``secrets``, default a db_password, as secret keys)."""
    mocks = mocks or SchemaMocks()
    values = stack_config(stack)
    values.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (set or {}).items()})
    secrets = {"phoenix-infra:db_password": DB_PASSWORD} if secrets is None else secrets
    values.update(secrets)
    for key in unset:
        values.pop(key, None)
    pulumi.runtime.set_mocks(mocks, project="phoenix-infra", stack=stack, preview=False)
    pulumi.runtime.set_all_config(values, list(secrets))
    return mocks


def run_stack(stack, **kwargs):
    """Run config.load() → platform build → contract.complete for ``stack``
    under SchemaMocks (see use_stack for kwargs); returns a StackRun."""
    import config
    from phoenix_infra import contract

    mocks = use_stack(stack, **kwargs)
    box = {}

    @pulumi.runtime.test
    def program():
        cfg = config.load()
        package = "gcp" if cfg.platform == "gce" else cfg.platform
        outputs = contract.complete(importlib.import_module(f"phoenix_infra.{package}").build(cfg))
        flags = {}
        for section, value in outputs.items():
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(item, pulumi.Output):
                        flags[f"{section}.{key}"] = item.is_secret()
        return pulumi.Output.all(pulumi.Output.from_input(outputs), pulumi.Output.all(**flags)).apply(
            lambda both: box.update(outputs=both[0], secret=both[1]))

    program()
    assert not mocks.errors, "schema errors:\n" + "\n".join(mocks.errors)
    return StackRun(mocks.resources, box["outputs"], box["secret"], mocks.errors)
