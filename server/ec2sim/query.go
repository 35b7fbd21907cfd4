package ec2sim

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	apiVersion = "2016-11-15"
	xmlNS      = "http://ec2.amazonaws.com/doc/2016-11-15/"
)

// request is one parsed Query API call.
type request struct {
	ctx    context.Context
	action string
	p      params
	// latency is the injected latency of a phased action (attach/detach), already scaled.
	latency time.Duration
}

type actionDef struct {
	handle func(s *Sim, r *request) (response, *APIError)
	// phased actions apply injected latency themselves as an attaching/detaching phase.
	phased bool
	// lists are the action's list parameters, nested ones with # for the outer index
	// ("Filter.#.Value"): given without an index they are refused (see checkKeys).
	lists []string
}

// List parameters shared by several actions.
var (
	filterLists  = []string{"Filter", "Filter.#.Value"}
	tagSpecLists = []string{"TagSpecification", "TagSpecification.#.Tag"}
)

func lists(groups ...[]string) []string {
	var out []string
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// actions is every simulated action.
var actions = map[string]actionDef{
	"CreateNetworkInterface":          {handle: (*Sim).actCreateNetworkInterface, lists: lists([]string{"PrivateIpAddresses", "Ipv4Prefix", "SecurityGroupId"}, tagSpecLists)},
	"AttachNetworkInterface":          {handle: (*Sim).actAttachNetworkInterface, phased: true},
	"DetachNetworkInterface":          {handle: (*Sim).actDetachNetworkInterface, phased: true},
	"DeleteNetworkInterface":          {handle: (*Sim).actDeleteNetworkInterface},
	"AssignPrivateIpAddresses":        {handle: (*Sim).actAssignPrivateIpAddresses, lists: []string{"PrivateIpAddress", "Ipv4Prefix"}},
	"UnassignPrivateIpAddresses":      {handle: (*Sim).actUnassignPrivateIpAddresses, lists: []string{"PrivateIpAddress", "Ipv4Prefix"}},
	"DescribeNetworkInterfaces":       {handle: (*Sim).actDescribeNetworkInterfaces, lists: lists([]string{"NetworkInterfaceId"}, filterLists)},
	"DescribeSubnets":                 {handle: (*Sim).actDescribeSubnets, lists: lists([]string{"SubnetId"}, filterLists)},
	"DescribeInstances":               {handle: (*Sim).actDescribeInstances, lists: lists([]string{"InstanceId"}, filterLists)},
	"DescribeInstanceTypes":           {handle: (*Sim).actDescribeInstanceTypes, lists: lists([]string{"InstanceType"}, filterLists)},
	"ModifyNetworkInterfaceAttribute": {handle: (*Sim).actModifyNetworkInterfaceAttribute, lists: []string{"SecurityGroupId"}},
	"CreateTags":                      {handle: (*Sim).actCreateTags, lists: []string{"ResourceId", "Tag"}},
	"DeleteTags":                      {handle: (*Sim).actDeleteTags, lists: []string{"ResourceId", "Tag"}},
	"CreateSubnetCidrReservation":     {handle: (*Sim).actCreateSubnetCidrReservation, lists: tagSpecLists},
	"DeleteSubnetCidrReservation":     {handle: (*Sim).actDeleteSubnetCidrReservation},
	"RunInstances":                    {handle: (*Sim).actRunInstances, lists: lists([]string{"NetworkInterface", "NetworkInterface.#.SecurityGroupId", "SecurityGroupId"}, tagSpecLists)},
	"TerminateInstances":              {handle: (*Sim).actTerminateInstances, lists: []string{"InstanceId"}},
}

// Actions lists the simulated action names, sorted.
func Actions() []string {
	out := make([]string, 0, len(actions))
	for a := range actions {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// response is a success body; every one embeds meta.
type response interface{ setRequestID(string) }

type meta struct {
	RequestID string `xml:"requestId"`
}

func (m *meta) setRequestID(id string) { m.RequestID = id }

// returnResponse is the body of actions that return only <return>true</return>.
type returnResponse struct {
	meta
	Return bool `xml:"return"`
}

type xmlErrorResponse struct {
	XMLName   xml.Name   `xml:"Response"`
	Errors    []xmlError `xml:"Errors>Error"`
	RequestID string     `xml:"RequestID"`
}

type xmlError struct {
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func (s *Sim) newRequestID() string {
	n := s.reqSeq.Add(1)
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", uint32(n*2654435761), uint16(n>>32), n&0xfff, (n>>12)&0xfff, n)
}

// serveQuery handles one EC2 Query API request.
func (s *Sim) serveQuery(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := s.newRequestID()
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		writeError(w, reqID, apiErr("InvalidAction", "The HTTP method %s is not supported.", r.Method))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<20)
	if err := r.ParseForm(); err != nil {
		writeError(w, reqID, apiErr("MalformedQueryString", "The request could not be parsed: %v", err))
		return
	}
	p := params(r.Form)
	action := p.str("Action")
	def, ok := actions[action]
	if !ok {
		writeError(w, reqID, apiErr("InvalidAction", "The action %s is not valid for this web service.", action))
		return
	}
	s.stats.call(action)
	if aerr := p.checkKeys(def); aerr != nil {
		s.refusalWait(r.Context())
		s.stats.fail(action, aerr.Code)
		writeError(w, reqID, aerr)
		return
	}
	resp, unanswered, aerr := s.dispatch(r.Context(), action, def, p)
	if unanswered != nil {
		// The action took effect; the client hears of it wrongly or not at all.
		switch unanswered.outcome {
		case OutcomeAfter:
			aerr = unanswered.err
		default:
			s.stats.fail(action, unanswered.err.Code)
			s.log.Debug("ec2 request applied, not answered", "action", action, "outcome", unanswered.outcome, "duration", time.Since(start))
			s.noAnswer(w, r, unanswered.outcome)
			return
		}
	}
	if aerr != nil {
		s.stats.fail(action, aerr.Code)
		writeError(w, reqID, aerr)
		s.log.Debug("ec2 request", "action", action, "code", aerr.Code, "status", aerr.HTTPStatus, "duration", time.Since(start))
		return
	}
	resp.setRequestID(reqID)
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	enc := xml.NewEncoder(&buf)
	startEl := xml.StartElement{
		Name: xml.Name{Local: action + "Response"},
		Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: xmlNS}},
	}
	if err := enc.EncodeElement(resp, startEl); err != nil {
		s.stats.fail(action, "InternalError")
		writeError(w, reqID, apiErr("InternalError", "encode response: %v", err))
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("x-amzn-RequestId", reqID)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
	s.log.Debug("ec2 request", "action", action, "status", http.StatusOK, "duration", time.Since(start))
}

func writeError(w http.ResponseWriter, reqID string, aerr *APIError) {
	body, err := xml.Marshal(xmlErrorResponse{Errors: []xmlError{{aerr.Code, aerr.Message}}, RequestID: reqID})
	if err != nil {
		body = []byte("<Response><Errors><Error><Code>InternalError</Code></Error></Errors></Response>")
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("x-amzn-RequestId", reqID)
	w.WriteHeader(aerr.HTTPStatus)
	_, _ = w.Write(append([]byte(xml.Header), body...))
}

// dispatch applies the deny list, throttling, injected faults and DryRun, then runs the action
// with its latency: the profile's for the action plus the injected fault's. A request refused
// before the action runs answers after the profile's Refused latency. unanswered is set when an
// injected fault takes effect after the action did (the response is then replaced as the
// fault's outcome says).
func (s *Sim) dispatch(ctx context.Context, action string, def actionDef, p params) (_ response, unanswered *decision, _ *APIError) {
	reqCtx := ctx
	refuse := func(aerr *APIError) (response, *decision, *APIError) {
		s.refusalWait(reqCtx)
		return nil, nil, aerr
	}
	if s.deny[action] {
		return refuse(apiErr("UnauthorizedOperation",
			"You are not authorized to perform this operation. User: arn:aws:sts::%s:assumed-role/ipledger/ec2sim is not authorized to perform: ec2:%s", s.accountID, action))
	}
	if !s.throttle.take(bucketFor(action, p.filteredOrPaginated()), s.now()) {
		return refuse(apiErr("RequestLimitExceeded", "Request limit exceeded."))
	}
	if !strings.HasPrefix(action, "Describe") {
		// EC2 carries out a mutation it has received even when the client goes away meanwhile
		// (a timeout, a crash): only the simulator's own end stops it.
		ctx = context.WithoutCancel(ctx)
	}
	d := s.faults.decide(action)
	lat := s.scaled(d.latency)
	if d.err != nil && d.outcome == OutcomeBefore {
		_ = s.sleep(reqCtx, lat)
		return refuse(d.err)
	}
	dry, aerr := p.boolParam("DryRun")
	if aerr != nil {
		return refuse(aerr)
	}
	if dry {
		return refuse(apiErr("DryRunOperation", "Request would have succeeded, but DryRun flag is set."))
	}
	prof := s.profile.Load()
	lat += s.scaled(s.delays.dist(streamCallPrefix+action, prof.Calls[action]))
	if !def.phased {
		if err := s.sleep(ctx, lat); err != nil {
			return nil, nil, apiErr("InternalError", "request abandoned: %v", err)
		}
		lat = 0
	}
	resp, aerr := def.handle(s, &request{ctx: ctx, action: action, p: p, latency: lat})
	if aerr != nil && def.phased {
		// Attach and detach check before their phase begins: a refusal.
		return refuse(aerr)
	}
	if n, ok := resp.(itemCounter); ok && aerr == nil && prof.DescribePerItem > 0 {
		if err := s.sleep(ctx, s.scaled(time.Duration(n.items())*prof.DescribePerItem)); err != nil {
			return nil, nil, apiErr("InternalError", "request abandoned: %v", err)
		}
	}
	if aerr != nil || d.err == nil {
		return resp, nil, aerr
	}
	return resp, &d, nil
}

// refusalWait is the latency of an answer refused before the action ran (Profile.Refused).
func (s *Sim) refusalWait(ctx context.Context) {
	_ = s.sleep(ctx, s.scaled(s.delays.dist(streamRefused, s.profile.Load().Refused)))
}

// itemCounter is a Describe response: the number of items it returns (Profile.DescribePerItem).
type itemCounter interface{ items() int }

func (r *describeENIsResponse) items() int          { return len(r.Set.Items) }
func (r *describeSubnetsResponse) items() int       { return len(r.Set.Items) }
func (r *describeInstanceTypesResponse) items() int { return len(r.Set.Items) }
func (r *describeInstancesResponse) items() int {
	n := 0
	for _, res := range r.Set.Items {
		n += len(res.Instances)
	}
	return n
}

// noAnswer ends a request without an HTTP response: the connection is closed (with a reset,
// as a crashed front end would), at once or, for OutcomeTimeout, once the client gave up.
func (s *Sim) noAnswer(w http.ResponseWriter, r *http.Request, outcome string) {
	if outcome == OutcomeTimeout {
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// sleep waits d unless the request or the simulator ends first.
func (s *Sim) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := s.clock().NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrClosed
	}
}

// params are the request's form values with EC2's flattened, 1-indexed lists.
type params url.Values

func (p params) str(k string) string { return url.Values(p).Get(k) }

func (p params) has(k string) bool { _, ok := p[k]; return ok }

// indices returns the sorted N of keys "prefix.N" and "prefix.N.<member>".
func (p params) indices(prefix string) []int {
	pre := prefix + "."
	seen := map[int]bool{}
	for k := range p {
		if !strings.HasPrefix(k, pre) {
			continue
		}
		rest := k[len(pre):]
		if i := strings.IndexByte(rest, '.'); i >= 0 {
			rest = rest[:i]
		}
		// Only canonical decimal indices ("1", not "01" or "+1"): list and member lookups build
		// their keys with strconv.Itoa, so any other spelling would name a key that is not there.
		n, err := strconv.Atoi(rest)
		if err == nil && n >= 1 && rest == strconv.Itoa(n) {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// checkKeys refuses, as EC2 does (UnknownParameter), keys that name no parameter: a list index
// that is not a canonical decimal from 1 ("X.0", "X.-1", "X.01", "X.abc"), a member name that
// does not start with a capital letter, and a list parameter of the action given without an
// index ("PrivateIpAddress=..." for AssignPrivateIpAddresses). Without it such a parameter would
// be silently dropped and the request carried out without it.
func (p params) checkKeys(def actionDef) *APIError {
	unknown := func(k string) *APIError {
		return apiErr("UnknownParameter", "The parameter %s is not recognized", k)
	}
	for k := range p {
		segs := strings.Split(k, ".")
		for i, seg := range segs {
			if i == 0 {
				continue
			}
			switch c := seg[0:min(1, len(seg))]; {
			case c == "":
				return unknown(k)
			case c >= "0" && c <= "9" || c == "-" || c == "+":
				if n, err := strconv.Atoi(seg); err != nil || n < 1 || seg != strconv.Itoa(n) {
					return unknown(k)
				}
				segs[i] = "#"
			case c < "A" || c > "Z":
				return unknown(k)
			}
		}
		if shape := strings.Join(segs, "."); slices.Contains(def.lists, shape) {
			return unknown(k)
		}
	}
	return nil
}

// list returns the values of prefix.1, prefix.2, ... in index order.
func (p params) list(prefix string) []string {
	var out []string
	for _, n := range p.indices(prefix) {
		k := prefix + "." + strconv.Itoa(n)
		if p.has(k) {
			out = append(out, p.str(k))
		}
	}
	return out
}

// intParam parses an integer parameter; set is false when it is absent.
func (p params) intParam(k string) (v int, set bool, aerr *APIError) {
	if !p.has(k) {
		return 0, false, nil
	}
	n, err := strconv.Atoi(p.str(k))
	if err != nil {
		return 0, true, apiErr("InvalidParameterValue", "Invalid value '%s' for %s", p.str(k), k)
	}
	return n, true, nil
}

func (p params) boolParam(k string) (bool, *APIError) {
	if !p.has(k) {
		return false, nil
	}
	switch strings.ToLower(p.str(k)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, apiErr("InvalidParameterValue", "Invalid value '%s' for %s: must be true or false", p.str(k), k)
}

func (p params) require(k string) (string, *APIError) {
	v := p.str(k)
	if v == "" {
		return "", apiErr("MissingParameter", "The request must contain the parameter %s", k)
	}
	return v, nil
}

// filteredOrPaginated reports a filter, an id list, MaxResults or NextToken: such describes
// take the non-mutating bucket, the others the unfiltered-describe bucket.
func (p params) filteredOrPaginated() bool {
	for k := range p {
		if strings.HasPrefix(k, "Filter.") || strings.HasPrefix(k, "InstanceId.") ||
			strings.HasPrefix(k, "NetworkInterfaceId.") || k == "MaxResults" || k == "NextToken" {
			return true
		}
	}
	return false
}

type filter struct {
	name   string
	values []string
}

func (p params) filters() ([]filter, *APIError) {
	var out []filter
	for _, n := range p.indices("Filter") {
		pre := "Filter." + strconv.Itoa(n)
		name := p.str(pre + ".Name")
		if name == "" {
			return nil, apiErr("InvalidParameterValue", "%s.Name must be given", pre)
		}
		vals := p.list(pre + ".Value")
		if len(vals) == 0 {
			return nil, apiErr("InvalidParameterValue", "The filter '%s' needs at least one value", name)
		}
		out = append(out, filter{name: name, values: vals})
	}
	return out, nil
}

type kv struct {
	key      string
	value    string
	hasValue bool
}

// tags reads prefix.N.Key / prefix.N.Value.
func (p params) tags(prefix string) ([]kv, *APIError) {
	var out []kv
	for _, n := range p.indices(prefix) {
		pre := prefix + "." + strconv.Itoa(n)
		k := p.str(pre + ".Key")
		if k == "" {
			return nil, apiErr("InvalidParameterValue", "Tag key must not be empty (%s.Key)", pre)
		}
		out = append(out, kv{key: k, value: p.str(pre + ".Value"), hasValue: p.has(pre + ".Value")})
	}
	return out, nil
}

// tagSpecs reads TagSpecification.N for the given resource type.
func (p params) tagSpecs(resourceType string) (map[string]string, *APIError) {
	tags := map[string]string{}
	for _, n := range p.indices("TagSpecification") {
		pre := "TagSpecification." + strconv.Itoa(n)
		rt := p.str(pre + ".ResourceType")
		if rt != resourceType {
			return nil, apiErr("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
		list, aerr := p.tags(pre + ".Tag")
		if aerr != nil {
			return nil, aerr
		}
		for _, t := range list {
			tags[t.key] = t.value
		}
	}
	if err := validateTags(tags); err != nil {
		return nil, apiErr("InvalidParameterValue", "%v", err)
	}
	return tags, nil
}

// globMatch matches EC2 filter values: * is any run of characters, ? one character.
func globMatch(pattern, s string) bool {
	if !strings.ContainsAny(pattern, "*?") {
		return pattern == s
	}
	px, sx := 0, 0
	nextPx, nextSx := -1, -1
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				nextPx, nextSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextSx > 0 && nextSx <= len(s) {
			px, sx = nextPx, nextSx
			continue
		}
		return false
	}
	return true
}

func isGlob(v string) bool { return strings.ContainsAny(v, "*?") }

// matchAny reports whether any of the resource's values matches any filter value.
func matchAny(patterns, values []string) bool {
	for _, v := range values {
		for _, pat := range patterns {
			if globMatch(pat, v) {
				return true
			}
		}
	}
	return false
}

// pageSize validates MaxResults (EC2: 5 to 1000) and NextToken against an id list.
func pageParams(p params, idsGiven bool, maxLimit int) (size int, after string, aerr *APIError) {
	n, set, aerr := p.intParam("MaxResults")
	if aerr != nil {
		return 0, "", aerr
	}
	if (set || p.has("NextToken")) && idsGiven {
		return 0, "", apiErr("InvalidParameterCombination", "The parameter MaxResults or NextToken cannot be used with the parameter of resource ids")
	}
	if set && (n < 5 || n > maxLimit) {
		return 0, "", apiErr("InvalidParameterValue", "Value (%d) for parameter maxResults is invalid. Expecting a value between 5 and %d.", n, maxLimit)
	}
	if tok := p.str("NextToken"); tok != "" {
		after, aerr = decodeToken(tok)
		if aerr != nil {
			return 0, "", aerr
		}
	}
	if !set {
		n = 0
	}
	return n, after, nil
}

func encodeToken(lastID string) string { return "sim1." + lastID }

func decodeToken(tok string) (string, *APIError) {
	id, ok := strings.CutPrefix(tok, "sim1.")
	if !ok || id == "" {
		return "", apiErr("InvalidParameterValue", "The token '%s' is invalid.", tok)
	}
	return id, nil
}

// paginate takes sorted ids after `after`, at most size (0: all), and the next token.
func paginate(ids []string, size int, after string) ([]string, string) {
	if after != "" {
		i := sort.SearchStrings(ids, after)
		if i < len(ids) && ids[i] == after {
			i++
		}
		ids = ids[i:]
	}
	if size > 0 && len(ids) > size {
		return ids[:size], encodeToken(ids[size-1])
	}
	return ids, ""
}
