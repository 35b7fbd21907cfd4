package validate

import (
	"errors"
	"strings"
	"testing"
)

func TestPodField(t *testing.T) {
	for _, tc := range []struct {
		v       string
		wantErr string
	}{
		{"", ""},
		{"kube-system", ""},
		{"coredns-5d78c9869d-abcde", ""},
		{"ünïcode-is-fine", ""},
		{strings.Repeat("a", MaxPodField), ""},
		{strings.Repeat("a", MaxPodField+1), "254 characters long"},
		{"evil\x1b[31m", "control"},
		{"bell\a", "control"},
		{"row\r\nforged", "control"},
		{"del\x7f", "control"},
		{"nul\x00", "control"},
	} {
		err := PodField(tc.v)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("PodField(%q) = %v, want nil", tc.v, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("PodField(%q) = %v, want an error containing %q", tc.v, err, tc.wantErr)
		}
	}
	if !errors.Is(NoControl("a\x1bb"), ErrControl) {
		t.Error("NoControl does not return ErrControl")
	}
}
