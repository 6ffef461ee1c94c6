{{/* The chart name, or nameOverride. */}}
{{- define "oauthapp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of namespaced objects: <release>-<chart>, or <release> when it contains the chart name. */}}
{{- define "oauthapp-operator.fullname" -}}
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

{{/*
The name of cluster-scoped objects (ClusterRoles and their bindings): the full name plus the
release namespace, so that releases of the same name in different namespaces (one operator per
team, with watchNamespaces) do not fight over them.
*/}}
{{- define "oauthapp-operator.clusterName" -}}
{{- printf "%s-%s" (include "oauthapp-operator.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "oauthapp-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "oauthapp-operator.labels" -}}
helm.sh/chart: {{ include "oauthapp-operator.chart" . }}
{{ include "oauthapp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oauthapp-operator
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "oauthapp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oauthapp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "oauthapp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oauthapp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "oauthapp-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the API's certificate, when TLS is on; fails when none is given. */}}
{{- define "oauthapp-operator.tlsSecretName" -}}
{{- $tls := .Values.api.tls }}
{{- if $tls.certManager.enabled }}
{{- default (printf "%s-api-tls" (include "oauthapp-operator.fullname" .)) $tls.secretName }}
{{- else }}
{{- required "api.tls.secretName is required when api.tls.enabled is true (or set api.tls.certManager.enabled to have cert-manager create it)" $tls.secretName }}
{{- end }}
{{- end }}

{{/* Fails early on combinations that cannot work. */}}
{{- define "oauthapp-operator.validate" -}}
{{- if and .Values.api.tls.certManager.enabled (not .Values.api.tls.enabled) }}
{{- fail "api.tls.certManager.enabled needs api.tls.enabled: true (the certificate is for the REST API's HTTPS)" }}
{{- end }}
{{- if and .Values.api.tls.certManager.enabled (not .Values.api.tls.certManager.issuerRef.name) }}
{{- fail "api.tls.certManager.issuerRef.name is required when api.tls.certManager.enabled is true" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: true (otherwise every replica runs the controller)" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int .Values.replicaCount)) }}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no node could ever be drained" }}
{{- end }}
{{- /* The hash workers' memory counted against the memory limit (in Ki, Mi, Gi or bytes; other units are not checked): at most half of it, the rest is the caches'. */}}
{{- $limit := toString (dig "limits" "memory" "" (.Values.resources | default dict)) }}
{{- $limitKiB := 0 }}
{{- if regexMatch "^[0-9]+Ki$" $limit }}{{ $limitKiB = int64 (trimSuffix "Ki" $limit) }}
{{- else if regexMatch "^[0-9]+Mi$" $limit }}{{ $limitKiB = mul (int64 (trimSuffix "Mi" $limit)) 1024 }}
{{- else if regexMatch "^[0-9]+Gi$" $limit }}{{ $limitKiB = mul (int64 (trimSuffix "Gi" $limit)) 1048576 }}
{{- else if regexMatch "^[0-9]+$" $limit }}{{ $limitKiB = div (int64 $limit) 1024 }}
{{- end }}
{{- $hashKiB := int64 .Values.hashing.memoryKiB }}
{{- range .Values.hashing.acceptPrevious }}{{ if gt (int64 .memoryKiB) $hashKiB }}{{ $hashKiB = int64 .memoryKiB }}{{ end }}{{ end }}
{{- $workersKiB := mul (int64 .Values.hashing.workers) $hashKiB }}
{{- if and (gt $limitKiB 0) (gt (mul $workersKiB 2) $limitKiB) }}
{{- fail (printf "hashing.workers × memoryKiB (%d × %d KiB = %d MiB) is more than half of resources.limits.memory (%s): the caches need the rest (see the chart README's memory table); raise the limit or lower hashing.workers" (int64 .Values.hashing.workers) $hashKiB (div $workersKiB 1024) $limit) }}
{{- end }}
{{- end }}

{{/*
The operator's command line: the chart's flags, then extraArgs. A flag given in extraArgs
(`--name=value`, `--name value` or `--name`) replaces the chart's own, since the operator
refuses a flag given twice.
*/}}
{{- define "oauthapp-operator.args" -}}
{{- $v := .Values }}
{{- $args := list "run" (printf "--api-addr=0.0.0.0:%d" (int $v.api.port)) (printf "--admin-addr=0.0.0.0:%d" (int $v.metrics.port)) }}
{{- with $v.watchNamespaces }}
{{- $args = append $args (printf "--watch-namespaces=%s" (join "," .)) }}
{{- end }}
{{- if $v.leaderElection.enabled }}
{{- $args = concat $args (list "--leader-elect" (printf "--lease-name=%s" $v.leaderElection.leaseName) (printf "--lease-namespace=%s" .Release.Namespace) (printf "--lease-duration=%s" $v.leaderElection.leaseDuration)) }}
{{- end }}
{{- $args = concat $args (list
  (printf "--resync-interval=%s" $v.controller.resyncInterval)
  (printf "--concurrency=%d" (int64 $v.controller.concurrency))
  (printf "--max-scheduled-rotations-per-second=%v" $v.controller.maxScheduledRotationsPerSecond)
  (printf "--max-repairs-per-second=%v" $v.controller.maxRepairsPerSecond)
  (printf "--repair-brake-share=%v" $v.controller.repairBrake.share)
  (printf "--repair-brake-min=%d" (int64 $v.controller.repairBrake.min))
  (printf "--repair-brake-window=%s" $v.controller.repairBrake.window)
  (printf "--hash-memory-kib=%d" (int64 $v.hashing.memoryKiB))
  (printf "--hash-iterations=%d" (int64 $v.hashing.iterations))
  (printf "--hash-parallelism=%d" (int64 $v.hashing.parallelism))
  (printf "--hash-workers=%d" (int64 $v.hashing.workers))
  (printf "--hash-pool=%d" (int64 $v.hashing.pool)) ) }}
{{- with $v.hashing.acceptPrevious }}
{{- $accepted := list }}
{{- range . }}
{{- $accepted = append $accepted (printf "m=%d,t=%d,p=%d" (int64 .memoryKiB) (int64 .iterations) (int64 .parallelism)) }}
{{- end }}
{{- $args = append $args (printf "--hash-accept-params=%s" (join ";" $accepted)) }}
{{- end }}
{{- if $v.api.tls.enabled }}
{{- $args = concat $args (list "--tls-cert-file=/etc/oauthapp-operator/tls/tls.crt" "--tls-key-file=/etc/oauthapp-operator/tls/tls.key") }}
{{- end }}
{{- $args = concat $args (list
  (printf "--rate-limit-per-caller=%v" $v.api.rateLimit.perCaller)
  (printf "--rate-limit-per-caller-burst=%d" (int64 $v.api.rateLimit.perCallerBurst))
  (printf "--rate-limit-global=%v" $v.api.rateLimit.global)
  (printf "--rate-limit-global-burst=%d" (int64 $v.api.rateLimit.globalBurst))
  (printf "--auth-cache-ttl=%s" $v.api.authCacheTTL)
  (printf "--api-request-timeout=%s" $v.api.requestTimeout)
  (printf "--header-read-timeout=%s" $v.connections.headerReadTimeout)
  (printf "--idle-timeout=%s" $v.connections.idleTimeout)
  (printf "--max-connections=%d" (int64 $v.connections.maxConnections))
  (printf "--log-format=%s" $v.logFormat)
  (printf "--shutdown-timeout=%s" $v.shutdownTimeout) ) }}
{{- with $v.api.audiences }}
{{- $args = append $args (printf "--api-audiences=%s" (join "," .)) }}
{{- end }}
{{- $overridden := dict }}
{{- range $v.extraArgs }}
{{- if hasPrefix "--" . }}
{{- $_ := set $overridden (regexReplaceAll "=.*$" . "") true }}
{{- end }}
{{- end }}
{{- range $args }}
{{- if not (hasKey $overridden (regexReplaceAll "=.*$" . "")) }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- range $v.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The Secret (release namespace) holding the key that signs rotation records. */}}
{{- define "oauthapp-operator.recordKeySecret" -}}
{{- printf "%s-record-key" (include "oauthapp-operator.fullname" .) | trunc 253 -}}
{{- end }}
