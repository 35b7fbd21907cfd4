package ec2sim

import (
	"crypto/rand"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	imdsTokenPath      = "/latest/api/token"
	imdsTokenHeader    = "X-Aws-Ec2-Metadata-Token"
	imdsTokenTTLHeader = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	imdsMaxTTL         = 21600
)

// imdsHandler is one instance's metadata service with the IMDSv2 token flow: PUT
// /latest/api/token with a TTL header returns a token; every GET needs a valid token (401
// otherwise).
type imdsHandler struct {
	sim        *Sim
	instanceID string

	mu     sync.Mutex
	tokens map[string]time.Time // token -> expiry (wall clock)
}

func newIMDSHandler(sim *Sim, id string) *imdsHandler {
	return &imdsHandler{sim: sim, instanceID: id, tokens: map[string]time.Time{}}
}

func (h *imdsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == imdsTokenPath {
		h.serveToken(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.validToken(r.Header.Get(imdsTokenHeader)) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	files, ok := h.sim.imdsFiles(h.instanceID)
	if !ok {
		http.Error(w, "Not Found", http.StatusNotFound)
		return
	}
	body, ok := imdsLookup(files, r.URL.Path)
	if !ok {
		http.Error(w, "Not Found", http.StatusNotFound)
		return
	}
	if strings.HasSuffix(r.URL.Path, "/instance-identity/document") {
		w.Header().Set("Content-Type", "application/json")
	} else {
		w.Header().Set("Content-Type", "text/plain")
	}
	_, _ = w.Write([]byte(body))
}

func (h *imdsHandler) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(imdsTokenTTLHeader))
	if err != nil || ttl < 1 || ttl > imdsMaxTTL {
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	tok := rand.Text()
	now := time.Now()
	h.mu.Lock()
	for t, exp := range h.tokens {
		if now.After(exp) {
			delete(h.tokens, t)
		}
	}
	h.tokens[tok] = now.Add(time.Duration(ttl) * time.Second)
	h.mu.Unlock()
	w.Header().Set(imdsTokenTTLHeader, strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(tok))
}

func (h *imdsHandler) validToken(tok string) bool {
	if tok == "" {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	exp, ok := h.tokens[tok]
	return ok && time.Now().Before(exp)
}

type identityDocument struct {
	AccountID               string    `json:"accountId"`
	Architecture            string    `json:"architecture"`
	AvailabilityZone        string    `json:"availabilityZone"`
	BillingProducts         []string  `json:"billingProducts"`
	DevpayProductCodes      []string  `json:"devpayProductCodes"`
	MarketplaceProductCodes []string  `json:"marketplaceProductCodes"`
	ImageID                 string    `json:"imageId"`
	InstanceID              string    `json:"instanceId"`
	InstanceType            string    `json:"instanceType"`
	KernelID                *string   `json:"kernelId"`
	PendingTime             time.Time `json:"pendingTime"`
	PrivateIP               string    `json:"privateIp"`
	RamdiskID               *string   `json:"ramdiskId"`
	Region                  string    `json:"region"`
	Version                 string    `json:"version"`
}

// imdsFiles renders every metadata leaf of a running instance, keyed by path without the
// leading slash ("latest/meta-data/instance-id").
func (s *Sim) imdsFiles(id string) (map[string]string, bool) {
	s.rlock()
	defer s.mu.RUnlock()
	now := s.now()
	in, ok := s.instances[id]
	if !ok || in.state != "running" {
		return nil, false
	}
	md := "latest/meta-data/"
	f := map[string]string{}
	primary := in.primaryENI()
	host := s.privateDNS(in.privateIP)
	f[md+"ami-id"] = "ami-0ec2s1m0000000000"
	f[md+"ami-launch-index"] = strconv.Itoa(in.launchIndex)
	f[md+"instance-id"] = in.id
	f[md+"instance-type"] = in.itype.Name
	f[md+"local-ipv4"] = ipString(in.privateIP)
	f[md+"local-hostname"] = host
	f[md+"hostname"] = host
	f[md+"reservation-id"] = in.reservationID
	f[md+"security-groups"] = "default"
	f[md+"services/domain"] = "amazonaws.com"
	f[md+"placement/availability-zone"] = in.sn.az
	f[md+"placement/availability-zone-id"] = in.sn.azID
	f[md+"placement/region"] = s.region
	if primary != nil {
		f[md+"mac"] = primary.mac
	}
	for _, e := range in.enis {
		if e.att.statusAt(now) == "attaching" {
			continue // the device is not visible to the instance yet
		}
		p := md + "network/interfaces/macs/" + e.mac + "/"
		f[p+"device-number"] = strconv.Itoa(e.att.deviceIndex)
		f[p+"network-card"] = strconv.Itoa(e.att.cardIndex)
		f[p+"interface-id"] = e.id
		f[p+"mac"] = e.mac
		f[p+"owner-id"] = s.accountID
		f[p+"local-hostname"] = s.privateDNS(e.primary)
		f[p+"subnet-id"] = e.sn.id
		f[p+"subnet-ipv4-cidr-block"] = e.sn.cidr.String()
		f[p+"vpc-id"] = e.sn.vpcID
		f[p+"vpc-ipv4-cidr-block"] = s.vpcCIDRs[0].String()
		f[p+"vpc-ipv4-cidr-blocks"] = strings.Join(prefixStrings(s.vpcCIDRs), "\n")
		f[p+"security-group-ids"] = strings.Join(e.groups, "\n")
		ips := []string{ipString(e.primary)}
		for _, a := range e.secondaries {
			ips = append(ips, ipString(a))
		}
		f[p+"local-ipv4s"] = strings.Join(ips, "\n")
		if len(e.prefixes) > 0 {
			var ps []string
			for _, b := range e.prefixes {
				ps = append(ps, prefixString(b))
			}
			f[p+"ipv4-prefix"] = strings.Join(ps, "\n")
		}
	}
	doc, _ := json.MarshalIndent(identityDocument{
		AccountID: s.accountID, Architecture: "x86_64", AvailabilityZone: in.sn.az,
		ImageID: "ami-0ec2s1m0000000000", InstanceID: in.id, InstanceType: in.itype.Name,
		PendingTime: in.launchTime.UTC().Truncate(time.Second), PrivateIP: ipString(in.privateIP),
		Region: s.region, Version: "2017-09-30",
	}, "", "  ")
	f["latest/dynamic/instance-identity/document"] = string(doc)
	if g, err := s.signer(); err != nil {
		s.log.Error("instance identity signatures unavailable", "err", err)
	} else if p7, sig, err := g.signed(doc); err == nil {
		f["latest/dynamic/instance-identity/rsa2048"] = p7
		f["latest/dynamic/instance-identity/signature"] = sig
	}
	return f, true
}

// imdsLookup returns a leaf's value, or a directory listing (one entry per line, directories
// with a trailing slash) like IMDS.
func imdsLookup(files map[string]string, path string) (string, bool) {
	p := strings.Trim(path, "/")
	if v, ok := files[p]; ok && !strings.HasSuffix(path, "/") {
		return v, true
	}
	prefix := p + "/"
	children := map[string]bool{}
	for k := range files {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			children[rest[:i+1]] = true
		} else {
			children[rest] = true
		}
	}
	if len(children) == 0 {
		return "", false
	}
	list := make([]string, 0, len(children))
	for c := range children {
		list = append(list, c)
	}
	sort.Strings(list)
	return strings.Join(list, "\n"), true
}
