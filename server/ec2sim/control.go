package ec2sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
)

// Handler serves the EC2 Query API (POST /) and the JSON control API under /_sim/.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_sim/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Snapshot())
	})
	mux.HandleFunc("GET /_sim/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("GET /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("POST /_sim/faults", s.ctlSetFaults)
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("POST /_sim/throttle", s.ctlThrottle)
	mux.HandleFunc("GET /_sim/profile", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Profile())
	})
	mux.HandleFunc("POST /_sim/profile", s.ctlSetProfile)
	mux.HandleFunc("POST /_sim/instances", s.ctlRunInstances)
	mux.HandleFunc("DELETE /_sim/instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := s.TerminateInstances(r.Context(), r.PathValue("id")); err != nil {
			writeJSONError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"terminated": r.PathValue("id")})
	})
	mux.HandleFunc("POST /_sim/instances/{id}/start", func(w http.ResponseWriter, r *http.Request) {
		if err := s.StartInstances(r.Context(), r.PathValue("id")); err != nil {
			writeJSONError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"started": r.PathValue("id")})
	})
	mux.HandleFunc("POST /_sim/foreign-enis", s.ctlForeignENI)
	mux.HandleFunc("POST /_sim/fragment", s.ctlFragment)
	mux.HandleFunc("GET /_sim/iid-certificate", s.ctlIIDCertificate)
	mux.HandleFunc("/_sim/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, apiErr("NotFound", "no control endpoint %s %s", r.Method, r.URL.Path))
	})
	mux.HandleFunc("/", s.serveQuery)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

type jsonError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeJSONError writes {"error":{"code","message"}} with the APIError's status (400 for
// other errors; 404 for NotFound).
func writeJSONError(w http.ResponseWriter, err error) {
	status := http.StatusBadRequest
	je := jsonError{Code: "InvalidRequest", Message: err.Error()}
	var aerr *APIError
	if errors.As(err, &aerr) {
		je = jsonError{Code: aerr.Code, Message: aerr.Message}
		status = aerr.HTTPStatus
		if aerr.Code == "NotFound" {
			status = http.StatusNotFound
		}
	}
	writeJSON(w, status, map[string]jsonError{"error": je})
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON body: %w", err)
	}
	return nil
}

// ctlSetFaults takes {"Action": {"code","http_status","probability","latency"}, ...}; every
// action and fault is checked before any is set.
func (s *Sim) ctlSetFaults(w http.ResponseWriter, r *http.Request) {
	var m map[string]Fault
	if err := decodeJSON(r, &m); err != nil {
		writeJSONError(w, err)
		return
	}
	names := make([]string, 0, len(m))
	for a := range m {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, a := range names {
		if _, ok := actions[a]; !ok {
			writeJSONError(w, fmt.Errorf("%q is not a simulated action", a))
			return
		}
		if err := m[a].Validate(); err != nil {
			writeJSONError(w, fmt.Errorf("fault of %s: %w", a, err))
			return
		}
	}
	for a, f := range m {
		s.SetFault(a, f)
	}
	writeJSON(w, http.StatusOK, s.Faults())
}

// ctlSetProfile takes {"name": "realistic"} (a preset) or a whole profile (see Profile's JSON
// shape; "name" then names it).
func (s *Sim) ctlSetProfile(w http.ResponseWriter, r *http.Request) {
	var raw json.RawMessage
	if err := decodeJSON(r, &raw); err != nil {
		writeJSONError(w, err)
		return
	}
	var p Profile
	var err error
	if name, ok := onlyName(raw); ok {
		p, err = ProfileByName(name)
	} else {
		err = json.Unmarshal(raw, &p)
	}
	if err != nil {
		writeJSONError(w, err)
		return
	}
	if err := s.SetProfile(p); err != nil {
		writeJSONError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.Profile())
}

// onlyName returns the name of a JSON object whose only key is "name".
func onlyName(raw json.RawMessage) (string, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || len(m) != 1 {
		return "", false
	}
	var name string
	if err := json.Unmarshal(m["name"], &name); err != nil {
		return "", false
	}
	return name, true
}

func (s *Sim) ctlThrottle(w http.ResponseWriter, r *http.Request) {
	var req struct {
		On *bool `json:"on"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeJSONError(w, err)
		return
	}
	if req.On == nil {
		writeJSONError(w, errors.New(`body must be {"on": true|false}`))
		return
	}
	s.SetThrottle(*req.On)
	writeJSON(w, http.StatusOK, map[string]bool{"on": *req.On})
}

type runRequest struct {
	InstanceSpec
	Count int `json:"count"`
}

func (s *Sim) ctlRunInstances(w http.ResponseWriter, r *http.Request) {
	var req runRequest
	if err := decodeJSON(r, &req); err != nil {
		writeJSONError(w, err)
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	infos, err := s.RunInstances(r.Context(), req.InstanceSpec, req.Count)
	if err != nil {
		writeJSONError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string][]InstanceInfo{"instances": infos})
}

func (s *Sim) ctlForeignENI(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SubnetID  string `json:"subnet_id"`
		Addresses int    `json:"addresses"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeJSONError(w, err)
		return
	}
	info, err := s.CreateForeignENI(r.Context(), req.SubnetID, req.Addresses)
	if err != nil {
		writeJSONError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Sim) ctlFragment(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SubnetID string `json:"subnet_id"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeJSONError(w, err)
		return
	}
	n, err := s.Fragment(r.Context(), req.SubnetID)
	if err != nil {
		writeJSONError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"occupied": n})
}
