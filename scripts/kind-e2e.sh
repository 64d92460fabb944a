#!/usr/bin/env bash
# End-to-end on a laptop: kind cluster -> CPU and operator images -> Helm chart ->
# examples/inferenceserver-cpu.yaml -> Ready -> one chat completion through the router;
# then model delivery: deploy/kind/inferenceserver-hf-node-cache.yaml (hf:// into the node
# cache, two replicas) -> ModelReady -> node label -> Ready -> one chat completion; then
# multi-node: LeaderWorkerSet installed before the operator starts, examples/inferenceserver-multinode.yaml
# (one replica as a leader pod and a worker pod, a pipeline stage each) -> Ready -> one chat completion.
# Between the first two stages: the namespace enforces Pod Security "restricted"; PodDisruptionBudgets,
# two router replicas, no finalizer on the InferenceServer, the operator's leader Lease, and a deleted
# router Deployment re-created with a DriftRepaired event.
#
# Needs: docker (a running engine), kind, kubectl, helm, curl.
# Env: KEEP_CLUSTER=1 keeps the cluster afterwards; CLUSTER_NAME (default radixserve);
#      READY_TIMEOUT (default 15m); SKIP_MODEL_DELIVERY=1 skips the second stage (it downloads
#      about 270 MB from huggingface.co); SKIP_MULTINODE=1 skips the multi-node stage (it
#      installs LeaderWorkerSet LWS_VERSION, default v0.7.0, from github.com).
# Not covered here: spec.gateway.inferencePool (no Gateway or Inference Extension is installed;
# tests/operator/test_operator_gateway.py checks the InferencePool against the extension's CRDs).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME=${CLUSTER_NAME:-radixserve}
READY_TIMEOUT=${READY_TIMEOUT:-15m}
TAG=dev
SERVER_IMAGE=radixserve/radixserve:${TAG}-cpu
OPERATOR_IMAGE=radixserve/radixserve-operator:${TAG}
NAME=smollm            # metadata.name in examples/inferenceserver-cpu.yaml
MODEL=smollm2          # its servedModelName
NAMESPACE=default

log() { printf '\n==> %s\n' "$*"; }
for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info failed)" >&2; exit 1; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failed; operator logs and InferenceServer status follow"
    kubectl -n radixserve-system logs deployment/radixserve --tail=100 || true
    kubectl -n "$NAMESPACE" describe rsvc "$NAME" || true
    kubectl -n "$NAMESPACE" get pods -o wide || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != "1" ]; then
    kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

log "building images (CPU server with the embedded model, operator)"
docker build --target cpu -t "$SERVER_IMAGE" .
docker build --target operator -t "$OPERATOR_IMAGE" .

log "creating kind cluster $CLUSTER_NAME"
kind get clusters | grep -qx "$CLUSTER_NAME" || kind create cluster --name "$CLUSTER_NAME" --config deploy/kind/cluster.yaml
kubectl config use-context "kind-$CLUSTER_NAME"

log "loading images into the cluster"
kind load docker-image --name "$CLUSTER_NAME" "$SERVER_IMAGE" "$OPERATOR_IMAGE"

log "production pieces (issue 20): PodDisruptionBudgets, two router replicas, no finalizer, drift repair"
kubectl -n "$NAMESPACE" get pdb "$NAME-server" "$NAME-router"
kubectl -n "$NAMESPACE" rollout status "deployment/$NAME-router" --timeout=5m
[ "$(kubectl -n "$NAMESPACE" get deployment "$NAME-router" -o jsonpath='{.status.readyReplicas}')" = 2 ] \
  || { echo "the router should run 2 ready replicas" >&2; exit 1; }
[ -z "$(kubectl -n "$NAMESPACE" get rsvc "$NAME" -o jsonpath='{.metadata.finalizers}')" ] \
  || { echo "the InferenceServer carries a finalizer" >&2; exit 1; }
