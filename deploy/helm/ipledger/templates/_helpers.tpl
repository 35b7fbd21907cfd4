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

{{/* ipledger.issuerSecret: the Secret of the CA that signs node certificates. */}}
{{- define "ipledger.issuerSecret" -}}
{{- .Values.attestation.issuerSecretName | default .Values.certificates.certManager.issuer.caSecretName -}}
{{- end }}

{{/* ipledger.serverCAVolume: the volume source of the CA bundle agents verify the server with. */}}
{{- define "ipledger.serverCAVolume" -}}
{{- $ca := .Values.agent.serverCA -}}
{{- if $ca.secretName -}}
secret:
  secretName: {{ $ca.secretName }}
  items:
    - key: ca.crt
      path: ca.crt
{{- else -}}
configMap:
  name: {{ $ca.configMapName | default "ipledger-server-ca" }}
  items:
    - key: ca.crt
      path: ca.crt
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
{{- if not (has $v.agent.identity (list "attest" "files")) -}}
{{- fail (printf "agent.identity is %q: attest (agents prove their EC2 instance and get certificates from the server) or files (certificates in agent.pkiHostPath from your own PKI)" ($v.agent.identity | toString)) -}}
{{- end -}}
{{- if eq $v.agent.identity "attest" -}}
{{- if not $v.attestation.enabled -}}
{{- fail "agent.identity=attest needs attestation.enabled=true: the server issues the agents' certificates (or set agent.identity=files for certificates from your own PKI)" -}}
{{- end -}}
{{- $ca := $v.agent.serverCA -}}
{{- $given := 0 -}}
{{- range (list $ca.pem $ca.configMapName $ca.secretName) }}{{ if . }}{{ $given = add1 $given }}{{ end }}{{ end -}}
{{- if ne (int $given) 1 -}}
{{- fail (printf "agent.identity=attest: the agents verify the server with a CA bundle; give exactly one of agent.serverCA.pem (the CA certificate, e.g. kubectl -n %s get secret %s -o jsonpath='{.data.tls\\.crt}' | base64 -d), agent.serverCA.configMapName or agent.serverCA.secretName (key ca.crt)" .Release.Namespace (include "ipledger.issuerSecret" .)) -}}
{{- end -}}
{{- if and $ca.pem (not (contains "-----BEGIN CERTIFICATE-----" $ca.pem)) -}}
{{- fail "agent.serverCA.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)" -}}
{{- end -}}
{{- if and $ca.pem (contains "PRIVATE KEY" $ca.pem) -}}
{{- fail "agent.serverCA.pem holds a private key: give the CA certificate only (it is mounted on every node)" -}}
{{- end -}}
{{- if has $ca.secretName (list $v.certificates.server.secretName (include "ipledger.issuerSecret" .) $v.certificates.certManager.issuer.caSecretName $v.certificates.certManager.admin.secretName) -}}
{{- fail (printf "agent.serverCA.secretName %q holds a private key (it is the server's, the admin's or the CA's Secret): every node's kubelet would fetch it; give a Secret or ConfigMap with the CA certificate alone, or agent.serverCA.pem" $ca.secretName) -}}
{{- end -}}
{{- end -}}
{{- if and $v.attestation.enabled (not $v.attestation.issuerSecretName) (not (and (eq $v.certificates.source "cert-manager") $v.certificates.certManager.issuer.create)) -}}
{{- fail "attestation.enabled: set attestation.issuerSecretName to the Secret (tls.crt, tls.key) of the CA that signs node certificates, the CA of the server's client CA bundle (certificates.server.secretName's ca.crt); or attestation.enabled=false with agent.identity=files" -}}
{{- end -}}
{{- if not (has $v.agent.cniVersion (list "" "1.0.0" "1.1.0")) -}}
{{- fail (printf "agent.cniVersion is %q: \"\" (the shipped 1.0.0), 1.0.0 or 1.1.0" $v.agent.cniVersion) -}}
{{- end -}}
{{- end }}
