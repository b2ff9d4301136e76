{{/* Chart name, cut to the 63 characters of a label value. */}}
{{- define "postern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of object names: the release name, plus the chart name unless it contains it. */}}
{{- define "postern.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "x"). */}}
{{- define "postern.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "postern.selector" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* Labels selecting one component's pods. */}}
{{- define "postern.selector" -}}
app.kubernetes.io/name: {{ include "postern.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "postern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "postern.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "postern.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Client URL of NATS: the chart's cluster, or nats.url. */}}
{{- define "postern.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s-nats.%s.svc:4222" (include "postern.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* Monitoring endpoint KEDA reads: nats.monitoringEndpoint, or the chart's headless Service
(KEDA finds the consumer leader at <server name>.<this host>), or none. */}}
{{- define "postern.natsMonitoringEndpoint" -}}
{{- if .Values.nats.monitoringEndpoint }}
{{- .Values.nats.monitoringEndpoint }}
{{- else if .Values.nats.enabled }}
{{- printf "%s-nats-headless.%s.svc:8222" (include "postern.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* "true" when the chart's NATS speaks TLS: nats.tls.enabled is true, or auto and cert-manager
is installed (it issues the certificates). */}}
{{- define "postern.natsTls" -}}
{{- $certManager := .Capabilities.APIVersions.Has "cert-manager.io/v1/Certificate" }}
{{- $enabled := toString .Values.nats.tls.enabled }}
{{- if and .Values.nats.enabled (eq $enabled "true") (not $certManager) }}
{{- fail "nats.tls.enabled=true needs cert-manager (cert-manager.io/v1), which this cluster does not serve: install cert-manager first, or set nats.tls.enabled=auto or false" }}
{{- end }}
{{- if and .Values.nats.enabled (or (eq $enabled "true") (and (eq $enabled "auto") $certManager)) }}true{{ end }}
{{- end }}

{{/* Security context of every container the chart runs. */}}
{{- define "postern.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
