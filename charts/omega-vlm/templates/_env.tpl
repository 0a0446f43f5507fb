{{/*
Operator settings as OMEGA_OPERATOR_* variables (omega_operator/settings.py, pydantic-settings).
This is the only place the chart maps values to the operator's environment.
*/}}
{{- define "omega-vlm.operatorEnv" -}}
- name: OMEGA_OPERATOR_NAMESPACES
  value: {{ join "," .Values.operator.watch.namespaces | quote }}
- name: OMEGA_OPERATOR_HEALTH_MODE
  value: {{ .Values.operator.health.mode | quote }}
- name: OMEGA_OPERATOR_HEALTH_INTERVAL
  value: {{ .Values.operator.health.intervalSeconds | quote }}
- name: OMEGA_OPERATOR_HEALTH_TIMEOUT
  value: {{ .Values.operator.health.timeoutSeconds | quote }}
- name: OMEGA_OPERATOR_HEALTH_CONCURRENCY
  value: {{ .Values.operator.health.concurrency | quote }}
- name: OMEGA_OPERATOR_PEERING
  value: {{ ternary .Values.operator.peering.name "" .Values.operator.peering.enabled | quote }}
- name: OMEGA_OPERATOR_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: OMEGA_OPERATOR_LIVENESS_PORT
  value: {{ .Values.operator.liveness.port | quote }}
- name: OMEGA_OPERATOR_METRICS_PORT
  value: {{ .Values.operator.metrics.port | quote }}
{{- end -}}
