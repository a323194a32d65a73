{{/*
Names. The chart name is also the app.kubernetes.io/name label, which the monitors use
as the scrape job name ("healert-webhook" unless nameOverride is set).
*/}}
{{- define "healert.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "healert.fullname" -}}
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

{{- define "healert.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The mode, checked once: every template calls this. */}}
{{- define "healert.mode" -}}
{{- $mode := .Values.mode -}}
{{- if not (has $mode (list "node-local" "service" "tail")) -}}
{{- fail (printf "mode must be node-local, service or tail, not %q" $mode) -}}
{{- end -}}
{{- if and (eq $mode "node-local") (ne .Values.webhook.auth "mtls") -}}
{{- fail "mode node-local requires webhook.auth=mtls: every host-network pod can reach 127.0.0.1, so the apiserver must prove itself with a client certificate" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (ne $mode "service") -}}
{{- fail (printf "serviceMonitor needs the Service of mode service; mode %s has no Service: use podMonitor.enabled" $mode) -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* app.kubernetes.io/component of the workload of each mode. */}}
{{- define "healert.component" -}}
{{- $mode := include "healert.mode" . -}}
{{- if eq $mode "node-local" -}}webhook-node-local
{{- else if eq $mode "service" -}}webhook
{{- else -}}audit-log-tail
{{- end -}}
{{- end -}}

{{/* The workload's name (and its NetworkPolicy's and PodMonitor's). */}}
{{- define "healert.workloadName" -}}
{{- if eq (include "healert.mode" .) "tail" -}}
{{- printf "%s-audit-tail" (include "healert.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "healert.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "healert.labels" -}}
helm.sh/chart: {{ include "healert.chart" . }}
app.kubernetes.io/name: {{ include "healert.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: healert
{{- end -}}

{{/* Labels of the workload's objects: the common ones plus the component. */}}
{{- define "healert.workloadLabels" -}}
{{ include "healert.labels" . }}
app.kubernetes.io/component: {{ include "healert.component" . }}
{{- end -}}

{{/* Selector labels: stable across upgrades, unique per release and mode. */}}
{{- define "healert.selectorLabels" -}}
app.kubernetes.io/name: {{ include "healert.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "healert.component" . }}
{{- end -}}

{{/* Pod template labels. */}}
{{- define "healert.podLabels" -}}
{{ include "healert.selectorLabels" . }}
app.kubernetes.io/part-of: healert
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "healert.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "healert.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "healert.fullname" .)) .Values.rules.existingConfigMap -}}
{{- end -}}

{{/* The Secret with the backend key; empty when no key is configured. */}}
{{- define "healert.apiKeySecret" -}}
{{- if .Values.backend.apiKey.value -}}
{{- printf "%s-backend-api-key" (include "healert.fullname" .) -}}
{{- else -}}
{{- .Values.backend.apiKey.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "healert.forwardRate" -}}
{{- if .Values.backend.forwardRate -}}
{{- .Values.backend.forwardRate -}}
{{- else if eq (include "healert.mode" .) "service" -}}
{{- div 60 (max 1 (int .Values.service.replicas)) -}}
{{- else -}}
60
{{- end -}}
{{- end -}}

{{/* Environment shared by every mode, first part: backend and delivery. */}}
{{- define "healert.envBackend" -}}
{{- if .Values.backend.url }}
# The Healert backend, reachable from the pod.
- name: HEALERT_BACKEND_URL
  value: {{ .Values.backend.url | quote }}
{{- end }}
{{- if include "healert.apiKeySecret" . }}
- name: HEALERT_API_KEY_FILE
  value: /var/run/secrets/healert/backend/{{ .Values.backend.apiKey.key }}
{{- end }}
# The backend allows 60 requests/min per client IP.
- name: HEALERT_FORWARD_RATE
  value: {{ include "healert.forwardRate" . | quote }}
- name: RULES_PATH
  value: /etc/healert/rules.yaml
{{- end -}}

{{- define "healert.envIdentity" -}}
- name: ENTITY_NAMESPACE
  value: {{ .Values.entityNamespace | quote }}
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* The webhook's TLS and client authentication. */}}
{{- define "healert.envWebhookAuth" -}}
- name: HEALERT_TLS_CERT
  value: /var/run/secrets/healert/tls/tls.crt
- name: HEALERT_TLS_KEY
  value: /var/run/secrets/healert/tls/tls.key
{{- if eq .Values.webhook.auth "mtls" }}
- name: HEALERT_TLS_CLIENT_CA
  value: /var/run/secrets/healert/tls/ca.crt
- name: HEALERT_TLS_CLIENT_NAMES
  value: {{ join "," .Values.webhook.clientNames | quote }}
{{- else }}
- name: HEALERT_WEBHOOK_TOKEN_FILE
  value: /var/run/secrets/healert/webhook-token/tokens
{{- end }}
{{- end -}}

{{- define "healert.extraEnv" -}}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container security context of the non-root agent (node-local, service). */}}
{{- define "healert.nonRootContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The tail's: uid 0 to read the root-only log, every capability dropped. */}}
{{- define "healert.tailContext" -}}
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The agent container's securityContext: the mode's (given as YAML text in
"defaults") with containerSecurityContext merged over it. Call with
(dict "root" $ "defaults" (include "healert.nonRootContext" $)). */}}
{{- define "healert.containerContext" -}}
{{- toYaml (mustMergeOverwrite (fromYaml .defaults) (deepCopy .root.Values.containerSecurityContext)) -}}
{{- end -}}

{{/* The pod's securityContext: the mode's defaults with podSecurityContext merged over
them. Call with (dict "root" $ "defaults" (dict ...)). */}}
{{- define "healert.podContext" -}}
{{- toYaml (mustMergeOverwrite (deepCopy .defaults) (deepCopy .root.Values.podSecurityContext)) -}}
{{- end -}}

{{/* Probes on the ops listener. Call with (dict "root" $ "port" <port name or number>
"readinessPeriod" N); probes.readiness and probes.liveness are merged over these. */}}
{{- define "healert.probes" -}}
{{- $get := dict "path" "/readyz" "port" .port "scheme" "HTTP" -}}
{{- $readiness := dict "httpGet" $get "periodSeconds" .readinessPeriod "timeoutSeconds" 2 "failureThreshold" 3 -}}
{{- $live := dict "path" "/healthz" "port" .port "scheme" "HTTP" -}}
{{- $liveness := dict "httpGet" $live "initialDelaySeconds" 10 "periodSeconds" 10 "timeoutSeconds" 3 "failureThreshold" 3 -}}
readinessProbe:
  {{- toYaml (mustMergeOverwrite $readiness (deepCopy .root.Values.probes.readiness)) | nindent 2 }}
livenessProbe:
  {{- toYaml (mustMergeOverwrite $liveness (deepCopy .root.Values.probes.liveness)) | nindent 2 }}
{{- end -}}

{{/* The workload's updateStrategy: updateStrategy when set, else the mode's (given). */}}
{{- define "healert.updateStrategy" -}}
{{- toYaml (default .defaults .root.Values.updateStrategy) -}}
{{- end -}}

{{/* The service account the pods run as (and the cluster view's binding names). */}}
{{- define "healert.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "healert.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* extraVolumes and extraVolumeMounts, as list items (empty when none). */}}
{{- define "healert.extraVolumes" -}}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "healert.extraVolumeMounts" -}}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Control-plane placement for node-local and tail. */}}
{{- define "healert.controlPlanePlacement" -}}
{{- with .Values.controlPlane.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if .Values.controlPlane.affinity }}
  {{- toYaml .Values.controlPlane.affinity | nindent 2 }}
{{- else }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: node-role.kubernetes.io/control-plane
              operator: Exists
{{- end }}
{{- with .Values.controlPlane.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod-level extras every mode takes. */}}
{{- define "healert.podExtras" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* The rules volume. */}}
{{- define "healert.rulesVolume" -}}
- name: rules
  configMap:
    name: {{ include "healert.rulesConfigMap" . }}
    defaultMode: 0444
{{- end -}}

{{/* The backend key volume, if a key is configured. Call with (dict "root" $ "mode" "0440"). */}}
{{- define "healert.apiKeyVolume" -}}
{{- if include "healert.apiKeySecret" .root }}
- name: backend-api-key
  secret:
    secretName: {{ include "healert.apiKeySecret" .root }}
    defaultMode: {{ .mode }}
{{- end }}
{{- end -}}

{{/* The cluster view's API token, mounted in the agent's container only (not in init
containers): what automountServiceAccountToken would mount, scoped to one container. */}}
{{- define "healert.apiAccessMount" -}}
{{- if .Values.clusterView.enabled }}
- name: kube-api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end }}
{{- end -}}

