{{/*
The operator's namespaced permissions: one list, rendered into a ClusterRole when the operator
watches all namespaces, or into a Role in each watched namespace otherwise. Each rule names the
code path that needs it (operator/src/omega_operator/...).
*/}}
{{- define "omega-vlm.operatorRules" -}}
# kopf (handlers.py): list+watch OmegaVLMs, patch them for its progress/last-handled annotations
# and finalizer; kube.py reads single objects with get.
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms"]
  verbs: ["get", "list", "watch", "patch"]
# handlers.py / conditions.py: status (phase, conditions, attention, fallback) is written through
# the status subresource.
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms/status"]
  verbs: ["get", "patch", "update"]
# builders.py sets ownerReferences with blockOwnerDeletion on children; clusters that run the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms/finalizers"]
  verbs: ["update"]
# kube.py: server-side apply of the inference Deployment (create on first apply, patch after),
# get/list/watch to observe rollout state and repair drift; the fallback (fallback.py) is one patch.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# kube.py: server-side apply of the Service in front of the inference pods.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
# kube.py: PodDisruptionBudget for replicas > 1 (policy/v1, or policy/v1beta1 on clusters older
# than 1.21, found by discovery); deleted again when replicas drop to 1.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# health.py / handlers.py: list the inference pods (phase, restarts, termination messages, podIP)
# for the /health prober and the fallback decision; Schedulable reads pod conditions.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
{{- if eq .Values.operator.probe.mode "proxy" }}
# health.py, proxy mode: GET /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/health.
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
{{- end }}
# kopf posts its handler events and handlers.py posts FlashAttentionFallback/InvalidSpec events
# through core/v1; events.k8s.io/v1 is the same object under the newer API (both: create, patch to
# aggregate repeats).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if and .Values.operator.peering.enabled (not (include "omega-vlm.clusterWide" .)) }}
# kopf peering (settings.py peering option), namespaced: KopfPeering objects of kopf's CRDs.
- apiGroups: ["kopf.dev", "zalando.org"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}
