{{/*
Shared pieces of the ray-app chart. Pod security is defined once here and is what
tests/infra checks against the Pod Security "restricted" profile: non-root uid 1000 (the Ray
image's `ray` user), RuntimeDefault seccomp, no privilege escalation, every capability dropped
and a read-only root filesystem with emptyDirs where Ray and MLflow write.
*/}}

{{/* Labels on every object's metadata. Call with (dict "root" $ "component" "...") */}}
{{- define "ray-app.labels" -}}
app.kubernetes.io/name: ray-app
app.kubernetes.io/part-of: ray-app
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* repository:tag, or repository:tag@digest once CI has written image.digest. */}}
{{- define "ray-app.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $image.digest) -}}
{{- fail (printf "image.digest %q is not sha256:<64 hex digits>" $image.digest) -}}
{{- end -}}
{{- printf "%s:%s@%s" $image.repository $image.tag $image.digest -}}
{{- else if $image.requireDigest -}}
{{- fail "image.digest is empty: this environment runs only an image pinned by digest (CI writes it into values.yaml)" -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $image.tag -}}
{{- end -}}
{{- end }}

{{/*
serveConfigV2: files/serve_config.yaml (the repository's serve_config.yaml, copied by `make
manifests`) with the one value a pod needs otherwise: http_options.host, the pod's address
(serve.httpHost, 0.0.0.0) instead of the local 127.0.0.1. Re-serialised by Helm (sorted keys,
no comments); everything else is the file's.
*/}}
{{- define "ray-app.serveConfig" -}}
{{- $config := .Files.Get "files/serve_config.yaml" | fromYaml -}}
{{- if hasKey $config "Error" -}}
{{- fail (printf "files/serve_config.yaml is not YAML: %s" $config.Error) -}}
{{- end -}}
{{- $http := $config.http_options | default dict -}}
{{- $_ := set $http "host" .Values.serve.httpHost -}}
{{- $_ := set $config "http_options" $http -}}
{{- toYaml $config -}}
{{- end }}

{{/* The MLflow tracking server's URL, https when mlflow.tls.enabled. */}}
{{- define "ray-app.mlflowUrl" -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" .Values.mlflow.tls.enabled) .Values.mlflow.name .Values.namespace .Values.mlflow.port -}}
{{- end }}

{{- define "ray-app.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "ray-app.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The writable places of a Ray container on a read-only root: Ray's session and logs (/tmp/ray,
shared with the autoscaler sidecar), other temporary files (/tmp) and caches (~/.cache).
*/}}
{{- define "ray-app.rayVolumeMounts" -}}
- name: secrets
  mountPath: {{ .Values.secrets.mountPath }}
  readOnly: true
- name: ray-logs
  mountPath: /tmp/ray
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/ray/.cache
{{- end }}

{{- define "ray-app.rayVolumes" -}}
- name: secrets
  secret:
    secretName: {{ .Values.secrets.secretName }}
    # readable by the pods' group (fsGroup), absent: an empty folder, so a pod that needs a
    # secret fails at start naming it, and one that needs none (a data job) runs
    defaultMode: 0440
    optional: true
- name: ray-logs
  emptyDir: {}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- end }}

{{/*
autoscalerOptions of every Ray cluster (autoscaler v2, in-tree). Call with the root context.
*/}}
{{- define "ray-app.autoscalerOptions" -}}
version: v2
upscalingMode: Default
idleTimeoutSeconds: {{ .Values.autoscaler.idleTimeoutSeconds }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
resources:
  {{- toYaml .Values.autoscaler.resources | nindent 2 }}
securityContext:
  {{- include "ray-app.containerSecurityContext" . | nindent 2 }}
{{- end }}

{{/*
A Ray pod template (head or worker). Call with a dict:
  root         the chart's root context
  instance     the Ray custom resource's name (app.kubernetes.io/instance, network policies)
  component    ray-head or ray-worker-cpu
  container    ray-head or ray-worker
  ports        list of port names (see ray-app.rayPorts)
  resources    requests and limits
  env          extra env entries (list), optional
  settings     true: mount ConfigMap ray-app-config-file at /home/ray/app/cluster/configs
*/}}
{{- define "ray-app.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $numbers := dict "gcs-server" 6379 "dashboard" 8265 "client" 10001 "serve" 8000 "metrics" 8080 -}}
metadata:
  labels:
    app.kubernetes.io/name: ray-app
    app.kubernetes.io/instance: {{ .instance }}
    app.kubernetes.io/component: {{ .component }}
spec:
  serviceAccountName: {{ $root.Values.serviceAccountName }}
  securityContext:
    {{- include "ray-app.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "ray-app.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- range .ports }}
        - containerPort: {{ index $numbers . }}
          name: {{ . }}
        {{- end }}
      {{- $env := .env | default list }}
      {{- /* ray-app's secrets: the mounted Secret, read with the file backend (ray_app/core/secrets.py) */}}
      {{- $env = append $env (dict "name" "RAY_APP_SECRETS__BACKEND" "value" "file") }}
      {{- $env = append $env (dict "name" "RAY_APP_SECRETS__DIR" "value" $root.Values.secrets.mountPath) }}
      {{- if $root.Values.mlflow.tls.enabled }}
      {{- /* MLflow's client trusts the tracking server's CA (ca.crt of its certificate's Secret) */}}
      {{- $env = append $env (dict "name" "MLFLOW_TRACKING_SERVER_CERT_PATH" "value" "/etc/ray-app/mlflow-ca/ca.crt") }}
      {{- end }}
      {{- with $env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ $root.Values.configMapName }}
        - secretRef:
            name: {{ $root.Values.envSecretName }}
            optional: true
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- include "ray-app.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "ray-app.rayVolumeMounts" $root | nindent 8 }}
        {{- if .settings }}
        - name: settings
          mountPath: /home/ray/app/cluster/configs
          readOnly: true
        {{- end }}
        {{- if $root.Values.mlflow.tls.enabled }}
        - name: mlflow-ca
          mountPath: /etc/ray-app/mlflow-ca
          readOnly: true
        {{- end }}
  volumes:
    {{- include "ray-app.rayVolumes" $root | nindent 4 }}
    {{- if .settings }}
    - name: settings
      configMap:
        name: ray-app-config-file
    {{- end }}
    {{- if $root.Values.mlflow.tls.enabled }}
    - name: mlflow-ca
      secret:
        secretName: {{ $root.Values.mlflow.tls.secretName }}
        items:
          - key: ca.crt
            path: ca.crt
    {{- end }}
{{- end }}
