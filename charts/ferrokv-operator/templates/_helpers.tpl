{{/* Full name of the release's objects. */}}
{{- define "ferrokv-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting the operator's pods. */}}
{{- define "ferrokv-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "ferrokv-operator.labels" -}}
{{ include "ferrokv-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ferrokv-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ferrokv-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* PromQL label matchers selecting the members' series in the alerts and the dashboard. */}}
{{- define "ferrokv-operator.memberSelector" -}}
{{- .Values.prometheusRule.memberSelector | default (printf "job=%q" .Values.memberMonitor.job) -}}
{{- end -}}

{{/* PromQL label matchers selecting the operator's series in the alerts and the dashboard. */}}
{{- define "ferrokv-operator.operatorSelector" -}}
{{- .Values.prometheusRule.operatorSelector | default (printf "job=%q" .Values.serviceMonitor.job) -}}
{{- end -}}
