#!/usr/bin/env bash
# Runs Postern's full flow on a local kind cluster. Needs docker, kind, kubectl and helm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster=postern
image=postern:kind

kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster"
kubectl config use-context "kind-$cluster"

helm repo add nats https://nats-io.github.io/k8s/helm/charts/ >/dev/null
helm repo add jetstack https://charts.jetstack.io >/dev/null
helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm upgrade --install nats nats/nats -n postern --create-namespace --wait \
  --set config.jetstream.enabled=true --set config.cluster.enabled=true --set config.cluster.replicas=3
helm upgrade --install cert-manager jetstack/cert-manager -n cert-manager --create-namespace --wait \
  --set crds.enabled=true
helm upgrade --install keda kedacore/keda -n keda --create-namespace --wait

docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

kubectl apply -f crds/
kubectl create namespace postern-system --dry-run=client -o yaml | kubectl apply -f -
docker run --rm --entrypoint /usr/local/bin/postern-operator "$image" rbac --namespace postern-system \
  | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: { name: postern-operator, namespace: postern-system }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: postern-operator }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: postern-operator }
subjects: [{ kind: ServiceAccount, name: postern-operator, namespace: postern-system }]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: postern-operator, namespace: postern-system }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: postern-operator }
subjects: [{ kind: ServiceAccount, name: postern-operator, namespace: postern-system }]
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: postern-operator, namespace: postern-system }
spec:
  replicas: 2
  selector: { matchLabels: { app: postern-operator } }
  template:
    metadata: { labels: { app: postern-operator } }
    spec:
      serviceAccountName: postern-operator
      containers:
        - name: operator
          image: $image
          command: [/usr/local/bin/postern-operator, run]
          env:
            - { name: POD_NAME, valueFrom: { fieldRef: { fieldPath: metadata.name } } }
            - { name: POD_NAMESPACE, valueFrom: { fieldRef: { fieldPath: metadata.namespace } } }
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: { name: selfsigned }
spec: { selfSigned: {} }
---
apiVersion: postern.io/v1alpha1
kind: Relay
metadata: { name: mail, namespace: postern }
spec:
  image: $image
  imagePullPolicy: Never
  hostname: smtp.postern.test
  nats: { url: "nats://nats.postern.svc:4222", streamReplicas: 3 }
  ingress:
    service: { type: ClusterIP }
    tls: { issuerRef: { name: selfsigned, kind: ClusterIssuer } }
---
apiVersion: postern.io/v1alpha1
kind: Domain
metadata: { name: postern-test, namespace: postern }
spec:
  domain: postern.test
  relayRef: { name: mail }
YAML

kubectl -n postern wait relay/mail --for=condition=Ready --timeout=300s
kubectl -n postern get relays,domains,pods
kubectl -n postern run swaks --rm -i --restart=Never --image=alpine:3.20 -- sh -c \
  'apk add -q swaks && swaks --server mail.postern.svc --port 25 --tls --tls-verify=no \
     --from app@postern.test --to someone@example.com --header "Subject: postern on kind"'
sleep 5
kubectl -n postern logs deploy/mail-delivery --tail=20
