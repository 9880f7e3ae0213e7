{{/* Names and labels shared by every template of the chart. */}}

{{- define "dynasparse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dynasparse.fullname" -}}
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

{{- define "dynasparse.operatorName" -}}
{{- printf "%s-operator" (include "dynasparse.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dynasparse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: dynasparse
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "dynasparse.operatorSelector" . }}
{{- end -}}

{{- define "dynasparse.operatorSelector" -}}
app.kubernetes.io/name: {{ include "dynasparse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "dynasparse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dynasparse.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dynasparse.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/* RBAC rules for what the operator reconciles per AdaptiveModel (rbac.yaml: a ClusterRole, or a
Role per watched namespace). */}}
{{- define "dynasparse.modelRules" }}
  # The custom resource: kopf patches annotations/finalizers on the object and writes status.
  - apiGroups: [dynasparse.io]
    resources: [adaptivemodels]
    verbs: [get, list, watch, patch, update]
  - apiGroups: [dynasparse.io]
    resources: [adaptivemodels/status]
    verbs: [get, patch, update]
  # Owned objects of each AdaptiveModel: created, then patched to match the spec.
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, create, patch]
  - apiGroups: [""]
    resources: [services]
    verbs: [get, create, patch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, create, patch]
  # Worker TLS Secret (read, created, patched on renewal) and API-key Secret (created once).
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, create, patch]
  # Signals: worker pods (readiness, DisruptionTarget).
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
  # Every budget decision becomes an Event.
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [kopf.dev]
    resources: [kopfpeerings]
    verbs: [get, list, watch, patch]
{{- end }}
