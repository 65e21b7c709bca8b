"""Delete one pod (playbooks/chaos.yml on the kubernetes platform), through the
official `kubernetes` client with the deployer's kubeconfig (the stack output
kubernetes.kubeconfig, a 0600 file: no token on the command line).

  chaos_pod.py --kubeconfig <path> --namespace <ns> <pod> [--grace-seconds N]

Without --grace-seconds the pod's own terminationGracePeriodSeconds applies
(preStop, then SIGTERM, SIGKILL after the grace period); --grace-seconds 0 kills
at once. Prints one JSON line {pod, uid, namespace, grace_seconds}; a clear
message on stderr and exit 1 when the pod is gone, the namespace is wrong or
RBAC refuses."""
import argparse
import json
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pod")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--grace-seconds", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
    except ImportError as exc:
        sys.exit("chaos_pod.py needs the Python package kubernetes (pip install kubernetes): %s" % exc)
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    except Exception as exc:  # noqa: BLE001 - any unreadable kubeconfig
        sys.exit("--kubeconfig %s: cannot be read as a kubeconfig (%s); pass the stack output "
                 "kubernetes.kubeconfig" % (args.kubeconfig, type(exc).__name__))
    core = client.CoreV1Api(client.ApiClient(cfg))
    try:
        pod = core.read_namespaced_pod(args.pod, args.namespace, _request_timeout=(5, 20))
        body = {"preconditions": {"uid": pod.metadata.uid}}
        if args.grace_seconds is not None:
            body["gracePeriodSeconds"] = args.grace_seconds
        core.delete_namespaced_pod(args.pod, args.namespace, body=body, _request_timeout=(5, 20))
    except ApiException as exc:
        try:
            message = json.loads(exc.body).get("message")
        except (TypeError, ValueError):
            message = exc.reason
        sys.exit("deleting pod %s in namespace %s failed: HTTP %s: %s%s" % (
            args.pod, args.namespace, exc.status, message,
            "; the deployer Role needs delete on pods (pulumi up of the stack grants it)"
            if exc.status == 403 else ""))
    except Exception as exc:  # noqa: BLE001 - connection errors of urllib3
        sys.exit("deleting pod %s: cannot reach the API server %s (%s: %s)" % (
            args.pod, cfg.host, type(exc).__name__, exc))
    print(json.dumps({"pod": args.pod, "uid": pod.metadata.uid, "namespace": args.namespace,
                      "grace_seconds": args.grace_seconds if args.grace_seconds is not None
                      else pod.spec.termination_grace_period_seconds}))


if __name__ == "__main__":
    main()
