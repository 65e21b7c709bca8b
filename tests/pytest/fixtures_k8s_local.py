"""A throwaway ``k8s-local`` stack (platform kubernetes, cluster local) of the
real ``infra/`` program in a temp dir: own backend, own state dir, own
loopback block and pod subnet (see ``fixtures_infra_local.TempLocalStack``)."""
import os
import pathlib
import shutil
import subprocess

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

    def pid(self, rel):
        """The pid of component ``rel`` (e.g. ``kube-scheduler``) from its pidfile."""
        return read_pid(self.state_dir / rel / "daemon.pid")

    def live_pids(self):
        return {c: pid for c in COMPONENTS if pid_alive(pid := self.pid(c), c)}

    def cleanup(self):
        """Destroy if still up; kill (by our pidfiles) whatever a failed destroy left."""
        if not self.destroyed:
            try:
                self.destroy()
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        for rel, hint in (("gateway-controller/daemon.pid", "gateway_controller"),
                          ("gateway-haproxy/haproxy.pid", "haproxy")):  # the gateway's processes
            pid = read_pid(self.state_dir / rel)
            if pid_alive(pid, hint):
                os.kill(pid, 9)
                wait_for(lambda: not pid_alive(pid), 10)
        for component in reversed(COMPONENTS):
            pid = self.pid(component)
            if pid_alive(pid, component):
                os.kill(pid, 9)
                wait_for(lambda: not pid_alive(pid), 10)
        super().cleanup()


HELLO_C = r"""
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
  char host[64] = "?", reply[256], buf[1024];
  gethostname(host, sizeof host - 1);
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(8080)};
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) return 1;
  for (;;) {
    int c = accept(s, 0, 0);
    if (c < 0) continue;
    read(c, buf, sizeof buf);
    int n = snprintf(reply, sizeof reply, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\n\r\nhello from %s\n", strlen(host) + 12, host);
    write(c, reply, n);
    close(c);
  }
}
"""


def build_hello_image(work, source=HELLO_C):
    """A one-binary OCI image (a static C HTTP server on :8080, uid 65534)
    built with gcc and umoci: ``<work>/oci:v1`` (``source``: another C program, e.g. a faulty variant)."""
    work = pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "hello.c").write_text(source)

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    run("gcc", "-static", "-Os", "-s", "-o", str(work / "hello"), str(work / "hello.c"))
    layout, bundle = f"{work}/oci", f"{work}/bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v1")
    run("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    shutil.copy2(work / "hello", f"{bundle}/rootfs/hello")
    run("umoci", "repack", "--image", f"{layout}:v1", bundle)
    run("umoci", "config", "--image", f"{layout}:v1", "--config.entrypoint", "/hello",
        "--config.user", "65534:65534", "--config.exposedports", "8080/tcp")
    return f"oci:{layout}:v1"


def push(source, registry_url, repository):
    """Copy ``source`` to the registry (plain HTTP on loopback); return ``host/repo@sha256:...``."""
    host = registry_url.split("://", 1)[1].rstrip("/")
    digestfile = pathlib.Path(source.split(":")[1]).parent / "digest"
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--digestfile", str(digestfile), source,
                    f"docker://{host}/{repository}:v1"], check=True, capture_output=True, text=True, timeout=120)
    return f"{host}/{repository}@{digestfile.read_text().strip()}"
