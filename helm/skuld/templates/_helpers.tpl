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

{{/* Labels of the node pods only (not the helm test pod, which shares the
     selector labels): what the NetworkPolicy admits to the peer port. */}}
{{- define "skuld.nodeLabels" -}}
{{ include "skuld.selectorLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{/* Where the node finds its files: secrets and certificates, each from
     a whole Secret or ConfigMap volume (never subPath: a subPath mount is
     not updated when the Secret changes, so a renewal would never arrive). */}}
{{- define "skuld.path.clientTls" -}}/etc/skuld-tls/client{{- end -}}
{{- define "skuld.path.clientCa" -}}/etc/skuld-tls/client-ca{{- end -}}
{{- define "skuld.path.peerTls" -}}/etc/skuld-tls/peer{{- end -}}
{{- define "skuld.path.etcdTls" -}}/etc/skuld-tls/etcd{{- end -}}
{{- define "skuld.path.postgresTls" -}}/etc/skuld-tls/postgres{{- end -}}
{{- define "skuld.path.postgresUrl" -}}/etc/skuld-secrets/postgres{{- end -}}
{{- define "skuld.path.jwks" -}}/etc/skuld-auth{{- end -}}

{{/* The Secret of the peer certificate: named, or the one the chart asks
     cert-manager for. Cluster mode without one cannot start (the peer API
     is mTLS only), so rendering fails here instead. */}}
{{- define "skuld.peerSecretName" -}}
{{- if .Values.tls.peer.secretName -}}
{{- .Values.tls.peer.secretName -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-peer-tls" (include "skuld.fullname" .) | trunc 253 -}}
{{- else if .Values.etcd.endpoints -}}
{{- fail "tls.peer.secretName is required: the nodes' peer API (node-to-node forwarding) is mTLS only in cluster mode. Name a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) whose certificate covers *.<fullname>-peers.<namespace>.svc as server and client, or set tls.certManager.enabled=true to have cert-manager make one (chart README, Security)." -}}
{{- end -}}
{{- end -}}

{{/* The Secret of the client API's certificate. */}}
{{- define "skuld.clientSecretName" -}}
{{- if .Values.tls.client.secretName -}}
{{- .Values.tls.client.secretName -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-client-tls" (include "skuld.fullname" .) | trunc 253 -}}
{{- else -}}
{{- fail "tls.client.enabled needs tls.client.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key), or tls.certManager.enabled=true to have cert-manager make one" -}}
{{- end -}}
{{- end -}}

{{/* The CA the chart creates for the peer certificates, when no issuer is named. */}}
{{- define "skuld.createsPeerCa" -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}true{{- end -}}
{{- end -}}

{{- define "skuld.caName" -}}
{{- printf "%s-ca" (include "skuld.fullname" .) -}}
{{- end -}}

{{/* issuerRef of the peer certificate (YAML). */}}
{{- define "skuld.peerIssuerRef" -}}
{{- if include "skuld.createsPeerCa" . -}}
name: {{ include "skuld.caName" . }}
kind: Issuer
group: cert-manager.io
{{- else -}}
{{- with .Values.tls.certManager.issuerRef -}}
name: {{ .name }}
kind: {{ .kind }}
group: {{ .group }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* issuerRef of the client API's certificate (YAML): its own, else the peer one's. */}}
{{- define "skuld.clientIssuerRef" -}}
{{- if .Values.tls.certManager.clientIssuerRef.name -}}
{{- with .Values.tls.certManager.clientIssuerRef -}}
name: {{ .name }}
kind: {{ .kind }}
group: {{ .group }}
{{- end -}}
{{- else -}}
{{- include "skuld.peerIssuerRef" . -}}
{{- end -}}
{{- end -}}

{{/* The client CA bundle's Secret and key. */}}
{{- define "skuld.clientCaSecretName" -}}
{{- .Values.tls.client.clientCA.secretName -}}
{{- end -}}

{{/* Checks across values that a schema cannot express; each fails with
     what to set. Included by the StatefulSet. */}}
{{- define "skuld.validate" -}}
{{- $ports := list (int .Values.ports.grpc) (int .Values.ports.peer) (int .Values.ports.http) -}}
{{- if ne (len ($ports | uniq)) 3 -}}
{{- fail (printf "ports.grpc, ports.peer and ports.http must differ (%v)" $ports) -}}
{{- end -}}
{{- if and .Values.tls.client.clientCA.enabled (not .Values.tls.client.enabled) -}}
{{- fail "tls.client.clientCA.enabled needs tls.client.enabled: client certificates are asked for in the client API's TLS handshake" -}}
{{- end -}}
{{- if and .Values.tls.client.clientCA.enabled (not .Values.tls.client.clientCA.secretName) -}}
{{- fail "tls.client.clientCA.secretName is required: service certificates need a CA of their own, never the cluster's peer CA (a certificate that CA signs for a member's host is a node's credential)" -}}
{{- end -}}
{{- if and .Values.tls.client.requireClientCert (not .Values.tls.client.clientCA.enabled) -}}
{{- fail "tls.client.requireClientCert needs tls.client.clientCA.enabled (the CA client certificates must chain to)" -}}
{{- end -}}
{{- if and .Values.auth.identities (not .Values.tls.client.clientCA.enabled) -}}
{{- fail "auth.identities need tls.client.clientCA.enabled: identities are read from client certificates that CA verifies" -}}
{{- end -}}
{{- if and .Values.auth.jwks.secretName .Values.auth.jwks.configMapName -}}
{{- fail "auth.jwks: set secretName or configMapName, not both" -}}
{{- end -}}
{{- range .Values.etcd.endpoints -}}
{{- if and $.Values.etcd.tls.enabled (not (hasPrefix "https://" .)) -}}
{{- fail (printf "etcd.tls.enabled needs https:// endpoints, not %s" .) -}}
{{- end -}}
{{- if and (not $.Values.etcd.tls.enabled) (hasPrefix "https://" .) -}}
{{- fail (printf "etcd endpoint %s is https://: set etcd.tls.enabled and etcd.tls.secretName (etcd's CA)" .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.tls.secretName) -}}
{{- fail "etcd.tls.enabled needs etcd.tls.secretName (a Secret with ca.crt, and tls.crt/tls.key for a client certificate)" -}}
{{- end -}}
{{- if and .Values.postgres.tls.enabled (not .Values.postgres.tls.secretName) -}}
{{- fail "postgres.tls.enabled needs postgres.tls.secretName (a Secret with ca.crt, and tls.crt/tls.key for a client certificate)" -}}
{{- end -}}
{{- if and .Values.limits.tenantBurst (not .Values.limits.tenantRequestsPerSec) -}}
{{- fail "limits.tenantBurst needs limits.tenantRequestsPerSec (0 there means no quota)" -}}
{{- end -}}
{{- end -}}
