{{/*
Names and labels. One place for them, as in `helm create`: selector labels never change after the
first install (a Deployment's selector is immutable); the full label set adds version and chart.
*/}}

{{- define "autoglm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autoglm-operator.fullname" -}}
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

{{- define "autoglm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autoglm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The label helper: every object of the chart carries these. */}}
{{- define "autoglm-operator.labels" -}}
{{ include "autoglm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: autoglm
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "autoglm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "autoglm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "autoglm-operator.peeringName" -}}
{{- default (include "autoglm-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "autoglm-operator.imageRef" -}}
{{- $image := index . 0 }}{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "autoglm-operator.validate" -}}
{{- if and (not .Values.peering.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without peering every replica would reconcile the same objects" }}
{{- end }}
{{- end }}
