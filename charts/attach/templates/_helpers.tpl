{{/* The release's base name. */}}
{{- define "attach.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "attach.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: attach-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: attach
{{- end -}}

{{/* Labels that select the operator pods. */}}
{{- define "attach.selectorLabels" -}}
app.kubernetes.io/name: attach-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "attach.webhookService" -}}{{ include "attach.fullname" . }}-webhook{{- end -}}
{{- define "attach.webhookSecret" -}}{{ include "attach.fullname" . }}-webhook-tls{{- end -}}
{{- define "attach.serviceAccount" -}}{{ include "attach.fullname" . }}-operator{{- end -}}
