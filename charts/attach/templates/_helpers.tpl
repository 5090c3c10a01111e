{{/* The application's name in labels: attach-operator, or nameOverride. */}}
{{- define "attach.name" -}}
{{- default "attach-operator" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: fullnameOverride, or the release name (with the
chart's name unless it already holds it). At most 63 characters.
*/}}
{{- define "attach.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A name derived from the base name: "<base><suffix>", the base cut so that the
whole stays within 63 characters (Service names are DNS labels). Called with
(list . "-suffix").
*/}}
{{- define "attach.derived" -}}
{{- $ctx := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "attach.fullname" $ctx | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s%s" $base $suffix -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "attach.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "attach.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: attach
{{- end -}}

{{/* Labels that select the operator pods. */}}
{{- define "attach.selectorLabels" -}}
app.kubernetes.io/name: {{ include "attach.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "attach.operator" -}}{{ include "attach.derived" (list . "-operator") }}{{- end -}}
{{- define "attach.webhookService" -}}{{ include "attach.derived" (list . "-webhook") }}{{- end -}}
{{- define "attach.webhookSecret" -}}{{ include "attach.derived" (list . "-webhook-tls") }}{{- end -}}
{{- define "attach.metricsService" -}}{{ include "attach.derived" (list . "-metrics") }}{{- end -}}

{{/* The operator's ServiceAccount: serviceAccount.name, or one named after the release. */}}
{{- define "attach.serviceAccount" -}}
{{- if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else if .Values.serviceAccount.create -}}
{{- include "attach.operator" . -}}
{{- else -}}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" -}}
{{- end -}}
{{- end -}}

{{/* The user name the API server gives the operator's ServiceAccount. */}}
{{- define "attach.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "attach.serviceAccount" . }}
{{- end -}}

{{/* The namespace label the operator keeps on namespaces that hold an LLMBackend. */}}
{{- define "attach.namespaceLabel" -}}attach.dev/llm-backends{{- end -}}

{{/* Namespaces never touched: kube-system, the release's own, and those excluded. */}}
{{- define "attach.excludedNamespaces" -}}
- kube-system
- {{ .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
- {{ . }}
{{- end }}
{{- end -}}
