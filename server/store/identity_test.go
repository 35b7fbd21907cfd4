package store_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/store"
)

func TestIdentityRecordsAndConditionalCommit(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "identities", 0)
	l := campaign(t, s, addr(1))
	ctx := ctxTimeout(t, 10*time.Second)
	const inst = "i-0123456789abcdef0"
	id := &ipledgerv1.NodeIdentity{InstanceId: inst, NodeName: "ip-10-0-0-1.eu-west-1.compute.internal", Method: "aws-iid", KeySha256: "ab"}

	got, rev, err := s.Identity(ctx, inst)
	if err != nil || got != nil || rev != 0 {
		t.Fatalf("before: %v %d %v", got, rev, err)
	}
	// Created only if still absent.
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: inst}}, store.PutIdentity(id)); err != nil {
		t.Fatal(err)
	}
	got, rev, err = s.Identity(ctx, inst)
	if err != nil || !proto.Equal(got, id) || rev == 0 {
		t.Fatalf("after: %v %d %v", got, rev, err)
	}
	// A second "create if absent" (a concurrent attestation with another key) fails and writes nothing.
	other := proto.Clone(id).(*ipledgerv1.NodeIdentity)
	other.KeySha256 = "cd"
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: inst}}, store.PutIdentity(other)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	if got, _, _ := s.Identity(ctx, inst); got.GetKeySha256() != "ab" {
		t.Fatalf("the refused commit wrote: %v", got)
	}
	// An update at the revision read succeeds; a stale one does not.
	other.Renewals = 1
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: inst, Revision: rev}}, store.PutIdentity(other)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: inst, Revision: rev}}, store.DeleteIdentity(inst)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale delete: %v", err)
	}
	all, err := s.Identities(ctx)
	if err != nil || len(all) != 1 || all[0].GetRenewals() != 1 {
		t.Fatalf("identities: %v %v", all, err)
	}
	st, err := s.Load(ctx)
	if err != nil || !proto.Equal(st.Identities[inst], all[0]) {
		t.Fatalf("load: %v %v", st.Identities, err)
	}
	if _, err := l.CommitIf(ctx, nil, store.PutIdentity(&ipledgerv1.NodeIdentity{InstanceId: inst})); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("identity without node name: %v", err)
	}
	// A deposed leader's conditional commit fails on the fence, not on the condition.
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: inst}}, store.DeleteIdentity(inst)); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("after resign: %v", err)
	}
}
