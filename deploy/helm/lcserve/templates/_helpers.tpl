{{/* Names, labels and the pieces every lcserve pod shares. */}}

{{- define "lcserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-lcserve, or the release name when it already says lcserve. */}}
{{- define "lcserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "lcserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lcserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "router"). */}}
{{- define "lcserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lcserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lcserve.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* http, or https when the services speak TLS. */}}
{{- define "lcserve.scheme" -}}
{{ ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{- define "lcserve.kvstoreUrl" -}}
{{ include "lcserve.scheme" . }}://{{ include "lcserve.fullname" . }}-kvstore:50052
{{- end }}

{{/* An env entry `name` holding the Redis URL: the bundled Redis's, else the one in the chart's
Secret. Call with (dict "root" $ "name" "LCSERVE_REDIS_URL"). */}}
{{- define "lcserve.redisUrlEnv" -}}
- name: {{ .name }}
  {{- if .root.Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:6379/0" (include "lcserve.fullname" .root) | quote }}
  {{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "lcserve.fullname" .root }}
      key: redis-url
  {{- end }}
{{- end }}

{{/* Comma-separated URLs of the workers of one role: call with (dict "root" $ "role" "prefill"). */}}
{{- define "lcserve.workerUrls" -}}
{{- $root := .root }}
{{- $urls := list }}
{{- range $index := until (int (index $root.Values .role).count) }}
{{- $urls = append $urls (printf "%s://%s-%s-%d:50061" (include "lcserve.scheme" $root) (include "lcserve.fullname" $root) $.role $index) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{- define "lcserve.tlsSecretName" -}}
{{ .Values.tls.existingSecret | default (printf "%s-tls" (include "lcserve.fullname" .)) }}
{{- end }}

{{- define "lcserve.apiKeysSecretName" -}}
{{ .Values.router.apiKeys.existingSecret | default (include "lcserve.fullname" .) }}
{{- end }}

{{/* Pod-level settings every lcserve pod shares. */}}
{{- define "lcserve.podSpecCommon" -}}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container settings every lcserve container shares: image, config, TLS paths. */}}
{{- define "lcserve.containerCommon" -}}
image: {{ include "lcserve.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "lcserve.fullname" . }}
{{- end }}

{{/* TLS environment, in a container's env list. */}}
{{- define "lcserve.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: LCSERVE_TLS_CERT
  value: /etc/lcserve/tls/tls.crt
- name: LCSERVE_TLS_KEY
  value: /etc/lcserve/tls/tls.key
{{- if or .Values.tls.existingSecret .Values.tls.ca }}
- name: LCSERVE_TLS_CA
  value: /etc/lcserve/tls/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{- define "lcserve.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/lcserve/tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "lcserve.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "lcserve.tlsSecretName" . }}
{{- end }}
{{- end }}

{{/*
Health probes of a gRPC service on `port`: grpc.health.v1 through the kubelet's native gRPC probe,
which speaks plaintext only, so under TLS a TCP probe instead. Call with (dict "root" $ "port" N).
*/}}
{{- define "lcserve.grpcProbes" -}}
{{- $probe := dict "grpc" (dict "port" .port) }}
{{- if .root.Values.tls.enabled }}
{{- $probe = dict "tcpSocket" (dict "port" .port) }}
{{- end }}
readinessProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: 10
  failureThreshold: 3
livenessProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: 20
  failureThreshold: 3
startupProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: 10
  failureThreshold: 60
{{- end }}
