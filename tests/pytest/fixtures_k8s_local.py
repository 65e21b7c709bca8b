"""A throwaway ``k8s-local`` stack (platform kubernetes, cluster local) of the
real ``infra/`` program in a temp dir: own backend, own state dir, own
loopback block and pod subnet (see ``fixtures_infra_local.TempLocalStack``)."""
import os
import pathlib

from fixtures_infra_local import TempLocalStack, pid_alive, read_pid, wait_for

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet")


class TempK8sStack(TempLocalStack):
    def __init__(self):
        n = os.getpid() % 200 + 20
        super().__init__(name=f"k8s-{os.getpid() % 100000}", block=f"127.31.{n}.0/24", artifacts=("catalog",),
                         extra_config={"phoenix-infra:platform": "kubernetes", "phoenix-infra:cluster": "local",
                                       "phoenix-infra:namespace": "phoenix-it",
                                       "phoenix-infra:pod_cidr": f"10.215.{n}.0/24",
                                       "phoenix-infra:service_cidr": f"10.216.{n}.0/24"})

    def pid(self, component):
        return read_pid(self.state_dir / component / "daemon.pid")

    def live_pids(self):
        return {c: pid for c in COMPONENTS if pid_alive(pid := self.pid(c), c)}

    def cleanup(self):
        """Destroy if still up; kill (by our pidfiles) whatever a failed destroy left."""
        if not self.destroyed:
            try:
                self.destroy()
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        for component in reversed(COMPONENTS):
            pid = self.pid(component)
            if pid_alive(pid, component):
                os.kill(pid, 9)
                wait_for(lambda: not pid_alive(pid), 10)
        super().cleanup()


__all__ = ["TempK8sStack", "COMPONENTS", "pathlib", "wait_for", "pid_alive"]
