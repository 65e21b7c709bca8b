"""A stateful fake of Google's Compute Engine v1, Cloud Monitoring v3 and
Cloud Storage v1 JSON APIs for offline tests, strict about every request.

It sits behind googleapiclient, which builds its clients from the discovery
documents bundled in google-api-python-client (no network)::

    from gcp_fake import GoogleFake
    fake = GoogleFake(project="phoenix-fake", region="europe-west1")
    compute = fake.build("compute", "v1")   # = googleapiclient.discovery.build(
                                            #   "compute", "v1", http=fake.http, static_discovery=True)
    compute.urlMaps().get(project=fake.project, urlMap="lb").execute()

Every request is checked against the discovery document before anything
happens: method by HTTP verb + path template, path/query parameters (required,
typed, enums, patterns; unknown ones refused), and the JSON body against the
method's request schema, recursively (unknown fields, types and formats,
enums, ``pattern``s, fields the schema's ``annotations.required`` lists for
the method missing, and output-only fields — ``readOnly`` or a description
starting "[Output Only]" / "Output only." — refused; Google ignores those
silently, the fake is stricter so a driver never relies on sending them).  A refused request answers HTTP 400 (404 for an unknown method) in
Google's error JSON shape, with a message naming the field, and is appended
to ``fake.violations``; ``fake.check()`` raises listing them (call it at the
end of a test).  Responses are checked against the response schema too.

Compute state (project/region of the fake; other regions/projects → 404):
instanceTemplates, regionInstanceGroupManagers (insert/get/list/delete/
resize/listManagedInstances), regionInstanceGroups (created with the MIG;
get/list/setNamedPorts), backendServices (insert/get/list/patch/delete/
getHealth), urlMaps (insert/get/list/patch/delete/validate), healthChecks,
images (get/list; ``add_image``), globalOperations/regionOperations
(get/wait).  Mutations apply at once; the returned Operation goes
PENDING → RUNNING → DONE over ``op_polls`` get/wait calls (``wait`` may
return before DONE).  PATCH is a JSON merge patch; resources with a
``fingerprint`` need the current one (stale or missing → 412
conditionNotMet).  References are checked (template image, MIG template and
health check, backend groups must be instance-group URLs, URL-map services
exist, weights 0..1000 only on EXTERNAL_MANAGED services); deleting something
still referenced → 400 resourceInUseByAnotherResource.  Managed instances
appear per targetSize (``<baseInstanceName>-xxxx``), CREATING → VERIFYING →
NONE/HEALTHY after ``healthy_after`` polls (each listManagedInstances of the
MIG or getHealth of its backend counts one poll).

Monitoring: ``projects.timeSeries.list`` returns the series registered with
``add_time_series`` whose metric.type / resource and metric labels match the
filter (an AND of ``key = "value"`` clauses) and that have points inside the
interval; aggregation parameters are checked, not applied.

Storage: buckets from ``add_bucket``; objects.get (JSON or ``alt=media``),
objects.insert (uploadType media or multipart), objects.delete, objects.list;
``ifGenerationMatch`` / ``ifGenerationNotMatch`` (0 = must not exist) → 412.

Public API (small on purpose):

- ``GoogleFake(project, region, zones=None, op_polls=2, healthy_after=2)``
- ``fake.http`` (for ``build(..., http=fake.http)``), ``fake.build(name, version)``
- ``fake.link("global/urlMaps/lb")`` → self-link; ``fake.project``, ``fake.region``
- ``fake.add(resource, body, region=None)`` create a compute resource directly
  (``"healthChecks"``, ``"backendServices"``, ``"urlMaps"``, ...; body checked like
  an insert); ``fake.add_image(name, project=None, family=None)`` → self-link;
  ``fake.get(resource, name)`` / ``fake.names(resource)`` read the state
- ``fake.inject(method_id, status, times=1, reason=None, message=None)``: the
  next calls of e.g. ``"compute.urlMaps.patch"`` answer 412/429/503/...
  (``reason="resourceNotReady"`` for GCE's RESOURCE_NOT_READY)
- ``fake.clear_injections(method_id=None)``: drop unused injections
- ``fake.fail_operation(method_id, code="QUOTA_EXCEEDED", status=403, times=1)``:
  the operation ends DONE with ``error`` and no effect
- ``fake.crash_loop(mig, errors=True)`` / ``fake.heal(mig)``;
  ``fake.set_healthy_after(polls, mig=None)``
- ``fake.add_time_series(series_dict)`` (same labels: points added to one
  series); ``gcp_fake.monitoring`` builds the load balancer's series
  (``request_count``, ``backend_latencies`` with its exponential buckets);
  ``fake.add_bucket(name)``, ``fake.object_data(bucket, name)``
- ``fake.hook = fn(method_id, phase)``: called before ("before") and after
  ("after": the effect is applied, the answer not yet sent) every valid
  request; raise in it to kill a controller at any API call
- ``fake.calls`` (``collections.Counter`` by method id), ``fake.log``
  (``[(method id, HTTP status)]``), ``fake.violations``, ``fake.check()``
"""

from .discovery import Invalid, output_only  # noqa: F401
from . import monitoring  # noqa: F401
from .fake import ApiError, GoogleFake, error_body  # noqa: F401
