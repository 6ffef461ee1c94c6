# The node's settings, sourced by up.sh, down.sh and the e2e test (tests/node/).
# shellcheck shell=bash
node_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${OAUTHAPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oauthapp-operator}
# State of one node: control plane (cp/), containerd, kubelet, pod logs, CNI, saved sysctls.
run=${OAUTHAPP_NODE_DIR:-$cache/node}
NODE_NAME=oauthapp-node
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.0.0.0/24
API_SERVICE_IP=10.0.0.1
BRIDGE=cni0
# Our own iptables chains, so that the way down removes exactly what the way up added.
FWD_CHAIN=OAUTHAPP-NODE-FORWARD
API_CHAIN=OAUTHAPP-NODE-API
# The pod sandbox image: tests/node/nodetool, packed by up.sh.
NODETOOL_IMAGE=oauthapp.local/nodetool:1
CTR_SOCK=$run/containerd/containerd.sock
# Kernel settings the node changes (kubelet's defaults included); up.sh saves them, down.sh
# restores them.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_log() { echo "node: $*" >&2; }
ctr_() { ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }
