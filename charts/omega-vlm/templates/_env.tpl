{{/*
Operator settings as OMEGA_OPERATOR_* variables (omega_operator/settings.py, OperatorSettings).
This is the only place the chart maps values to the operator's environment.
*/}}
{{- define "omega-vlm.operatorEnv" -}}
- name: OMEGA_OPERATOR_NAMESPACES
  value: {{ join "," .Values.operator.watch.namespaces | quote }}
- name: OMEGA_OPERATOR_HEALTH_PROBE_MODE
  value: {{ .Values.operator.probe.mode | quote }}
- name: OMEGA_OPERATOR_PROBE_INTERVAL
  value: {{ .Values.operator.probe.intervalSeconds | quote }}
- name: OMEGA_OPERATOR_PROBE_TIMEOUT
  value: {{ .Values.operator.probe.timeoutSeconds | quote }}
- name: OMEGA_OPERATOR_PROBE_CONCURRENCY
  value: {{ .Values.operator.probe.concurrency | quote }}
- name: OMEGA_OPERATOR_WATCH_SERVER_TIMEOUT
  value: {{ .Values.operator.kopf.watchServerTimeout | quote }}
- name: OMEGA_OPERATOR_WATCH_CLIENT_TIMEOUT
  value: {{ .Values.operator.kopf.watchClientTimeout | quote }}
- name: OMEGA_OPERATOR_REQUEST_TIMEOUT
  value: {{ .Values.operator.kopf.requestTimeout | quote }}
- name: OMEGA_OPERATOR_MAX_WORKERS
  value: {{ .Values.operator.kopf.maxWorkers | quote }}
- name: OMEGA_OPERATOR_LIVENESS_PORT
  value: {{ .Values.operator.liveness.port | quote }}
- name: OMEGA_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metrics.port | quote }}
{{- if .Values.operator.peering.enabled }}
- name: OMEGA_OPERATOR_PEERING
  value: {{ .Values.operator.peering.name | quote }}
{{- end }}
{{- end -}}
