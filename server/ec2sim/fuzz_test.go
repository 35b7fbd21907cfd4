package ec2sim

import (
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// FuzzQuery feeds the simulator's EC2 Query API handler arbitrary form bodies, as the
// gateway's (or a broken client's) requests would arrive: form decoding, the flattening of
// EC2's 1-indexed lists, filters and tags into the request, and the action. It never panics;
// every answer is 200 with the action's document or an EC2 error document with a code (never
// InternalError); and the account stays consistent: no address has two owners and every
// subnet's counts add up.
func FuzzQuery(f *testing.F) {
	sim := fuzzSim(f)
	st := sim.Snapshot()
	subnet, inst := st.Subnets[0].ID, st.Instances[0]
	for _, body := range []string{
		"Action=DescribeSubnets&Version=2016-11-15",
		"Action=DescribeSubnets&SubnetId.1=" + subnet,
		"Action=DescribeNetworkInterfaces&Filter.1.Name=subnet-id&Filter.1.Value.1=" + subnet + "&Filter.2.Name=tag:ipledger.io/cluster&Filter.2.Value.1=*&MaxResults=5",
		"Action=DescribeNetworkInterfaces&NetworkInterfaceId.1=" + inst.PrimaryENI + "&NextToken=abc",
		"Action=DescribeInstances&InstanceId.1=" + inst.ID + "&InstanceId.3=i-0",
		"Action=DescribeInstanceTypes&InstanceType.1=m5.large",
		"Action=AssignPrivateIpAddresses&NetworkInterfaceId=" + inst.PrimaryENI + "&SecondaryPrivateIpAddressCount=2",
		"Action=AssignPrivateIpAddresses&NetworkInterfaceId=" + inst.PrimaryENI + "&PrivateIpAddress.1=192.168.1.77&PrivateIpAddress.2=192.168.1.77",
		"Action=AssignPrivateIpAddresses&NetworkInterfaceId=" + inst.PrimaryENI + "&Ipv4PrefixCount=1",
		"Action=UnassignPrivateIpAddresses&NetworkInterfaceId=" + inst.PrimaryENI + "&PrivateIpAddress.1=192.168.1.77",
		"Action=CreateNetworkInterface&SubnetId=" + subnet + "&SecondaryPrivateIpAddressCount=3&ClientToken=t1&TagSpecification.1.ResourceType=network-interface&TagSpecification.1.Tag.1.Key=ipledger.io/cluster&TagSpecification.1.Tag.1.Value=dev",
		"Action=CreateNetworkInterface&SubnetId=" + subnet + "&Ipv4Prefix.1.Ipv4Prefix=192.168.0.16/28",
		"Action=AttachNetworkInterface&NetworkInterfaceId=eni-0&InstanceId=" + inst.ID + "&DeviceIndex=1",
		"Action=ModifyNetworkInterfaceAttribute&NetworkInterfaceId=" + inst.PrimaryENI + "&Attachment.AttachmentId=x&Attachment.DeleteOnTermination=true",
		"Action=CreateTags&ResourceId.1=" + inst.PrimaryENI + "&Tag.1.Key=a&Tag.1.Value=b&Tag.2.Key=",
		"Action=DeleteTags&ResourceId.1=" + inst.PrimaryENI + "&Tag.1.Key=a",
		"Action=RunInstances&ImageId=ami-1&InstanceType=m5.large&MinCount=1&MaxCount=2&SubnetId=" + subnet,
		"Action=TerminateInstances&InstanceId.1=" + inst.ID,
		"Action=CreateSubnetCidrReservation&SubnetId=" + subnet + "&Cidr=192.168.0.0/28&ReservationType=prefix",
		"Action=DescribeSubnets&DryRun=true",
		"Action=DescribeSubnets&DryRun=maybe",
		"Action=DescribeNetworkInterfaces&Filter.0.Name=x&Filter.99999999999999999999.Value.1=y&Filter.1.Value.1=z",
		"Action=CreateTags&ResourceId.1=x&Tag.-1.Key=a&Tag.1.Key=a",
		"Action=%zz", "Action=Nope", "", "&&&===",
	} {
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if len(body) > 8192 {
			t.Skip("long bodies add nothing but time")
		}
		sim := fuzzSim(t)
		if form, err := url.ParseQuery(body); err == nil {
			checkFlattening(t, params(form))
		}
		req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		sim.serveQuery(rec, req)
		if rec.Code == http.StatusOK {
			var doc struct {
				XMLName   xml.Name
				RequestID string `xml:"requestId"`
			}
			if err := xml.Unmarshal(rec.Body.Bytes(), &doc); err != nil || !strings.HasSuffix(doc.XMLName.Local, "Response") || doc.RequestID == "" {
				t.Fatalf("200 with a body that is not an action's response (%v): %s", err, rec.Body.String())
			}
		} else {
			var er xmlErrorResponse
			if err := xml.Unmarshal(rec.Body.Bytes(), &er); err != nil || len(er.Errors) != 1 || er.Errors[0].Code == "" {
				t.Fatalf("status %d with a body that is not an EC2 error (%v): %s", rec.Code, err, rec.Body.String())
			}
			if er.Errors[0].Code == "InternalError" {
				t.Fatalf("InternalError for %q: %s", body, er.Errors[0].Message)
			}
		}
		checkAccount(t, sim.Snapshot())
	})
}

