{{/* The chart name, or nameOverride. */}}
{{- define "skuld.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object: the release name, unless it already holds the chart name. */}}
{{- define "skuld.fullname" -}}
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

{{/* The headless Service that gives each pod its stable peer address. */}}
{{- define "skuld.peers" -}}
{{- printf "%s-peers" (include "skuld.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skuld.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skuld.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "skuld.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "skuld.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skuld
{{- end -}}

{{- define "skuld.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "skuld.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skuld.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the preStop pause, the whole drain and a margin. */}}
{{- define "skuld.gracePeriod" -}}
{{- add .Values.drain.preStopSleepSecs .Values.drain.timeoutSecs .Values.drain.graceMarginSecs -}}
{{- end -}}

{{/* One TOML value: strings quoted, lists bracketed, numbers and booleans bare. */}}
{{- define "skuld.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- . | quote -}}
{{- else if kindIs "slice" . -}}
[{{- range $index, $item := . }}{{ if $index }}, {{ end }}{{ include "skuld.tomlValue" $item }}{{ end -}}]
{{- else if kindIs "float64" . -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