kubectl -n radixserve-system get lease -o name | grep -q . || { echo "no leader-election Lease" >&2; exit 1; }
# The namespace enforces Pod Security "restricted" (labelled before the InferenceServer was applied):
# its pods were admitted, so they pass it.
kubectl get namespace "$NAMESPACE" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}' | grep -q restricted
kubectl -n "$NAMESPACE" delete deployment "$NAME-router" --wait=true
for attempt in $(seq 1 60); do  # the operator re-creates it on the Deployment's watch event
  kubectl -n "$NAMESPACE" get deployment "$NAME-router" >/dev/null 2>&1 && break
  [ "$attempt" = 60 ] && { echo "the deleted router Deployment was not re-created" >&2; exit 1; }
  sleep 2
done
kubectl -n "$NAMESPACE" get events --field-selector reason=DriftRepaired | grep -q "$NAME" \
  || { echo "no DriftRepaired event" >&2; exit 1; }
kubectl -n "$NAMESPACE" rollout status "deployment/$NAME-router" --timeout=5m
log "OK: PDBs, 2 routers, no finalizer, Lease, Pod Security restricted, drift repaired"
# The node model cache below is a hostPath (opted in with allowHostPath), which "restricted" refuses.
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce-
# Not covered here: autoscaling (needs prometheus-adapter or KEDA), PodMonitors (need the Prometheus
# operator): their objects are validated against those projects' CRD schemas in tests/operator.

if [ "${SKIP_MULTINODE:-0}" != "1" ]; then
  # Before the operator starts: it watches LeaderWorkerSets only if their API exists then.
  log "installing LeaderWorkerSet ${LWS_VERSION:-v0.7.0} (multi-node replicas)"
  kubectl apply --server-side -f \
    "https://github.com/kubernetes-sigs/lws/releases/download/${LWS_VERSION:-v0.7.0}/manifests.yaml"
  kubectl -n lws-system wait deployment --all --for=condition=Available --timeout=5m
fi

log "installing the chart"
helm upgrade --install radixserve charts/radixserve \
  --namespace radixserve-system --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set serverImage.repository="${SERVER_IMAGE%:*}" --set serverImage.tag="$TAG" \
  --set logLevel=debug --wait --timeout 5m

log "applying the CPU example"
# The images were loaded into the node under a non-latest tag, so the default pull
# policy (IfNotPresent) finds them. The Service becomes a NodePort to reach it from here.
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl -n "$NAMESPACE" apply -f examples/inferenceserver-cpu.yaml
kubectl -n "$NAMESPACE" patch rsvc "$NAME" --type merge -p '{"spec": {"service": {"type": "NodePort"}}}'

log "waiting for Ready (model load on CPU takes a minute or two)"
kubectl -n "$NAMESPACE" wait "rsvc/$NAME" --for=condition=Ready --timeout="$READY_TIMEOUT"
kubectl -n "$NAMESPACE" get rsvc "$NAME" -o wide

log "pinning the router's NodePort to 30080 (mapped to localhost by deploy/kind/cluster.yaml)"
kubectl -n "$NAMESPACE" patch service "$NAME" --type json \
  -p '[{"op": "replace", "path": "/spec/ports/0/nodePort", "value": 30080}]'

log "sending a chat request through the router"
body=$(printf '{"model": "%s", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 16}' "$MODEL")
for attempt in $(seq 1 30); do
  if reply=$(curl -sf --max-time 60 http://localhost:30080/v1/chat/completions \
      -H 'Content-Type: application/json' -d "$body"); then
    echo "$reply"
    echo "$reply" | grep -q '"choices"' && { log "OK: router"; break; }
  fi
  [ "$attempt" = 30 ] && { echo "no chat completion came back through the router" >&2; exit 1; }
  sleep 2
done

