{{/*
Helpers of the ipledger chart. Object names are fixed (one release per cluster): the agents find
the allocator through the environment variables the kubelet derives from the Service name
ipledger-server, and the pods use host ports.
*/}}

{{/* ipledger.image: registry/repository:tag (or @digest) of one image; dict "root" . "image" .Values.x.image. */}}
{{- define "ipledger.image" -}}
{{- $reg := .image.registry | default .root.Values.image.registry -}}
{{- $ref := .image.repository -}}
{{- if $reg }}{{ $ref = printf "%s/%s" (trimSuffix "/" $reg) $ref }}{{ end -}}
{{- if .image.digest -}}
{{ $ref }}@{{ .image.digest }}
{{- else -}}
{{ $ref }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* ipledger.etcdEndpoints: the server's etcd client URLs, comma-separated. */}}
{{- define "ipledger.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- $urls := list -}}
{{- range .Values.etcd.bundled.serviceIPs }}{{ $urls = append $urls (printf "https://%s:%v" . $.Values.etcd.bundled.clientPort) }}{{ end -}}
{{ join "," $urls }}
{{- else -}}
{{ join "," .Values.etcd.endpoints }}
{{- end -}}
{{- end }}

{{/* ipledger.validate: refuse values that cannot work, with what to do instead. */}}
{{- define "ipledger.validate" -}}
{{- $v := .Values -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" ($v.clusterName | toString)) -}}
{{- fail (printf "clusterName %q must be set to a DNS label (lower-case letters, digits and '-', at most 63): it scopes the etcd keys and tags every ENI ipledger creates" ($v.clusterName | toString)) -}}
{{- end -}}
{{- if not $v.region -}}
{{- fail "region must be set to the cluster's AWS region (e.g. --set region=eu-west-1)" -}}
{{- end -}}
{{- if and $v.etcd.endpoints $v.etcd.bundled.enabled -}}
{{- fail "etcd.endpoints and etcd.bundled.enabled=true exclude each other: give the endpoints of your etcd cluster, or turn on the bundled etcd and leave etcd.endpoints empty" -}}
{{- end -}}
{{- if not (or $v.etcd.endpoints $v.etcd.bundled.enabled) -}}
{{- fail "ipledger needs etcd: set etcd.endpoints to your etcd cluster's client URLs (with Secret etcd.tlsSecretName), or etcd.bundled.enabled=true with etcd.bundled.serviceIPs" -}}
{{- end -}}
{{- range $v.etcd.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.endpoints: %q must be an https:// URL (the client certificate in etcd.tlsSecretName is only used over TLS)" .) -}}
{{- end -}}
{{- end -}}
{{- if $v.etcd.bundled.enabled -}}
{{- $b := $v.etcd.bundled -}}
{{- if not (has (int $b.replicas) (list 3 5)) -}}
{{- fail (printf "etcd.bundled.replicas is %v: an etcd cluster here has 3 or 5 members" $b.replicas) -}}
{{- end -}}
{{- if ne (len $b.serviceIPs) (int $b.replicas) -}}
{{- fail (printf "etcd.bundled.serviceIPs has %d addresses for %v members: give one free address of the cluster's service CIDR per member (aws eks describe-cluster --query cluster.kubernetesNetworkConfig.serviceIpv4Cidr)" (len $b.serviceIPs) $b.replicas) -}}
{{- end -}}
{{- range $b.serviceIPs -}}
{{- if not (regexMatch "^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}$" (. | toString)) -}}
{{- fail (printf "etcd.bundled.serviceIPs: %q is not an IPv4 address" (. | toString)) -}}
{{- end -}}
{{- end -}}
{{- if ne (len (uniq $b.serviceIPs)) (len $b.serviceIPs) -}}
{{- fail "etcd.bundled.serviceIPs: every member needs its own address" -}}
{{- end -}}
{{- if not (has $b.certificates.source (list "cert-manager" "secret")) -}}
{{- fail (printf "etcd.bundled.certificates.source is %q: cert-manager or secret" $b.certificates.source) -}}
{{- end -}}
{{- end -}}
{{- if not (has $v.certificates.source (list "cert-manager" "secret")) -}}
{{- fail (printf "certificates.source is %q: cert-manager (the chart creates the Certificates) or secret (you create Secret certificates.server.secretName)" $v.certificates.source) -}}
{{- end -}}
{{- if not (has $v.log.level (list "debug" "info" "warn" "error")) -}}
{{- fail (printf "log.level is %q: debug, info, warn or error" $v.log.level) -}}
{{- end -}}
{{- if not (has $v.log.format (list "json" "text")) -}}
{{- fail (printf "log.format is %q: json or text" $v.log.format) -}}
{{- end -}}
{{- if $v.server.affinity.podAntiAffinity -}}
{{- fail "server.affinity.podAntiAffinity is the chart's (replicas never share a node); set nodeAffinity or podAffinity only" -}}
{{- end -}}
{{- if not (has $v.agent.cniVersion (list "" "1.0.0" "1.1.0")) -}}
{{- fail (printf "agent.cniVersion is %q: \"\" (the shipped 1.0.0), 1.0.0 or 1.1.0" $v.agent.cniVersion) -}}
{{- end -}}
{{- end }}
