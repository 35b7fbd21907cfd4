package allocator

import (
	"errors"
	"strings"
	"testing"
)

// An agent answers exactly what it was asked: every item it names is in the proposal, once.
func TestCheckAckItems(t *testing.T) {
	proposed := []string{"10.0.0.5", "10.0.0.6", "10.0.1.0/28"}
	for _, tc := range []struct {
		name                string
		confirmed, refused  []string
		wantField, wantText string
	}{
		{"all confirmed", proposed, nil, "", ""},
		{"split", []string{"10.0.0.5"}, []string{"10.0.0.6", "10.0.1.0/28"}, "", ""},
		{"partial answer", []string{"10.0.0.5"}, nil, "", ""},
		{"item not proposed", []string{"10.0.0.7"}, nil, "release_ack.confirmed[0]", "not in proposal"},
		{"refused item not proposed", nil, []string{"10.0.0.5", "192.168.0.1"}, "release_ack.refused[1]", "not in proposal"},
		{"item twice", []string{"10.0.0.5"}, []string{"10.0.0.5"}, "release_ack.refused[0]", "answered twice"},
		{"more items than proposed", proposed, []string{"10.0.0.5"}, "release_ack", "answer a proposal of 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAckItems(proposed, ReleaseAck{ProposalID: "rp-1", Confirmed: tc.confirmed, Refused: tc.refused})
			if tc.wantField == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ia *InvalidArgumentError
			if !errors.As(err, &ia) || !errors.Is(err, ErrInvalidArgument) || ia.Field != tc.wantField || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("got %v, want field %s and %q", err, tc.wantField, tc.wantText)
			}
		})
	}
}
