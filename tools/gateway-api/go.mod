// Pins the Gateway API release whose standard CRDs the k8s-local stack installs
// (scripts/install-gateway-api.sh: `go mod download`, then config/crd/standard/*.yaml).
module phoenix.deploy/tools/gateway-api

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3
