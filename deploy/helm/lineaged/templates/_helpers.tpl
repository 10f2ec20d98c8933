{{/*
Expand the name of the chart.
*/}}
{{- define "lineaged.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
Truncated at 63 characters because some Kubernetes name fields are limited to
that (DNS-1123). If the release name contains the chart name it is used as is.
*/}}
{{- define "lineaged.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "lineaged.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (Deployment selectors are immutable).
*/}}
{{- define "lineaged.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lineaged.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "lineaged.labels" -}}
helm.sh/chart: {{ include "lineaged.chart" . }}
{{ include "lineaged.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lineaged
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The name of the service account to use.
*/}}
{{- define "lineaged.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lineaged.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest when a digest is given, else repository:tag
(tag defaulting to the chart's appVersion).
*/}}
{{- define "lineaged.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Where the SQLite volume is mounted (fixed: docs and NOTES refer to it).
*/}}
{{- define "lineaged.dataDir" -}}
/var/lib/lineaged
{{- end }}

{{/*
The environment variable carrying the Postgres URL (config: database.url_env).
*/}}
{{- define "lineaged.databaseUrlEnv" -}}
LINEAGED_DATABASE_URL
{{- end }}

{{/*
The file the chart writes into the config directory: the sections that must
match the pod (docs/config.md: `listen`, `database`).
*/}}
{{- define "lineaged.chartConfigFile" -}}
# Written by the lineaged Helm chart from listenAddress, containerPort and
# database.*; set these there, not in your own config files.
listen: {{ include "lineaged.listen" . | quote }}
database:
{{- if eq .Values.database.kind "postgres" }}
  url_env: {{ include "lineaged.databaseUrlEnv" . }}
{{- else }}
  url: {{ printf "sqlite://%s/%s" (include "lineaged.dataDir" .) .Values.database.sqlite.filename | quote }}
{{- end }}
  max_connections: {{ int .Values.database.maxConnections }}
{{- end }}

{{/*
lineaged's `listen` value.
*/}}
{{- define "lineaged.listen" -}}
{{- printf "%s:%d" .Values.listenAddress (int .Values.containerPort) }}
{{- end }}

{{/*
The PVC holding the SQLite database.
*/}}
{{- define "lineaged.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "lineaged.fullname" .)) }}
{{- end }}

{{/*
The base URL CI and deploy receivers call back (env LINEAGED_PUBLIC_URL):
publicUrl; else the first ingress host (https when a TLS entry lists it);
else the Service's in-cluster address.
*/}}
{{- define "lineaged.publicUrl" -}}
{{- if .Values.publicUrl }}
{{- .Values.publicUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $scheme := "http" }}
{{- range .Values.ingress.tls }}
{{- if has $host (.hosts | default (list)) }}
{{- $scheme = "https" }}
{{- end }}
{{- end }}
{{- printf "%s://%s" $scheme $host }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d" (include "lineaged.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) }}
{{- end }}
{{- end }}

{{/*
One ConfigMap data entry: (list NAME CONTENT); CONTENT is a map (rendered as
YAML) or a string (written as is). A string starting with whitespace could
not open a block scalar cleanly, so it is quoted instead. The output starts
with a newline: use `| trim | nindent 2`.
*/}}
{{- define "lineaged.configEntry" -}}
{{- $name := index . 0 }}
{{- $content := index . 1 }}
{{- if kindIs "string" $content }}
{{- if regexMatch "^\\s" $content }}
{{ $name | quote }}: {{ $content | quote }}
{{- else }}
{{ $name | quote }}: |
{{ $content | indent 2 }}
{{- end }}
{{- else }}
{{ $name | quote }}: |
{{ toYaml $content | indent 2 }}
{{- end }}
{{- end }}

{{/*
The user's config files as a dict name → content (map or string), from
`config` and `extraConfigFiles`; empty when existingConfigMap is used.
Returned as YAML (include cannot return a dict): use with fromYaml.
*/}}
{{- define "lineaged.userConfigFiles" -}}
{{- $files := dict }}
{{- if not .Values.existingConfigMap }}
{{- range $name, $content := .Values.extraConfigFiles }}
{{- if $content }}
{{- $_ := set $files $name $content }}
{{- end }}
{{- end }}
{{- if .Values.config }}
{{- $_ := set $files .Values.configFileName .Values.config }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
Checks values the JSON schema cannot express; fails the render with a message
that says what to change. Renders nothing.
*/}}
{{- define "lineaged.validate" -}}
{{- $kind := .Values.database.kind }}
{{- if not (has $kind (list "sqlite" "postgres")) }}
{{- fail (printf "database.kind must be sqlite or postgres, not %q" $kind) }}
{{- end }}
{{- if and (eq $kind "sqlite") (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "database.kind=sqlite runs on one node only, but replicaCount=%d: set replicaCount to 1, or use database.kind=postgres for several replicas" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (eq $kind "postgres") (not .Values.database.postgres.existingSecret) }}
{{- fail "database.kind=postgres needs database.postgres.existingSecret: an existing Secret with the postgres:// URL under database.postgres.secretKey (the chart creates no Secret)" }}
{{- end }}
{{- range $name, $_ := .Values.extraConfigFiles }}
{{- if and $.Values.config (eq $name $.Values.configFileName) }}
{{- fail (printf "extraConfigFiles has %q, the name of `config`'s file (configFileName): rename one" $name) }}
{{- end }}
{{- if and $.Values.chartConfigFile (eq $name $.Values.chartConfigFile) }}
{{- fail (printf "extraConfigFiles has %q, the name of the chart's own file (chartConfigFile): rename it" $name) }}
{{- end }}
{{- end }}
{{- if and .Values.chartConfigFile (eq .Values.configFileName .Values.chartConfigFile) }}
{{- fail "configFileName and chartConfigFile must differ" }}
{{- end }}
{{- $files := include "lineaged.userConfigFiles" . | fromYaml }}
{{- if and (not .Values.chartConfigFile) (not $files) (not .Values.existingConfigMap) }}
{{- fail "no lineaged configuration: set config, extraConfigFiles or existingConfigMap (or keep chartConfigFile)" }}
{{- end }}
{{- /* Sections the chart's file owns must not be set again (lineaged: "set it in one file only"). */}}
{{- if .Values.chartConfigFile }}
{{- range $name, $content := $files }}
{{- range $key := list "database" "listen" }}
{{- if or (and (kindIs "map" $content) (hasKey $content $key)) (and (kindIs "string" $content) (regexMatch (printf "(?m)^%s[ \\t]*:" $key) $content)) }}
{{- fail (printf "config file %q sets `%s`, which the chart writes in %q (from database.* and listenAddress/containerPort); lineaged refuses a section set in two files. Remove it, or set chartConfigFile=\"\" to write `listen` and `database` yourself." $name $key $.Values.chartConfigFile) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* Helm reads values as YAML 1.1: a bare `on:` key (notifications[].on) becomes "true". */}}
{{- range $name, $content := $files }}
{{- if kindIs "map" $content }}
{{- range $i, $n := (get $content "notifications" | default (list)) }}
{{- if and (kindIs "map" $n) (hasKey $n "true") }}
{{- fail (printf "config file %q: notifications[%d] has a key \"true\": Helm reads values as YAML 1.1, where a bare `on:` key is the boolean true. Quote it (\"on\": [...]) or pass the config as a string (config: |, or --set-file config=FILE)." $name $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* A metrics token the pod gets must be the one the config protects /metrics with. */}}
{{- if and .Values.metricsToken.existingSecret $files (not .Values.existingConfigMap) }}
{{- $allMaps := true }}
{{- $found := "" }}
{{- range $name, $content := $files }}
{{- if kindIs "map" $content }}
{{- $api := get $content "api" }}
{{- if kindIs "map" $api }}
{{- $found = get $api "metrics_token_env" | default "" | toString }}
{{- if get $api "metrics_token_file" }}
{{- /* The token is read from a file (the same Secret mounted): nothing to compare. */}}
{{- $found = $.Values.metricsToken.env }}
{{- end }}
{{- end }}
{{- else }}
{{- $allMaps = false }}
{{- end }}
{{- end }}
{{- if and $allMaps (ne $found .Values.metricsToken.env) }}
{{- fail (printf "metricsToken.existingSecret is set, so the pod gets env %s, but the config does not protect /metrics with it: add `api: {metrics_token_env: %s}` to config" .Values.metricsToken.env .Values.metricsToken.env) }}
{{- end }}
{{- end }}
{{- end }}
