{{/* Chart name, overridable. */}}
{{- define "omega-vlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified release name; used as the prefix of every resource name. */}}
{{- define "omega-vlm.fullname" -}}
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

{{/* The operator's name (Deployment, Service, ClusterRole ...). */}}
{{- define "omega-vlm.operatorName" -}}
{{- printf "%s-operator" (include "omega-vlm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "omega-vlm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "omega-vlm.labels" -}}
helm.sh/chart: {{ include "omega-vlm.chart" . }}
{{ include "omega-vlm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: omega-vlm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels (stable across upgrades). */}}
{{- define "omega-vlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "omega-vlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Operator selector labels. */}}
{{- define "omega-vlm.operatorSelectorLabels" -}}
{{ include "omega-vlm.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Operator labels. */}}
{{- define "omega-vlm.operatorLabels" -}}
{{ include "omega-vlm.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* ServiceAccount the operator runs as. */}}
{{- define "omega-vlm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "omega-vlm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Operator image reference: repository[:tag][@digest]; the tag defaults to appVersion. */}}
{{- define "omega-vlm.operatorImage" -}}
{{- $img := .Values.operator.image -}}
{{- $tag := default .Chart.AppVersion $img.tag -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $img.repository $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Image of the helm test pod: tests.image, else the operator image. */}}
{{- define "omega-vlm.testImage" -}}
{{- if .Values.tests.image.repository -}}
{{- printf "%s:%s" .Values.tests.image.repository (default .Chart.AppVersion .Values.tests.image.tag) -}}
{{- else -}}
{{- include "omega-vlm.operatorImage" . -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when the operator watches every namespace. */}}
{{- define "omega-vlm.clusterWide" -}}
{{- if empty .Values.operator.watch.namespaces -}}true{{- end -}}
{{- end -}}

{{/* Namespace of the dashboard ConfigMap. */}}
{{- define "omega-vlm.dashboardNamespace" -}}
{{- default .Release.Namespace .Values.dashboard.namespace -}}
{{- end -}}
