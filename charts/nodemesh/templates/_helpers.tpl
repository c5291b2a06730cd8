{{/* Names and labels shared by every object of the release. */}}

{{- define "nodemesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nodemesh.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "nodemesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "nodemesh.agent.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "nodemesh.controlplane.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controlplane
{{- end -}}

{{- define "nodemesh.controlplane.host" -}}
{{ include "nodemesh.fullname" . }}-controlplane.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* Where the agents reach the control plane: TLS on 15012 with a CA, plaintext 15010 without. */}}
{{- define "nodemesh.xdsAddress" -}}
{{- if .Values.ca.enabled -}}
https://{{ include "nodemesh.controlplane.host" . }}:15012
{{- else -}}
http://{{ include "nodemesh.controlplane.host" . }}:15010
{{- end -}}
{{- end -}}

{{/* The Secret holding the CA's root (or Istio's cacerts), and the agents' service account. */}}
{{- define "nodemesh.caSecret" -}}
{{ .Values.ca.existingSecret | default (printf "%s-ca" (include "nodemesh.fullname" .)) }}
{{- end -}}

{{- define "nodemesh.agent.serviceAccount" -}}
{{ include "nodemesh.fullname" . }}-agent
{{- end -}}

{{/* Where the agent's last-good state is, inside its container. */}}
{{- define "nodemesh.agent.stateDir" -}}
{{ .Values.agent.stateDir | default "/var/lib/nodemesh" }}
{{- end -}}
