{{/*
The operator's namespaced permissions: one list, rendered into a ClusterRole when the operator
watches all namespaces, or into a Role in each watched namespace otherwise. The comment on each
rule names the code path (operator/src/omega_operator/...) that needs it.
*/}}
{{- define "omega-vlm.operatorRules" -}}
# handlers.py: kopf watches OmegaVLMs (on.create/update/resume and the omegavlms_idx index of
# indexes.py that refresher.py walks: list+watch) and patches them to keep its progress and
# last-handled-configuration annotations (patch).
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms"]
  verbs: ["list", "watch", "patch"]
# kube.py Kube.patch_status (reconcile.py, rollback.py): phase, conditions, attention and the
# fallback record are merge-patched through the status subresource.
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms/status"]
  verbs: ["patch"]
# builders.py sets ownerReferences with blockOwnerDeletion on every child; clusters that run the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers
# (this is the only reason: the operator itself adds no finalizer).
- apiGroups: ["vlm.omega.io"]
  resources: ["omegavlms/finalizers"]
  verbs: ["update"]
# indexes.py deployments_idx: kopf index (list+watch) of the inference Deployments;
# kube.py Kube.apply (reconcile.py): server-side apply, which creates on first apply (create) and
# patches after; the flash->sdpa fallback is one such apply.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
# indexes.py services_idx (list+watch); kube.py Kube.apply of the Service (create, patch).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# indexes.py pdbs_idx (list+watch); kube.py Kube.apply of the PodDisruptionBudget for
# replicas > 1 (create, patch; policy/v1 or, before 1.21, policy/v1beta1: same group) and
# Kube.delete when replicas drop to 1 (reconcile.py).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# indexes.py pods_idx: kopf index (list+watch) of the inference pods: phase, restarts,
# termination messages and podIP for the /health prober (prober.py) and fallback/.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# indexes.py claims_idx: kopf index (list+watch) of the claims' access modes: a pvc:// model
# claim that is ReadWriteOnce cannot serve pods on several nodes (model_claim.py).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch"]
{{- if ne .Values.operator.probe.mode "direct" }}
# prober.py HealthProber in proxy or auto mode (OMEGA_OPERATOR_HEALTH_PROBE_MODE=proxy|auto; auto
# only after a failed direct connection): GET /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/health.
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
{{- end }}
# kube.py Kube.event (FlashAttentionFallback, InvalidSpec, Ready transitions) and kopf's own
# warnings (kopf posting.py -> clients/events.py) POST new core/v1 Events; neither patches an
# Event nor uses the events.k8s.io API.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.operator.peering.enabled (not (include "omega-vlm.clusterWide" .)) }}
# __main__.py kopf.run(peering_name=...) with a namespace list: kopf's KopfPeering objects
# (kopf.dev; zalando.org in older kopf) in each watched namespace.
- apiGroups: ["kopf.dev", "zalando.org"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}