if [ "${SKIP_MULTINODE:-0}" != "1" ]; then
  MN_NAME=smollm-2node   # metadata.name in examples/inferenceserver-multinode.yaml
  log "multi-node: one replica over two pods (a LeaderWorkerSet group)"
  kubectl -n "$NAMESPACE" apply -f examples/inferenceserver-multinode.yaml
  kubectl -n "$NAMESPACE" wait "rsvc/$MN_NAME" --for=condition=Ready --timeout="$READY_TIMEOUT"
  kubectl -n "$NAMESPACE" get leaderworkerset "$MN_NAME-group" -o wide
  kubectl -n "$NAMESPACE" get pods -l "leaderworkerset.sigs.k8s.io/name=$MN_NAME-group" -o wide
  [ "$(kubectl -n "$NAMESPACE" get pods -l "leaderworkerset.sigs.k8s.io/name=$MN_NAME-group" -o name | wc -l)" = 2 ] \
    || { echo "the group does not have two pods" >&2; exit 1; }
  log "sending a chat request to the two-pod server"
  kubectl -n "$NAMESPACE" port-forward "svc/$MN_NAME" 18081:80 >/dev/null 2>&1 &
  pf=$!
  for attempt in $(seq 1 30); do
    if reply=$(curl -sf --max-time 60 http://localhost:18081/v1/chat/completions \
        -H 'Content-Type: application/json' -d "$body"); then
      echo "$reply"
      echo "$reply" | grep -q '"choices"' && { log "OK: multi-node"; break; }
    fi
    [ "$attempt" = 30 ] && { kill "$pf"; echo "no chat completion came back from the two-pod server" >&2; exit 1; }
    sleep 2
  done
  kill "$pf"
  log "the whole group restarts when its worker pod goes"
  kubectl -n "$NAMESPACE" delete pod "$MN_NAME-group-0-1" --wait=false
  kubectl -n "$NAMESPACE" wait "rsvc/$MN_NAME" --for=condition=Ready=False --timeout=5m
  kubectl -n "$NAMESPACE" wait "rsvc/$MN_NAME" --for=condition=Ready --timeout="$READY_TIMEOUT"
  kubectl -n "$NAMESPACE" delete -f examples/inferenceserver-multinode.yaml --wait=false
fi

[ "${SKIP_MODEL_DELIVERY:-0}" = "1" ] && { log "OK (model delivery skipped)"; exit 0; }
HF_NAME=smollm-hf      # metadata.name in deploy/kind/inferenceserver-hf-node-cache.yaml
HF_MODEL=HuggingFaceTB/SmolLM2-135M-Instruct   # its served name: the repository id
NODE="$CLUSTER_NAME-control-plane"
log "model delivery: preparing the node cache directory (writable by the pods' UID 1000)"
docker exec "$NODE" install -d -o 1000 -g 1000 /var/lib/radixserve/models
kubectl -n "$NAMESPACE" apply -f deploy/kind/inferenceserver-hf-node-cache.yaml
log "waiting for ModelReady (a download from huggingface.co) and Ready"
kubectl -n "$NAMESPACE" wait "rsvc/$HF_NAME" --for=condition=ModelReady --timeout="$READY_TIMEOUT"
kubectl -n "$NAMESPACE" wait "rsvc/$HF_NAME" --for=condition=Ready --timeout="$READY_TIMEOUT"
kubectl -n "$NAMESPACE" get rsvc "$HF_NAME" -o wide
log "the node is labelled as holding the model"
kubectl get node "$NODE" --show-labels | tr ',' '\n' | grep '^model-cache.radixserve.io/' \
  || { echo "node $NODE has no model-cache.radixserve.io label" >&2; exit 1; }
log "the second replica found the first one's download (a cache hit)"
kubectl -n "$NAMESPACE" logs -l "radixserve.io/inferenceserver=$HF_NAME" -c model-download --tail=-1 \
  | grep -q '"cache_hit": true' || { echo "no replica reported a cache hit" >&2; exit 1; }
log "sending a chat request to the hf:// server"
kubectl -n "$NAMESPACE" port-forward "svc/$HF_NAME" 18080:80 >/dev/null 2>&1 &
pf=$!
body=$(printf '{"model": "%s", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 16}' "$HF_MODEL")
for attempt in $(seq 1 30); do
  if reply=$(curl -sf --max-time 60 http://localhost:18080/v1/chat/completions \
      -H 'Content-Type: application/json' -d "$body"); then
    echo "$reply"
    echo "$reply" | grep -q '"choices"' && { kill "$pf"; log "OK: router and model delivery"; exit 0; }
  fi
  sleep 2
done
kill "$pf"
echo "no chat completion came back from the hf:// server" >&2
exit 1