// fuzzSim is a fresh simulator of the default scenario, throttling off, without HTTP.
func fuzzSim(t testing.TB) *Sim {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Throttle = false
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkFlattening checks the list helpers on every prefix the form uses.
func checkFlattening(t *testing.T, p params) {
	t.Helper()
	prefixes := map[string]bool{}
	for k := range p {
		if i := strings.IndexByte(k, '.'); i > 0 {
			prefixes[k[:i]] = true
		}
	}
	for pre := range prefixes {
		idx := p.indices(pre)
		if !sort.IntsAreSorted(idx) {
			t.Fatalf("indices(%q) = %v: not sorted", pre, idx)
		}
		for i, n := range idx {
			if n < 1 || i > 0 && idx[i-1] == n {
				t.Fatalf("indices(%q) = %v: not distinct positive indices", pre, idx)
			}
			if !hasKeyUnder(p, pre+"."+strconv.Itoa(n)) {
				t.Fatalf("indices(%q) invented %d", pre, n)
			}
		}
		if l := p.list(pre); len(l) > len(idx) {
			t.Fatalf("list(%q) has %d values for %d indices", pre, len(l), len(idx))
		}
	}
	if fs, aerr := p.filters(); aerr == nil {
		for _, fl := range fs {
			if fl.name == "" || len(fl.values) == 0 {
				t.Fatalf("filter without a name or values: %+v", fl)
			}
		}
	}
	if tags, aerr := p.tags("Tag"); aerr == nil {
		for _, kv := range tags {
			if kv.key == "" {
				t.Fatal("a tag without a key")
			}
		}
	}
}

func hasKeyUnder(p params, pre string) bool {
	for k := range p {
		if k == pre || strings.HasPrefix(k, pre+".") {
			return true
		}
	}
	return false
}

// checkAccount: no address has two owners; every subnet's counts add up.
func checkAccount(t *testing.T, st State) {
	t.Helper()
	owner := map[netip.Addr]string{}
	inUse := map[string]int{}
	take := func(a netip.Addr, who, subnet string) {
		if prev, ok := owner[a]; ok {
			t.Fatalf("address %s owned by %s and %s", a, prev, who)
		}
		owner[a] = who
		inUse[subnet]++
	}
	for _, e := range st.ENIs {
		for _, s := range append([]string{e.PrimaryIP}, e.SecondaryIPs...) {
			a, err := netip.ParseAddr(s)
			if err != nil {
				t.Fatalf("ENI %s holds %q", e.ID, s)
			}
			take(a, e.ID, e.SubnetID)
		}
		for _, s := range e.Prefixes {
			pr, err := netip.ParsePrefix(s)
			if err != nil || pr.Bits() != 28 || pr.Masked() != pr {
				t.Fatalf("ENI %s holds prefix %q", e.ID, s)
			}
			for a, i := pr.Addr(), 0; i < 16; a, i = a.Next(), i+1 {
				take(a, e.ID, e.SubnetID)
			}
		}
	}
	for _, sn := range st.Subnets {
		if sn.InUse != inUse[sn.ID] || sn.Available != sn.Size-5-sn.InUse || sn.Available < 0 {
			t.Fatalf("subnet %s: size %d, in use %d (ENIs hold %d), available %d", sn.ID, sn.Size, sn.InUse, inUse[sn.ID], sn.Available)
		}
	}
}