{{- define "healert.apiAccessVolume" -}}
{{- if .Values.clusterView.enabled }}
- name: kube-api-access
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end }}
{{- end -}}

{{/* The NetworkPolicy's egress rule to the backend, as a one-item list: peers and ports
from networkPolicy.backendTo / backendPorts when given, else derived from backend.url:
an in-cluster Service name (<service>.<namespace>.svc[.<cluster domain>], or a bare
<service> of the release's namespace) allows that namespace, an IP literal that address,
any other host every address; the port is the URL's (else 443 for https, 80 for http).
Nothing when there is no backend. NetworkPolicies see a Service's target port, not its
port: set backendPorts when the two differ. */}}
{{- define "healert.backendEgress" -}}
{{- $np := .Values.networkPolicy -}}
{{- $url := .Values.backend.url -}}
{{- if or $url $np.backendTo $np.backendPorts -}}
{{- $to := $np.backendTo -}}
{{- $ports := $np.backendPorts -}}
{{- if $url -}}
{{- $parsed := urlParse $url -}}
{{- $host := lower $parsed.host -}}
{{- $port := "" -}}
{{- $ipv6 := hasPrefix "[" $host -}}
{{- if $ipv6 -}}
{{- $port = regexReplaceAll "^\\[[^]]*\\]:?" $host "" -}}
{{- $host = regexReplaceAll "^\\[([^]]*)\\].*$" $host "${1}" -}}
{{- else if contains ":" $host -}}
{{- $port = regexReplaceAll "^[^:]*:" $host "" -}}
{{- $host = regexReplaceAll ":.*$" $host "" -}}
{{- end -}}
{{- if not $port -}}
{{- $port = ternary "443" "80" (eq (lower $parsed.scheme) "https") -}}
{{- end -}}
{{- if not $to -}}
{{- if $ipv6 -}}
{{- $to = list (dict "ipBlock" (dict "cidr" (printf "%s/128" $host))) -}}
{{- else if regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host -}}
{{- $to = list (dict "ipBlock" (dict "cidr" (printf "%s/32" $host))) -}}
{{- else if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\\.svc(\\..*)?$" $host -}}
{{- $namespace := index (splitList "." $host) 1 -}}
{{- $to = list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" $namespace))) -}}
{{- else if not (contains "." $host) -}}
{{- $to = list (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace))) -}}
{{- end -}}
{{- end -}}
{{- if not $ports -}}
{{- $ports = list (dict "protocol" "TCP" "port" (int $port)) -}}
{{- end -}}
{{- end -}}
{{- $rule := dict -}}
{{- if $to }}{{ $_ := set $rule "to" $to }}{{ end -}}
{{- if $ports }}{{ $_ := set $rule "ports" $ports }}{{ end -}}
{{- toYaml (list $rule) -}}
{{- end -}}
{{- end -}}
