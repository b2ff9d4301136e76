#!/usr/bin/env bash
# Runs Postern's full flow on a local kind cluster: cert-manager, KEDA, the Postern chart (with
# its NATS JetStream cluster), a Relay and a Domain, and a test message from a pod.
# Needs docker, kind, kubectl and helm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster=postern
tag=kind

kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster"
kubectl config use-context "kind-$cluster"

helm repo add jetstack https://charts.jetstack.io >/dev/null
helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm upgrade --install cert-manager jetstack/cert-manager -n cert-manager --create-namespace --wait \
  --set crds.enabled=true
helm upgrade --install keda kedacore/keda -n keda --create-namespace --wait

docker build -t "postern:$tag" .
kind load docker-image "postern:$tag" --name "$cluster"

kubectl apply -f - <<'YAML'
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: { name: selfsigned }
spec: { selfSigned: {} }
YAML

helm upgrade --install postern charts/postern -n postern --create-namespace --wait \
  --set image.repository=postern --set image.tag="$tag" \
  --set nats.storage.size=1Gi --set nats.jetstream.maxFileStore=900Mi \
  -f - <<'YAML'
relay:
  create: true
  name: mail
  spec:
    hostname: smtp.postern.test
    ingress:
      service: { type: ClusterIP }
      tls: { issuerRef: { name: selfsigned, kind: ClusterIssuer } }
domain:
  create: true
  spec:
    domain: postern.test
YAML

kubectl -n postern wait relay/mail --for=condition=Ready --timeout=300s
kubectl -n postern get relays,domains,scaledobjects,pods
kubectl -n postern run swaks --rm -i --restart=Never --image=alpine:3.20 -- sh -c \
  'apk add -q swaks && swaks --server mail.postern.svc --port 25 --tls --tls-verify=no \
     --from app@postern.test --to someone@example.com --header "Subject: postern on kind"'
sleep 5
kubectl -n postern logs deploy/mail-delivery --tail=20
