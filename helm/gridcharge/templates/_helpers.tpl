{{/* Chart name. */}}
{{- define "gridcharge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, truncated to 63 chars for DNS. */}}
{{- define "gridcharge.fullname" -}}
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

{{/* Name of one component's resources: <fullname>-<component> (fullname trimmed to leave room). */}}
{{- define "gridcharge.componentName" -}}
{{- printf "%s-%s" (include "gridcharge.fullname" .root | trunc 45 | trimSuffix "-") .component }}
{{- end }}

{{- define "gridcharge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels (recommended app.kubernetes.io set). */}}
{{- define "gridcharge.labels" -}}
helm.sh/chart: {{ include "gridcharge.chart" . }}
{{ include "gridcharge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gridcharge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gridcharge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gridcharge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "gridcharge.componentLabels" -}}
{{ include "gridcharge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gridcharge.componentSelectorLabels" -}}
{{ include "gridcharge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gridcharge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gridcharge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gridcharge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "gridcharge.topologyConfigMap" -}}
{{- default (printf "%s-topology" (include "gridcharge.fullname" .)) .Values.topology.existingConfigMap }}
{{- end }}

{{- define "gridcharge.stationCredentialsSecret" -}}
{{- default (printf "%s-station-credentials" (include "gridcharge.fullname" .)) .Values.stationCredentials.existingSecret }}
{{- end }}

{{/* The gateway gets credentials from an existing Secret, or from the chart's when stations are listed. */}}
{{- define "gridcharge.hasStationCredentials" -}}
{{- if or .Values.stationCredentials.existingSecret (and .Values.stationCredentials.create .Values.stationCredentials.stations) }}true{{ end }}
{{- end }}

{{- define "gridcharge.apiTokensSecret" -}}
{{- default (printf "%s-api-tokens" (include "gridcharge.fullname" .)) .Values.apiAuth.existingSecret }}
{{- end }}

{{/* Operator API tokens come from an existing Secret, or from the chart's when tokens are listed. */}}
{{- define "gridcharge.hasApiTokens" -}}
{{- if or .Values.apiAuth.existingSecret .Values.apiAuth.tokens }}true{{ end }}
{{- end }}

{{- define "gridcharge.tlsSecret" -}}
{{- default (printf "%s-tls" (include "gridcharge.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* Environment shared by every service. Call with (dict "root" $ "component" "gateway" "port" 8080). */}}
{{- define "gridcharge.commonEnv" -}}
- name: GRIDCHARGE_SERVICE
  value: {{ .component | quote }}
- name: GRIDCHARGE_BUS
  value: {{ .root.Values.kafka.bus | quote }}
- name: GRIDCHARGE_TOPIC_PREFIX
  value: {{ .root.Values.kafka.topicPrefix | quote }}
- name: GRIDCHARGE_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required" .root.Values.kafka.bootstrap | quote }}
- name: GRIDCHARGE_REDIS_URL
{{- if .root.Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.redis.existingSecret }}
      key: {{ .root.Values.redis.existingSecretKey }}
{{- else }}
  value: {{ required "redis.url (or redis.existingSecret) is required" .root.Values.redis.url | quote }}
{{- end }}
- name: GRIDCHARGE_TOPOLOGY
  value: /etc/gridcharge/topology.yaml
- name: GRIDCHARGE_HTTP_PORT
  value: {{ .port | quote }}
- name: GRIDCHARGE_OPS_PORT
  value: {{ .root.Values.opsPort | quote }}
{{- if include "gridcharge.hasApiTokens" .root }}
- name: GRIDCHARGE_API_TOKENS_FILE
  value: /etc/gridcharge/api/tokens.yaml
{{- end }}
{{- with .root.Values.apiAuth.oidc }}
{{- if .issuer }}
- name: GRIDCHARGE_OIDC_ISSUER
  value: {{ .issuer | quote }}
- name: GRIDCHARGE_OIDC_AUDIENCE
  value: {{ .audience | quote }}
- name: GRIDCHARGE_OIDC_JWKS_URL
  value: {{ .jwksUrl | quote }}
- name: GRIDCHARGE_OIDC_ROLES_CLAIM
  value: {{ .rolesClaim | quote }}
- name: GRIDCHARGE_OIDC_ROLE_MAP
  value: {{ .roleMap | quote }}
- name: GRIDCHARGE_OIDC_ALGORITHMS
  value: {{ .algorithms | quote }}
{{- end }}
{{- end }}
{{- if .root.Values.apiAuth.openAccess }}
- name: GRIDCHARGE_API_OPEN_ACCESS
  value: "true"
{{- end }}
- name: GRIDCHARGE_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: GRIDCHARGE_REPLICA_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probes on the ops port (GRIDCHARGE_OPS_PORT), apart from the operator API. */}}
{{- define "gridcharge.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: ops
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /healthz
    port: ops
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /readyz
    port: ops
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
{{- end }}

{{/* Pod annotations: config checksums roll the pods when topology or credentials change. */}}
{{- define "gridcharge.podAnnotations" -}}
checksum/topology: {{ include (print .Template.BasePath "/configmap-topology.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes every service mounts: topology and a writable /tmp. */}}
{{- define "gridcharge.commonVolumes" -}}
- name: topology
  configMap:
    name: {{ include "gridcharge.topologyConfigMap" . }}
    items:
      - key: topology.yaml
        path: topology.yaml
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if include "gridcharge.hasApiTokens" . }}
- name: api-tokens
  secret:
    secretName: {{ include "gridcharge.apiTokensSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "gridcharge.commonVolumeMounts" -}}
- name: topology
  mountPath: /etc/gridcharge/topology.yaml
  subPath: topology.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if include "gridcharge.hasApiTokens" . }}
# a directory, not a subPath: Kubernetes updates it in place when the Secret changes (tokens rotate live)
- name: api-tokens
  mountPath: /etc/gridcharge/api
  readOnly: true
{{- end }}
{{- end }}

{{/* Render-time checks of values that a JSON schema cannot express. */}}
{{- define "gridcharge.validate" -}}
{{- if .Values.ingress.enabled }}
{{- $longest := max (int .Values.ocpp.heartbeatIntervalSeconds) (int .Values.ocpp.websocketPingIntervalSeconds) }}
{{- if le (int .Values.ingress.websocketTimeoutSeconds) $longest }}
{{- fail (printf "ingress.websocketTimeoutSeconds (%d) must be longer than the OCPP heartbeat/ping interval (%d s), or the proxy closes idle station connections" (int .Values.ingress.websocketTimeoutSeconds) $longest) }}
{{- end }}
{{- end }}
{{- if and .Values.kafkaTopics.strimzi.enabled .Values.kafkaTopics.job.enabled }}
{{- fail "kafkaTopics.strimzi.enabled and kafkaTopics.job.enabled are alternatives: enable one" }}
{{- end }}
{{- if gt (int .Values.kafkaTopics.minInsyncReplicas) (int .Values.kafkaTopics.replicationFactor) }}
{{- fail "kafkaTopics.minInsyncReplicas must not exceed kafkaTopics.replicationFactor" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret or both tls.cert and tls.key" }}
{{- end }}
{{- with .Values.apiAuth.oidc }}
{{- if and .issuer (or (not .audience) (not .jwksUrl)) }}
{{- fail "apiAuth.oidc.issuer needs apiAuth.oidc.audience and apiAuth.oidc.jwksUrl" }}
{{- end }}
{{- end }}
{{- if and .Values.gateway.terminateTLS (not .Values.tls.enabled) }}
{{- fail "gateway.terminateTLS needs tls.enabled" }}
{{- end }}
{{- with .Values.gateway.upstream }}
{{- if .url }}
{{- $up := int .securityProfile }}
{{- $stations := 0 }}
{{- if include "gridcharge.hasStationCredentials" $ }}{{ $stations = ternary 2 1 (and $.Values.gateway.terminateTLS true) }}{{ end }}
{{- if lt $up $stations }}
{{- fail (printf "gateway.upstream.securityProfile (%d) is below the stations' security profile (%d): the upstream leg must keep at least the stations' profile" $up $stations) }}
{{- end }}
{{- if and (eq $up 3) (not .clientCertsSecret) }}
{{- fail "gateway.upstream.securityProfile=3 needs gateway.upstream.clientCertsSecret (the stations' client certificates)" }}
{{- end }}
{{- if and (ne $up 3) .clientCertsSecret }}
{{- fail "gateway.upstream.clientCertsSecret is only used with gateway.upstream.securityProfile=3" }}
{{- end }}
{{- if and (eq $up 3) .passwordsSecret }}
{{- fail "gateway.upstream.passwordsSecret is not used with gateway.upstream.securityProfile=3 (no password is sent)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules: Kafka, Redis, DNS. An empty peer list means any address on those ports. */}}
{{- define "gridcharge.egressKafkaRedisDns" -}}
{{- $np := .Values.networkPolicy -}}
# Kafka
- ports:
    {{- range $np.kafka.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# Redis
- ports:
    {{- range $np.redis.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.redis.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# DNS
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Partitions of one topic: its own `partitions`, else by scope. Call with (dict "root" $ "topic" $t). */}}
{{- define "gridcharge.topicPartitions" -}}
{{- $kt := .root.Values.kafkaTopics -}}
{{- if .topic.partitions }}{{ .topic.partitions }}
{{- else if eq .topic.scope "station" }}{{ $kt.stationPartitions }}
{{- else }}{{ $kt.nodePartitions }}
{{- end }}
{{- end }}

{{/* kafka-configs.sh --add-config value for one topic. */}}
{{- define "gridcharge.topicConfig" -}}
{{- $kt := .root.Values.kafkaTopics -}}
{{- if eq .topic.cleanupPolicy "delete" -}}
cleanup.policy=delete,retention.ms={{ int64 .topic.retentionMs }},min.insync.replicas={{ $kt.minInsyncReplicas }}
{{- else -}}
cleanup.policy=compact,min.compaction.lag.ms=0,delete.retention.ms=86400000,segment.ms=3600000,min.insync.replicas={{ $kt.minInsyncReplicas }}
{{- end }}
{{- end }}
